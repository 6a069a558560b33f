"""lightning-lrbs: make the learning rate follow the batch size in PyTorch Lightning.

``BatchScalingCallback`` is the Lightning entry point. The pure functions (:mod:`lightning_lrbs.rules`,
:mod:`lightning_lrbs.rescale`, :mod:`lightning_lrbs.warmup`, :mod:`lightning_lrbs.batch`) import no Lightning and
serve raw PyTorch and Fabric loops; importing them does not import Lightning, because the callback is loaded lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_lrbs.__about__ import __version__
from lightning_lrbs.batch import effective_batch_size, loader_batch_size
from lightning_lrbs.rescale import SKIP_KEY, flatten_schedulers, rescale_
from lightning_lrbs.rules import RULES, Rule, is_adaptive, resolve_rule, scale_factor
from lightning_lrbs.warmup import LinearWarmup, warmup_factor

if TYPE_CHECKING:
    from lightning_lrbs.callback import BatchScalingCallback

__all__ = [
    "RULES",
    "SKIP_KEY",
    "BatchScalingCallback",
    "LinearWarmup",
    "Rule",
    "__version__",
    "effective_batch_size",
    "flatten_schedulers",
    "is_adaptive",
    "loader_batch_size",
    "rescale_",
    "resolve_rule",
    "scale_factor",
    "warmup_factor",
]


def __getattr__(name: str) -> Any:
    if name == "BatchScalingCallback":
        from lightning_lrbs.callback import BatchScalingCallback

        return BatchScalingCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
