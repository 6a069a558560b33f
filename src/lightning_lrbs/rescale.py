r"""Exact in-place rescaling of optimizers and the schedulers built on them.

Pure functions, no Lightning import: usable from raw PyTorch and Lightning Fabric.

Multiplying only ``param_group["lr"]`` by a factor :math:`f` is wrong for most schedulers: closed-form ones
(``LambdaLR``, ``CosineAnnealingLR``, ``OneCycleLR``, ...) recompute the LR from values they stored when they were
built, and overwrite it at their next step. :func:`rescale_` scales every stored copy, so that afterwards the
optimizer and its schedulers behave exactly as if they had been built with :math:`f\times` the learning rates and
:math:`f\times` the LR floors:

- param groups: ``lr``, ``initial_lr``, ``max_lr``, ``min_lr`` (the last three are kept there by ``OneCycleLR``),
  ``swa_lr`` (kept there by ``torch.optim.swa_utils.SWALR``);
- schedulers: ``base_lrs``, ``max_lrs`` (``CyclicLR``), ``_last_lr``, ``min_lrs`` (``ReduceLROnPlateau``);
- scalar floors: ``eta_min`` (cosine schedules) and ``default_min_lr`` (``ReduceLROnPlateau``);
- nested schedulers (``SequentialLR``, ``ChainedScheduler``, any depth) are reached once each;
- tensor learning rates are scaled in place (``mul_``), keeping their identity.

A param group holding ``"lrbs_scale": False`` is left alone, by the rescale and by the warmup.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["SKIP_KEY", "flatten_schedulers", "rescale_", "scalable_groups"]

#: Param-group key that opts a group out of scaling and warmup: ``{"params": ..., "lrbs_scale": False}``.
SKIP_KEY = "lrbs_scale"

_GROUP_KEYS = ("lr", "initial_lr", "max_lr", "min_lr", "swa_lr")
_SCHEDULER_LIST_KEYS = ("base_lrs", "max_lrs", "_last_lr", "min_lrs")
_SCHEDULER_SCALAR_KEYS = ("eta_min", "default_min_lr")


def scalable_groups(optimizer: Optimizer) -> list[bool]:
    """For each param group of ``optimizer``: whether it takes part in scaling (no ``"lrbs_scale": False``)."""
    return [bool(group.get(SKIP_KEY, True)) for group in optimizer.param_groups]


def flatten_schedulers(schedulers: Iterable[Any]) -> list[Any]:
    """Every scheduler in ``schedulers`` and, recursively, inside ``SequentialLR`` / ``ChainedScheduler``.

    Each scheduler object appears once, containers before their children.

    Example::

        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> a = torch.optim.lr_scheduler.LinearLR(opt, total_iters=2)
        >>> b = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
        >>> seq = torch.optim.lr_scheduler.SequentialLR(opt, [a, b], milestones=[2])
        >>> [type(s).__name__ for s in flatten_schedulers([seq, a])]
        ['SequentialLR', 'LinearLR', 'ExponentialLR']
    """
    seen: set[int] = set()
    out: list[Any] = []

    def visit(scheduler: Any) -> None:
        if id(scheduler) in seen:
            return
        seen.add(id(scheduler))
        out.append(scheduler)
        for child in getattr(scheduler, "_schedulers", ()) or ():
            visit(child)

    for scheduler in schedulers:
        visit(scheduler)
    return out


def _check_factor(factor: object) -> float:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"`factor` must be a finite positive number, got {factor!r}")
    return float(factor)


def _factors_by_optimizer(optimizers: Sequence[Optimizer], factor: float | Sequence[float]) -> dict[int, float]:
    if isinstance(factor, (int, float)):
        factors = [_check_factor(factor)] * len(optimizers)
    else:
        factors = [_check_factor(f) for f in factor]
        if len(factors) != len(optimizers):
            raise ValueError(f"`factor` has {len(factors)} values for {len(optimizers)} optimizers")
    by_id: dict[int, float] = {}
    for optimizer, f in zip(optimizers, factors):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"`optimizers` must hold torch.optim.Optimizer instances, got {type(optimizer).__name__}")
        if by_id.setdefault(id(optimizer), f) != f:
            raise ValueError(f"{type(optimizer).__name__} is listed twice with different factors")
    return by_id


class _Scaler:
    """Multiplies numbers and tensors, scaling each tensor object once even when it is stored in several places."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def __call__(self, value: Any, factor: float) -> Any:
        if isinstance(value, torch.Tensor):
            if id(value) not in self._seen:
                self._seen.add(id(value))
                with torch.no_grad():
                    value.mul_(factor)
            return value
        if value is None:
            return None
        return value * factor


