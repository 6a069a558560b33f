"""The features of :class:`~lightning_lrbs.callback.BatchScalingCallback`, one component each: the interface
(:class:`~lightning_lrbs.components.base.Component`, with the :class:`~lightning_lrbs.components.base.Fit` and
:class:`~lightning_lrbs.components.base.Scale` every hook and change of scale receive), then one class
per feature. :mod:`lightning_lrbs.callback` says in which order the callback runs them; the architecture page shows
one optimizer step."""

from lightning_lrbs.components.adascale import AdaScale
from lightning_lrbs.components.base import Component, Components, Fit, Scale
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
    "Components",
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
