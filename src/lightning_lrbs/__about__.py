"""Version of lightning-lrbs, single-sourced for the package build and ``lightning_lrbs.__version__``."""

__version__ = "0.1.0.dev0"
