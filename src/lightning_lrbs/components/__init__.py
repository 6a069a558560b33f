"""The features of :class:`~lightning_lrbs.BatchScalingCallback`, one component each (see :mod:`.base` for the
interface and :mod:`lightning_lrbs.callback` for the order the callback runs them in)."""

from lightning_lrbs.components.adascale import AdaScale
from lightning_lrbs.components.base import Component, Fit, Scale
from lightning_lrbs.components.batch import EffectiveBatch
from lightning_lrbs.components.batch_schedule import BatchSchedule
from lightning_lrbs.components.invariant import ScaleInvariant
from lightning_lrbs.components.noise import NoiseScale
from lightning_lrbs.components.scaling import LRScaling
from lightning_lrbs.components.step_lr import StepLR
from lightning_lrbs.components.summary import Summary
from lightning_lrbs.components.time_constants import TimeConstants
from lightning_lrbs.components.warmup import Warmup

__all__ = [
    "AdaScale",
    "BatchSchedule",
    "Component",
    "EffectiveBatch",
    "Fit",
    "LRScaling",
    "NoiseScale",
    "Scale",
    "ScaleInvariant",
    "StepLR",
    "Summary",
    "TimeConstants",
    "Warmup",
]
