"""MNIST with ``BatchScalingCallback`` through ``LightningCLI``: model, data, Trainer and callback from YAML or flags.

Needs the ``cli`` extra: ``pip install "lightning-lrbs[cli]"``. Run it::

    python examples/mnist_cli.py fit --config examples/mnist_cli.yaml
    python examples/mnist_cli.py fit --config examples/mnist_cli.yaml --data.batch_size=256 \\
        --trainer.callbacks.rule=sqrt --trainer.accumulate_grad_batches=2
    python examples/mnist_cli.py fit --model.lr=0.01 \\
        --trainer.callbacks+=lightning_lrbs.BatchScalingCallback --trainer.callbacks.base_batch_size=8

The config adds the callback as ``class_path: lightning_lrbs.BatchScalingCallback`` with its ``init_args``; any of
them can be overridden on the command line (``--trainer.callbacks.<arg>=...``), and a bad value stops the CLI with
the argument's name before anything runs. ``--data.data_dir`` defaults to ``$LRBS_DATA_DIR`` when it is set, else
``data`` (downloaded there on first use). ``python examples/mnist_cli.py fit --help`` lists every option, and
``--print_config`` shows the merged configuration.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from mnist import MNISTConvNet, MNISTDataModule, MNISTNotFoundError


class MNISTCLI(LightningCLI):
    """``LightningCLI`` for :class:`MNISTConvNet` and :class:`MNISTDataModule`."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Take the MNIST folder from ``$LRBS_DATA_DIR`` unless the config or the command line gives one."""
        parser.set_defaults({"data.data_dir": os.environ.get("LRBS_DATA_DIR", "data")})

    def instantiate_classes(self) -> None:
        """Build the objects; a missing MNIST folder is then reported with this CLI's option, ``--data.data_dir``."""
        super().instantiate_classes()
        self.datamodule.data_dir_option = "--data.data_dir"


def main(args: Sequence[str] | None = None, run: bool = True) -> MNISTCLI:
    """Run the CLI on ``args`` (default: ``sys.argv[1:]``) and return it, with its trainer, model and data module.

    Args:
        args: Command-line arguments; with ``run=True`` the first is the subcommand (``fit``, ``test``, ...).
        run: ``False`` only parses and builds the objects, without a subcommand.
    """
    return MNISTCLI(
        MNISTConvNet,
        MNISTDataModule,
        args=None if args is None else list(args),
        run=run,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    try:
        main()
    except MNISTNotFoundError as error:  # offline without the files: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
