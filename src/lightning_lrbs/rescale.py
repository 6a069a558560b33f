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
- timm's schedulers (``timm.scheduler.*``: cosine, step, multi-step, plateau, poly, tanh, WSD): ``base_values``,
  ``warmup_lr_init``, the per-group warmup increments ``warmup_steps``, ``lr_min``, the noise ``restore_lr`` and,
  for ``PlateauLRScheduler``, the ``ReduceLROnPlateau`` it wraps (``initial_lr`` is a param-group key, above);
- tensor learning rates are scaled in place (``mul_``), keeping their identity.

A scheduler of any other class (a subclass of a torch or timm scheduler included) may keep learning rates in
attributes :func:`rescale_` does not know, so it is refused with a ``ValueError`` rather than half-scaled. Opt in by
naming its LR attributes in ``lrbs_lr_attributes`` (:data:`LR_ATTRIBUTES_KEY`), on the class or the instance::

    class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
        lrbs_lr_attributes = ("base_lrs", "_last_lr", "warmup_start_lr", "eta_min")

Each named attribute holds a learning rate or LR floor: a number or tensor (shared by all param groups) or a list
with one entry per param group; ``None`` is skipped. ``lrbs_lr_attributes = ()`` declares that the scheduler keeps
no LR of its own (it only reads and writes ``param_group["lr"]``, or you built it at the scaled LRs yourself).

A param group holding ``"lrbs_scale": False`` is left alone, by the rescale and by the warmup. Every other group must
have a numeric ``lr``: a group with ``lr=None`` (transformers' ``Adafactor(relative_step=True)`` sets its own step
size) or without an ``lr`` key is refused (:func:`check_numeric_lrs`), since there is no learning rate to scale.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_lrbs._coerce import as_float

__all__ = [
    "LR_ATTRIBUTES_KEY",
    "SKIP_KEY",
    "check_numeric_lrs",
    "flatten_schedulers",
    "lr_attributes",
    "rescale_",
    "scalable_groups",
    "unsaved_schedulers",
]

#: Param-group key that opts a group out of scaling and warmup: ``{"params": ..., "lrbs_scale": False}``.
SKIP_KEY = "lrbs_scale"

#: Scheduler attribute (class or instance) naming the attributes that hold its learning rates: the opt-in for a
#: scheduler class :func:`rescale_` does not know. ``()`` says it keeps none of its own.
LR_ATTRIBUTES_KEY = "lrbs_lr_attributes"

_GROUP_KEYS = ("lr", "initial_lr", "max_lr", "min_lr", "swa_lr")
_SCHEDULER_LIST_KEYS = ("base_lrs", "max_lrs", "_last_lr", "min_lrs")
_SCHEDULER_SCALAR_KEYS = ("eta_min", "default_min_lr")

# Modules whose scheduler classes keep their LRs only in the attributes above. SWALR keeps its `swa_lr` in the param
# groups; Lightning's LR-finder schedulers (`_LinearLR`, `_ExponentialLR`) are torch `LRScheduler`s.
_TORCH_MODULES = (
    "torch.optim.lr_scheduler",
    "torch.optim.swa_utils",
    "lightning.pytorch.tuner.lr_finder",
    "pytorch_lightning.tuner.lr_finder",
)
# timm's schedulers (timm/scheduler/*.py): LRs in `base_values` (from `initial_lr`), `warmup_lr_init` with the
# per-group increments `warmup_steps = (base - warmup_lr_init) / warmup_t` (1s, not LRs, when warmup_t == 0), `lr_min`
# and `restore_lr` (the LR before noise, PlateauLRScheduler). Every LR they compute is linear in those values.
_TIMM_CLASSES = frozenset(
    {
        "CosineLRScheduler",
        "StepLRScheduler",
        "MultiStepLRScheduler",
        "PlateauLRScheduler",
        "PolyLRScheduler",
        "TanhLRScheduler",
        "WSDLRScheduler",
    }
)
_TIMM_LIST_KEYS = ("base_values", "restore_lr")
_TIMM_SCALAR_KEYS = ("warmup_lr_init", "lr_min")


def _is_timm(scheduler: Any) -> bool:
    cls = type(scheduler)
    return cls.__module__.startswith("timm.scheduler.") and cls.__name__ in _TIMM_CLASSES