def rescale_(
    optimizers: Optimizer | Sequence[Optimizer],
    schedulers: Iterable[Any] = (),
    factor: float | Sequence[float] = 1.0,
) -> None:
    r"""Multiply the learning rates of ``optimizers`` and of every scheduler built on them by ``factor``, in place.

    After the call, each optimizer and scheduler behaves as if built with :math:`f\times` its learning rates and
    :math:`f\times` its LR floors, also in the middle of a schedule. Calling it twice with :math:`f_1` then
    :math:`f_2` equals one call with :math:`f_1 f_2`, so a change of scale is ``rescale_(..., new / old)``.

    Args:
        optimizers: One optimizer or a sequence of them.
        schedulers: Schedulers built on those optimizers (``torch.optim.lr_scheduler`` ones, including
            ``ReduceLROnPlateau``, ``SequentialLR`` and ``ChainedScheduler`` with their children, or any object with
            the same attributes). Each is reached once, however often it is listed or nested.
        factor: One factor for all optimizers, or one per optimizer (same order).

    Raises:
        ValueError: If a factor is not finite and positive, the number of factors does not match, or a scheduler
            belongs to an optimizer that is not in ``optimizers``. Nothing is changed then.
        TypeError: If ``optimizers`` holds something that is not an optimizer.

    Example::

        >>> w = torch.zeros(1, requires_grad=True)
        >>> opt = torch.optim.SGD([w], lr=0.1)
        >>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
        >>> rescale_(opt, [sched], factor=4.0)
        >>> opt.param_groups[0]["lr"], sched.base_lrs, sched.eta_min
        (0.4, [0.4], 0.04)
    """
    optimizer_list: list[Optimizer] = [optimizers] if isinstance(optimizers, Optimizer) else list(optimizers)
    factors = _factors_by_optimizer(optimizer_list, factor)
    all_schedulers = flatten_schedulers(schedulers)
    for scheduler in all_schedulers:
        owner = getattr(scheduler, "optimizer", None)
        if id(owner) not in factors:
            raise ValueError(
                f"scheduler {type(scheduler).__name__} belongs to an optimizer that is not in `optimizers`"
            )

    # Everything is checked: from here on nothing raises, so no optimizer is ever left half-scaled.
    scale = _Scaler()
    done: set[int] = set()
    for optimizer in optimizer_list:
        f = factors[id(optimizer)]
        if id(optimizer) in done or f == 1.0:
            continue
        done.add(id(optimizer))
        for group, active in zip(optimizer.param_groups, scalable_groups(optimizer)):
            if active:
                for key in _GROUP_KEYS:
                    if key in group:
                        group[key] = scale(group[key], f)

    for scheduler in all_schedulers:
        optimizer = scheduler.optimizer
        f = factors[id(optimizer)]
        if f == 1.0:
            continue
        mask = scalable_groups(optimizer)
        for key in _SCHEDULER_LIST_KEYS:
            values = getattr(scheduler, key, None)
            if isinstance(values, list) and len(values) == len(mask):
                setattr(scheduler, key, [scale(v, f) if m else v for v, m in zip(values, mask)])
        for key in _SCHEDULER_SCALAR_KEYS:
            value = getattr(scheduler, key, None)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
                continue
            if all(mask):
                setattr(scheduler, key, scale(value, f))
            elif value != 0:
                warnings.warn(
                    f"{type(scheduler).__name__}.{key}={value!r} is shared by all param groups, some of which opt "
                    f"out with {SKIP_KEY!r}: the floor is left unscaled",
                    RuntimeWarning,
                    stacklevel=2,
                )
