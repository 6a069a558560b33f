r"""Scaling rules: how the learning rate follows the batch size.

Pure functions, no Lightning import: usable from raw PyTorch and Lightning Fabric.

For a ratio :math:`r = B_\text{eff} / B_\text{base}` between the effective batch size and the batch size
the learning rates were tuned for, a rule gives the factor :math:`f(r)` applied to every learning rate:

.. math::

    \text{linear: } f(r) = r \qquad \text{sqrt: } f(r) = \sqrt{r} \qquad \text{none: } f(r) = 1

- **linear**: Goyal et al. 2017, *Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour*
  (arXiv:1706.02677), for SGD with momentum.
- **sqrt**: Krizhevsky 2014, *One weird trick for parallelizing convolutional neural networks*
  (arXiv:1404.5997); Hoffer et al. 2017, *Train longer, generalize better* (arXiv:1705.08741); derived for
  adaptive optimizers by Malladi et al. 2022, *On the SDEs and Scaling Rules for Adaptive Gradient Algorithms*
  (arXiv:2205.10287).
- **auto**: per optimizer, ``sqrt`` for adaptive optimizers (Adam family, RMSprop, Adagrad, Adadelta, LAMB)
  and ``linear`` otherwise, as timm's ``train.py --lr-base-scale`` does.
- **sde**: per optimizer, ``linear`` for SGD and ``sqrt`` for the Adam family and RMSprop, whose betas, epsilon and
  averaging constants then follow the batch too (Malladi et al. 2022; see :mod:`lightning_lrbs.sde`); ``sqrt`` and a
  warning for optimizers without a known SDE rule.
- **capped**: per optimizer, linear (SGD) or square root (adaptive optimizers) at small ratios, saturating at a
  ceiling of :math:`C` times the base LR (:mod:`lightning_lrbs.capped`, McCandlish et al. 2018's
  :math:`\epsilon_\text{opt}(B)` with a fixed noise scale); its default ceilings were measured on small MNIST models
  (docs/auto_lr.md) and are not universal.
- **adascale**: a factor measured at every step from the gradient noise (:mod:`lightning_lrbs.adascale`); its static
  factor here is 1.
- a callable ``f(r) -> float``: any rule of your own; it must return a finite positive number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

from lightning_lrbs._coerce import as_float
from lightning_lrbs.sde import sde_lr_rule

__all__ = [
    "ADAPTIVE_OPTIMIZERS",
    "PER_OPTIMIZER_RULES",
    "RULES",
    "Rule",
    "RuleName",
    "is_adaptive",
    "resolve_rule",
    "rule_name",
    "scale_factor",
    "validate_rule",
]

RuleName = Literal["linear", "sqrt", "auto", "none", "sde", "adascale", "capped"]
#: A rule: the name of a built-in one (:data:`RULES`) or a callable ``ratio -> factor``.
Rule = RuleName | Callable[[float], float]
#: The names of the built-in rules.
RULES: tuple[str, ...] = get_args(RuleName)
#: The rules that resolve per optimizer (:func:`resolve_rule` needs the optimizer).
PER_OPTIMIZER_RULES: tuple[str, ...] = ("auto", "sde", "capped")

#: Optimizers that normalise the update by a running estimate of the gradient's scale.
ADAPTIVE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = tuple(
    cls
    for cls in (
        getattr(torch.optim, name, None)
        for name in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "SparseAdam")
    )
    if cls is not None
)
# Optimizers outside torch.optim (LAMB, Adafactor, 8-bit Adam, ...) are recognised by name, like timm does.
_ADAPTIVE_NAME_PARTS = ("ada", "lamb", "rmsprop", "lion", "sophia")


def validate_rule(rule: object, name: str = "rule") -> Rule:
    """Check that ``rule`` is a supported rule name or a callable.

    Args:
        rule: The rule to check.
        name: The argument's name, for the error message.

    Returns:
        The rule, unchanged.

    Raises:
        ValueError: If ``rule`` is neither one of :data:`RULES` nor callable.

    Example::

        >>> validate_rule("sqrt")
        'sqrt'
        >>> validate_rule("cubic")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `rule` must be one of 'linear', 'sqrt', 'auto', 'none', 'sde', 'adascale', 'capped' or ... 'cubic'
    """
    if callable(rule) or (isinstance(rule, str) and rule in RULES):
        return rule  # type: ignore[return-value]
    supported = ", ".join(repr(r) for r in RULES)
    raise ValueError(f"`{name}` must be one of {supported} or a callable ratio -> factor, got {rule!r}")


def is_adaptive(optimizer: torch.optim.Optimizer | type[torch.optim.Optimizer]) -> bool:
    """Whether ``optimizer`` is adaptive (per-parameter normalised updates), for the ``"auto"`` rule.

    Example::

        >>> is_adaptive(torch.optim.AdamW), is_adaptive(torch.optim.SGD)
        (True, False)
    """
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    if issubclass(cls, ADAPTIVE_OPTIMIZERS):
        return True
    name = cls.__name__.lower()
    return any(part in name for part in _ADAPTIVE_NAME_PARTS)


def resolve_rule(rule: Rule, optimizer: torch.optim.Optimizer | None = None) -> Rule:
    """Resolve ``"auto"`` and ``"sde"`` to ``"sqrt"`` or ``"linear"``, and ``"capped"`` to a
    :class:`~lightning_lrbs.capped.CappedRule`, for ``optimizer``; other rules are returned as they are.

    Raises:
        ValueError: If ``rule`` is ``"auto"``, ``"sde"`` or ``"capped"`` and no optimizer is given, or ``rule`` is not
            supported.

    Example::

        >>> adam = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        >>> resolve_rule("auto", adam), resolve_rule("capped", adam)
        ('sqrt', CappedRule(cap=8.0, exponent=2.0))
    """
    validate_rule(rule)
    if not isinstance(rule, str) or rule not in PER_OPTIMIZER_RULES:
        return rule
    if optimizer is None:
        chooses = "its ceiling (lightning_lrbs.capped)" if rule == "capped" else "between 'linear' and 'sqrt'"
        raise ValueError(f"`rule={rule!r}` needs the optimizer to choose {chooses}")
    if rule == "capped":
        from lightning_lrbs.capped import capped_rule  # capped imports is_adaptive from here

        return capped_rule(optimizer)
    if rule == "sde":
        return sde_lr_rule(optimizer)
    return "sqrt" if is_adaptive(optimizer) else "linear"


def rule_name(rule: Rule) -> str:
    """A short printable name: the rule's name, or the callable's ``__name__``."""
    if isinstance(rule, str):
        return rule
    return getattr(rule, "__name__", type(rule).__name__)


def scale_factor(ratio: float, rule: Rule = "linear", optimizer: torch.optim.Optimizer | None = None) -> float:
    r"""The learning-rate factor for a batch-size ratio under ``rule``.

    .. math::

        f_\text{linear}(r) = r, \qquad f_\text{sqrt}(r) = \sqrt{r}, \qquad f_\text{none}(r) = 1

    Args:
        ratio: :math:`r = B_\text{eff} / B_\text{base}`, a finite positive number.
        rule: ``"linear"``, ``"sqrt"``, ``"none"``, ``"auto"``, ``"sde"`` or ``"capped"`` (the last three need
            ``optimizer``) or a callable ``f(r)``.
        optimizer: The optimizer whose LR is scaled; only used by ``"auto"``, ``"sde"`` and ``"capped"``.

    Returns:
        The factor, a finite positive float.

    Raises:
        ValueError: If ``ratio`` is not finite and positive, the rule is unknown, or a callable rule returns a
            non-finite or non-positive factor.

    Example::

        >>> scale_factor(4.0, "linear"), scale_factor(4.0, "sqrt"), scale_factor(4.0, "none")
        (4.0, 2.0, 1.0)
        >>> scale_factor(4.0, lambda r: r**0.25)
        1.4142135623730951
    """
    given = ratio
    ratio = as_float(given)  # type: ignore[assignment]
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"the batch-size ratio must be a finite positive number, got {given!r}")
    resolved = resolve_rule(rule, optimizer)
    if resolved == "linear":
        return float(ratio)
    if resolved == "sqrt":
        return math.sqrt(ratio)
    if resolved in ("none", "adascale"):  # adascale: the static factor is 1, the gain is applied per step
        return 1.0
    assert callable(resolved)  # noqa: S101 - narrowed by validate_rule
    returned = resolved(float(ratio))
    if isinstance(returned, torch.Tensor) and returned.numel() == 1:
        returned = returned.reshape(())
    factor = as_float(returned)  # Python, NumPy and 0-d array or tensor numbers
    if factor is None or not math.isfinite(factor) or factor <= 0:
        raise ValueError(
            f"`rule` {rule_name(resolved)!r} must return a finite positive factor, got {returned!r} for ratio {ratio:g}"
        )
    return factor
