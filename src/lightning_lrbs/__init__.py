"""lightning-lrbs: make the learning rate follow the batch size in PyTorch Lightning.

``BatchScalingCallback`` is the Lightning entry point (``lightning_lrbs.pytorch_lightning.BatchScalingCallback`` for
``pytorch_lightning.Trainer``). :func:`scale_for_batch` (:mod:`lightning_lrbs.loop`) does the same in one call for a
Fabric or raw PyTorch loop. It and the pure functions it builds on (:mod:`lightning_lrbs.rules`,
:mod:`lightning_lrbs.rescale`, :mod:`lightning_lrbs.warmup`, :mod:`lightning_lrbs.batch`) and the gradient noise scale
(:mod:`lightning_lrbs.noise`) import no Lightning; importing this package does not import Lightning either, because
the callback is loaded lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_lrbs.__about__ import __version__
from lightning_lrbs.batch import effective_batch_size, loader_batch_size
from lightning_lrbs.loop import ScalingResult, scale_for_batch
from lightning_lrbs.noise import GradientNoiseScale
from lightning_lrbs.rescale import SKIP_KEY, flatten_schedulers, rescale_
from lightning_lrbs.rules import RULES, Rule, is_adaptive, resolve_rule, scale_factor
from lightning_lrbs.warmup import LinearWarmup, warmup_factor

if TYPE_CHECKING:
    from lightning_lrbs.callback import BatchScalingCallback

__all__ = [
    "RULES",
    "SKIP_KEY",
    "BatchScalingCallback",
    "GradientNoiseScale",
    "LinearWarmup",
    "Rule",
    "ScalingResult",
    "__version__",
    "effective_batch_size",
    "flatten_schedulers",
    "is_adaptive",
    "loader_batch_size",
    "rescale_",
    "resolve_rule",
    "scale_factor",
    "scale_for_batch",
    "warmup_factor",
]


def __getattr__(name: str) -> Any:
    if name == "BatchScalingCallback":
        from lightning_lrbs.callback import BatchScalingCallback

        return BatchScalingCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