def lr_attributes(scheduler: Any) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The attributes of ``scheduler`` that hold learning rates: ``(per-group lists, scalars)``, or ``None`` for a
    scheduler class that is not known and names none in ``lrbs_lr_attributes`` (:data:`LR_ATTRIBUTES_KEY`).

    For a name listed in ``lrbs_lr_attributes``, a list or tuple value is per group and anything else is a scalar; such
    names are returned in both positions and told apart by their value when scaling.

    Example::

        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> lr_attributes(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10))
        (('base_lrs', 'max_lrs', '_last_lr', 'min_lrs'), ('eta_min', 'default_min_lr'))
    """
    declared = getattr(scheduler, LR_ATTRIBUTES_KEY, None)
    if declared is not None:
        if isinstance(declared, str) or not all(isinstance(name, str) for name in declared):
            raise ValueError(
                f"`{type(scheduler).__name__}.{LR_ATTRIBUTES_KEY}` must be a tuple of attribute names, got {declared!r}"
            )
        names = tuple(declared)
        return names, names
    if type(scheduler).__module__ in _TORCH_MODULES:
        return _SCHEDULER_LIST_KEYS, _SCHEDULER_SCALAR_KEYS
    if _is_timm(scheduler):
        if getattr(scheduler, "param_group_field", "lr") != "lr":
            return (), ()  # schedules another param-group field (weight decay, ...), not the LR
        lists = _TIMM_LIST_KEYS + (("warmup_steps",) if getattr(scheduler, "warmup_t", 0) else ())
        return lists, _TIMM_SCALAR_KEYS
    return None


def unsaved_schedulers(schedulers: Iterable[Any]) -> list[Any]:
    """The schedulers (nested ones included) whose ``state_dict`` leaves out their stored LRs, so that loading a
    checkpoint leaves them as built, at the module's own LRs: timm's ``PlateauLRScheduler`` (it saves only the best
    metric and the epoch, as timm documents) and the ``ReduceLROnPlateau`` inside it."""
    out: list[Any] = []
    for scheduler in flatten_schedulers(schedulers):
        if _is_timm(scheduler) and type(scheduler).__name__ == "PlateauLRScheduler":
            out.extend(flatten_schedulers([scheduler]))
    return out


def _check_schedulers(schedulers: Sequence[Any]) -> None:
    """Refuse, before anything changes, a scheduler whose stored LRs are not known or not as declared."""
    for scheduler in schedulers:
        attributes = lr_attributes(scheduler)
        cls = type(scheduler)
        if attributes is None:
            raise ValueError(
                f"cannot rescale the scheduler {cls.__qualname__} (from {cls.__module__}): it may keep learning rates "
                "of its own that lightning-lrbs does not know (it knows the classes of torch.optim.lr_scheduler and "
                "timm.scheduler, not their subclasses), and scaling only some of them would be silently wrong. Name "
                f"the attributes that hold its learning rates and LR floors in `{LR_ATTRIBUTES_KEY}` on the class or "
                f"instance (e.g. `{LR_ATTRIBUTES_KEY} = ('base_lrs', '_last_lr', 'eta_min')`; each a number, a tensor "
                "or a list with one value per param group), or set it to `()` if the scheduler only reads and writes "
                "param_group['lr']"
            )
        if getattr(scheduler, LR_ATTRIBUTES_KEY, None) is None:
            continue
        groups = len(scheduler.optimizer.param_groups)
        for name in attributes[0]:
            if not hasattr(scheduler, name):
                raise ValueError(f"`{cls.__name__}.{LR_ATTRIBUTES_KEY}` names {name!r}, which the scheduler lacks")
            value = getattr(scheduler, name)
            if not (value is None or isinstance(value, (list, tuple, torch.Tensor)) or as_float(value) is not None):
                raise ValueError(
                    f"`{cls.__name__}.{name}` named in `{LR_ATTRIBUTES_KEY}` must hold a learning rate (a number, a "
                    f"tensor or a list with one per param group), got {value!r}"
                )
            if isinstance(value, (list, tuple)) and len(value) != groups:
                raise ValueError(
                    f"`{cls.__name__}.{name}` has {len(value)} values for {groups} param groups: a list named in "
                    f"`{LR_ATTRIBUTES_KEY}` holds one learning rate per param group"
                )


def check_numeric_lrs(optimizers: Iterable[Optimizer]) -> None:
    """Refuse an optimizer with a param group that takes part in scaling but has no numeric ``lr``.

    Raises:
        ValueError: For a group with ``lr=None`` (e.g. transformers' ``Adafactor(relative_step=True)``, which sets
            its own step size) or without an ``lr`` key, unless it opts out with ``"lrbs_scale": False``.

    Example::

        >>> class NoLR(torch.optim.SGD):
        ...     pass
        >>> opt = NoLR([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> opt.param_groups[0]["lr"] = None
        >>> check_numeric_lrs([opt])
        Traceback (most recent call last):
        ...
        ValueError: NoLR param group 0 has lr=None (the optimizer sets its own step size, as Adafactor(relative_step=True) does): there is no learning rate to scale. Give the group a numeric `lr`, or leave it out of scaling and warmup with {'lrbs_scale': False} in the group
    """  # noqa: E501
    for optimizer in optimizers:
        name = type(optimizer).__name__
        for index, (group, active) in enumerate(zip(optimizer.param_groups, scalable_groups(optimizer))):
            if not active:
                continue
            if "lr" not in group:
                problem = "has no 'lr' key (the optimizer does not use a learning rate)"
            elif group["lr"] is None:
                problem = "has lr=None (the optimizer sets its own step size, as Adafactor(relative_step=True) does)"
            else:
                continue
            raise ValueError(
                f"{name} param group {index} {problem}: there is no learning rate to scale. Give the group a numeric "
                f"`lr`, or leave it out of scaling and warmup with {{{SKIP_KEY!r}: False}} in the group"
            )


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
        if _is_timm(scheduler) and hasattr(getattr(scheduler, "lr_scheduler", None), "optimizer"):
            visit(scheduler.lr_scheduler)  # the ReduceLROnPlateau inside timm's PlateauLRScheduler

    for scheduler in schedulers:
        visit(scheduler)
    return out


def _check_factor(factor: object) -> float:
    value = as_float(factor)
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`factor` must be a finite positive number, got {factor!r}")
    return value


def _factors_by_optimizer(optimizers: Sequence[Optimizer], factor: float | Sequence[float]) -> dict[int, float]:
    if as_float(factor) is not None or not isinstance(factor, Sequence) or isinstance(factor, str):
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
    *,
    param_groups: bool = True,
) -> None:
    r"""Multiply the learning rates of ``optimizers`` and of every scheduler built on them by ``factor``, in place.

    After the call, each optimizer and scheduler behaves as if built with :math:`f\times` its learning rates and
    :math:`f\times` its LR floors, also in the middle of a schedule. Calling it twice with :math:`f_1` then
    :math:`f_2` equals one call with :math:`f_1 f_2`, so a change of scale is ``rescale_(..., new / old)``.

    Args:
        optimizers: One optimizer or a sequence of them.
        schedulers: Schedulers built on those optimizers: ``torch.optim.lr_scheduler`` ones (``ReduceLROnPlateau``,
            ``SequentialLR`` and ``ChainedScheduler`` with their children included), timm's ``timm.scheduler`` ones,
            or any scheduler that names its LR attributes in ``lrbs_lr_attributes``. Each is reached once, however
            often it is listed or nested.
        factor: One factor for all optimizers, or one per optimizer (same order).
        param_groups: ``False`` scales the schedulers only, not the param groups: for schedulers rebuilt at the
            module's LRs while the optimizer state came back scaled from a checkpoint (:func:`unsaved_schedulers`).

    Raises:
        ValueError: If a factor is not finite and positive, the number of factors does not match, a scheduler
            belongs to an optimizer that is not in ``optimizers`` or is of a class whose stored LRs are not known
            (see the module docstring for the ``lrbs_lr_attributes`` opt-in), or a param group that takes part has
            no numeric ``lr`` (:func:`check_numeric_lrs`). Nothing is changed then.
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
    _check_schedulers(all_schedulers)
    check_numeric_lrs(optimizer_list)

    # Everything is checked: from here on nothing raises, so no optimizer is ever left half-scaled.
    scale = _Scaler()
    done: set[int] = set()
    for optimizer in optimizer_list:
        f = factors[id(optimizer)]
        if id(optimizer) in done or f == 1.0 or not param_groups:
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
        list_keys, scalar_keys = lr_attributes(scheduler) or ((), ())
        for key in list_keys:
            values = getattr(scheduler, key, None)
            if isinstance(values, (list, tuple)) and len(values) == len(mask):
                scaled = [scale(v, f) if m else v for v, m in zip(values, mask)]
                setattr(scheduler, key, type(values)(scaled))
        for key in scalar_keys:
            value = getattr(scheduler, key, None)
            if value is None or (as_float(value) is None and not isinstance(value, torch.Tensor)):
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
