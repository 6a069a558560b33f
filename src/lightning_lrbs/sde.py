r"""Time constants counted in steps: Adam's betas and epsilon, decoupled weight decay, a model EMA.

Pure functions over torch objects, no Lightning import: usable from raw PyTorch and Lightning Fabric.

When the batch grows :math:`\kappa`-fold (:math:`\kappa = B_\text{eff} / B_\text{base}`), an epoch has
:math:`\kappa` times fewer optimizer steps, so every quantity counted in steps covers :math:`\kappa` times more data.
Keeping the dynamics per epoch (per sample seen) needs, with :math:`f` the optimizer's LR factor:

.. math::

    \beta \to \beta^\kappa, \qquad \epsilon \to \frac{\epsilon}{\sqrt\kappa}, \qquad
    \lambda_\text{decoupled} \to \lambda\,\frac{\kappa}{f}, \qquad \rho_\text{EMA} \to \rho^\kappa

- **Adam / RMSprop SDE rule** (``rule="sde"``): Malladi et al. 2022, *On the SDEs and Scaling Rules for Adaptive
  Gradient Algorithms* (arXiv:2205.10287): :math:`\eta \to \sqrt\kappa\,\eta`, :math:`1 - \beta \to \kappa(1 - \beta)`,
  :math:`\epsilon \to \epsilon / \sqrt\kappa`. :math:`\beta^\kappa = 1 - \kappa(1 - \beta) + O((1 - \beta)^2)` is the
  same to first order, stays in :math:`[0, 1)` for every :math:`\kappa`, and keeps Adam's bias correction
  :math:`1 - \beta^t` equal at equal samples seen (:math:`(\beta^\kappa)^{t/\kappa} = \beta^t`). For SGD the SDE
  rule is the linear rule (Li et al. 2021, *On the Validity of Modeling SGD with Stochastic Differential Equations*,
  arXiv:2102.12470), with nothing else changed.
- **Decoupled weight decay** (AdamW; Adam, NAdam, RAdam with ``decoupled_weight_decay=True``): each step multiplies
  the weights by :math:`1 - \eta\lambda`, a time scale of :math:`1/(\eta\lambda)` steps that should stay fixed in
  epochs (Wang & Aitchison 2024, *How to set AdamW's weight decay as you scale model and dataset size*,
  arXiv:2405.13698): with :math:`\kappa` times fewer steps and :math:`\eta \to f\eta`,
  :math:`\lambda \to \lambda\kappa/f`. Under every rule but ``"none"`` (a rule whose factor moves every step, such
  as AdaScale, will leave it alone).
- **Model EMA** (``torch.optim.swa_utils.get_ema_avg_fn`` / ``get_ema_multi_avg_fn``, which Lightning's
  ``EMAWeightAveraging`` uses): :math:`\rho \to \rho^\kappa` (Busbridge et al. 2023, *How to Scale Your EMA*,
  arXiv:2307.13813). Equal-weight averages (SWA) have no time constant and are left alone.

Heavy-ball momentum (SGD's and RMSprop's ``momentum``: :math:`v \leftarrow \mu v + u`, :math:`\theta \leftarrow
\theta - \eta v`) is left alone: its buffer is not an average, so :math:`\mu \to \mu^\kappa` would also divide the
effective step :math:`\eta / (1 - \mu)` by about :math:`\kappa`, and the LR correction that would undo it changes
with :math:`\mu`, which ``OneCycleLR`` / ``CyclicLR`` move every step. Adam's :math:`\beta_1` is an average
(:math:`m \leftarrow \beta_1 m + (1 - \beta_1) g`), so :math:`\beta_1^\kappa` keeps its scale.

The originals are kept (see :class:`TimeConstantPlan`): the values in force are always the formulas applied to them at
the current :math:`\kappa`, never to already scaled values.
"""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

__all__ = [
    "ADAM_FAMILY",
    "TimeConstantPlan",
    "averaged_model_ema",
    "has_decoupled_weight_decay",
    "plan_time_constants",
    "scale_beta",
    "scale_ema_decay",
    "scale_eps",
    "scale_weight_decay",
    "scales_ema",
    "scales_weight_decay",
    "sde_family",
    "sde_lr_rule",
    "unknown_sde_optimizers",
]

#: Optimizers whose ``betas`` are averaging coefficients (:math:`m \leftarrow \beta m + (1 - \beta) g`).
ADAM_FAMILY: tuple[type[Optimizer], ...] = tuple(
    cls
    for cls in (getattr(torch.optim, name, None) for name in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam"))
    if cls is not None
)
#: Param-group keys a transform may change (``max_momentum`` / ``base_momentum``: the β₁ range of ``OneCycleLR``).
GROUP_KEYS = ("betas", "eps", "alpha", "weight_decay", "max_momentum", "base_momentum")
#: ``CyclicLR`` keeps its β₁ range on the scheduler.
SCHEDULER_KEYS = ("base_momentums", "max_momentums")

# Inner functions of torch's EMA factories; every closure they return shares these code objects.
_EMA_FACTORIES: dict[str, Callable[..., Callable[..., Any]]] = {
    "avg_fn": get_ema_avg_fn,
    "multi_avg_fn": get_ema_multi_avg_fn,
}
_EMA_CODES: dict[str, types.CodeType] = {
    attribute: inspect.unwrap(factory(0.5)).__code__ for attribute, factory in _EMA_FACTORIES.items()
}


def sde_family(optimizer: Optimizer | type[Optimizer]) -> str | None:
    """``"sgd"``, ``"adam"`` (Adam, AdamW, Adamax, NAdam, RAdam and subclasses), ``"rmsprop"``, or ``None`` (no SDE rule
    known here).

    Example::

        >>> sde_family(torch.optim.AdamW), sde_family(torch.optim.SGD), sde_family(torch.optim.Adagrad)
        ('adam', 'sgd', None)
    """
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    if issubclass(cls, torch.optim.SGD):
        return "sgd"
    if issubclass(cls, ADAM_FAMILY):
        return "adam"
    if issubclass(cls, torch.optim.RMSprop):
        return "rmsprop"
    return None


def sde_lr_rule(optimizer: Optimizer | type[Optimizer]) -> Literal["linear", "sqrt"]:
    r"""The LR rule of ``rule="sde"`` for ``optimizer``: ``"linear"`` for SGD (the SGD SDE rule), ``"sqrt"`` for the
    Adam family and RMSprop (Malladi et al. 2022) and for optimizers without a known rule (the callback warns)."""
    return "linear" if sde_family(optimizer) == "sgd" else "sqrt"


def unknown_sde_optimizers(optimizers: Sequence[Optimizer]) -> list[str]:
    """Names of the optimizers ``rule="sde"`` knows no rule for (they get the sqrt rule on their LR only)."""
    return sorted({type(o).__name__ for o in optimizers if sde_family(o) is None})


def scales_weight_decay(rule: object) -> bool:
    r"""Whether decoupled weight decay follows the rule: every static rule but ``"none"``.

    Not under ``"adascale"``: its factor moves every step, so no single :math:`\lambda\kappa/f` keeps
    :math:`\eta\lambda` per epoch; weight decay is left alone there.
    """
    return rule not in ("none", "adascale")


def scales_ema(rule: object) -> bool:
    """Whether a model EMA's decay follows the batch: under every rule but ``"none"``."""
    return rule != "none"


def scale_beta(beta: float, kappa: float) -> float:
    r""":math:`\beta \to \beta^\kappa` (Malladi et al. 2022 to first order; stays in [0, 1]).

    Example::

        >>> scale_beta(0.9, 2.0), scale_beta(0.81, 0.5)
        (0.81, 0.9)
    """
    return float(beta**kappa)


def scale_eps(eps: float, kappa: float) -> float:
    r""":math:`\epsilon \to \epsilon / \sqrt\kappa` (Malladi et al. 2022): the gradient noise, and with it
    :math:`\sqrt{v}`, shrinks by :math:`\sqrt\kappa`.

    Example::

        >>> scale_eps(1e-8, 4.0)
        5e-09
    """
    return float(eps / math.sqrt(kappa))


def scale_weight_decay(weight_decay: float, kappa: float, factor: float) -> float:
    r""":math:`\lambda \to \lambda\kappa / f`: keeps :math:`\eta\lambda` per epoch (Wang & Aitchison 2024).

    Example::

        >>> scale_weight_decay(0.01, 4.0, 2.0)
        0.02
    """
    return float(weight_decay * kappa / factor)


def scale_ema_decay(decay: float, kappa: float) -> float:
    r""":math:`\rho \to \rho^\kappa` (Busbridge et al. 2023).

    Example::

        >>> round(scale_ema_decay(0.999, 4.0), 6)
        0.996006
    """
    return float(decay**kappa)


def has_decoupled_weight_decay(optimizer: Optimizer, group: Mapping[str, Any]) -> bool:
    """Whether ``group``'s ``weight_decay`` is decoupled (``θ ← θ − ηλθ``): AdamW, or the Adam family with
    ``decoupled_weight_decay=True``. Coupled (L2) weight decay goes through the gradient and is left alone."""
    adamw = getattr(torch.optim, "AdamW", None)
    return sde_family(optimizer) == "adam" and (
        bool(group.get("decoupled_weight_decay", False)) or (adamw is not None and isinstance(optimizer, adamw))
    )


def averaged_model_ema(model: AveragedModel) -> tuple[str, float] | None:
    """``(attribute, decay)`` when ``model`` averages with torch's ``get_ema_avg_fn`` / ``get_ema_multi_avg_fn``
    (``attribute`` is ``"avg_fn"`` or ``"multi_avg_fn"``); ``None`` for an equal-weight average or a function of your
    own (its time constant is unknown).

    Example::

        >>> ema = AveragedModel(torch.nn.Linear(1, 1), avg_fn=get_ema_avg_fn(0.99))
        >>> averaged_model_ema(ema), averaged_model_ema(AveragedModel(torch.nn.Linear(1, 1)))
        (('avg_fn', 0.99), None)
    """
    for attribute, ema_code in _EMA_CODES.items():
        fn = getattr(model, attribute, None)
        fn = inspect.unwrap(fn) if callable(fn) else fn  # torch wraps them in `torch.no_grad()`
        if getattr(fn, "__code__", None) is ema_code and "decay" in ema_code.co_freevars:
            cells = fn.__closure__  # type: ignore[union-attr]
            return attribute, float(cells[ema_code.co_freevars.index("decay")].cell_contents)
    return None


def _ema_fn(attribute: str, decay: float) -> Callable[..., Any]:
    return _EMA_FACTORIES[attribute](decay)


def _fmt(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return f"{float(value):.4g}"


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_unit(value: object, what: str, rule: str, beta: bool = False) -> float:
    """A plain float in [0, 1] (RMSprop's alpha, EMA decays), or in [0, 1) for Adam's betas and the β₁ ranges of
    momentum-cycling schedulers (``beta``: torch's own constructors refuse β ≥ 1)."""
    if isinstance(value, torch.Tensor):
        raise ValueError(
            f"rule={rule!r} transforms {what} as a plain float, got a tensor {value!r}: build it from a float"
        )
    if not _is_real(value) or not 0.0 <= value <= 1.0 or (beta and value == 1.0):  # type: ignore[operator]
        raise ValueError(f"rule={rule!r} needs {what} in [0, 1{')' if beta else ']'}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_nonnegative(value: object, what: str, rule: str) -> float:
    if isinstance(value, torch.Tensor):
        raise ValueError(
            f"rule={rule!r} transforms {what} as a plain float, got a tensor {value!r}: build it from a float"
        )
    if not _is_real(value) or value < 0:  # type: ignore[operator]
        raise ValueError(f"rule={rule!r} needs {what} to be a finite number >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_betas(value: object, what: str, rule: str) -> tuple[float, float]:
    if isinstance(value, torch.Tensor) or (
        isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value)
    ):
        raise ValueError(
            f"rule={rule!r} transforms {what} as a pair of plain floats, got tensors {value!r}: pass floats"
        )
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"rule={rule!r} needs {what} to be a pair (beta1, beta2), got {value!r}")
    return _check_unit(value[0], f"{what}[0]", rule, beta=True), _check_unit(value[1], f"{what}[1]", rule, beta=True)


@dataclass
class TimeConstantPlan:
    r"""What :func:`plan_time_constants` will change; nothing is changed before :meth:`apply`.

    Attributes:
        kappa: :math:`\kappa` of the optimizer transforms (1 when the rule is not ``"sde"``).
        optimizers: The optimizers, in order.
        groups: Per optimizer, per param group: ``key -> (original, new)`` for every key the plan governs.
        schedulers: ``(scheduler, key, originals, new values)`` for ``CyclicLR``'s β₁ range.
        emas: ``(averaged model, attribute, original decay, new decay)``.
        scheduler_state: Per scheduler, the originals of its β₁ range (``{}`` for schedulers without one).
    """

    kappa: float
    optimizers: list[Optimizer]
    groups: list[list[dict[str, tuple[Any, Any]]]]
    schedulers: list[tuple[Any, str, list[float], list[float]]] = field(default_factory=list)
    emas: list[tuple[AveragedModel, str, float, float]] = field(default_factory=list)
    scheduler_state: list[dict[str, list[float]]] = field(default_factory=list)

    def apply(self) -> None:
        """Write every new value (param groups, schedulers, EMA functions). Raises nothing."""
        for optimizer, groups in zip(self.optimizers, self.groups):
            for group, changes in zip(optimizer.param_groups, groups):
                for key, (_, new) in changes.items():
                    group[key] = new
        for scheduler, key, _, values in self.schedulers:
            setattr(scheduler, key, list(values))
        for model, attribute, _, decay in self.emas:
            setattr(model, attribute, _ema_fn(attribute, decay))

    def state_dict(self) -> dict[str, Any]:
        """The originals and :math:`\\kappa`, for a checkpoint (EMA functions are rebuilt by their callback per fit)."""
        return {
            "kappa": self.kappa,
            "optimizers": [[{k: v[0] for k, v in g.items()} for g in groups] for groups in self.groups],
            "schedulers": self.scheduler_state,
        }

    def ema_originals(self) -> dict[int, float]:
        """Original decay by ``id`` of the averaged model."""
        return {id(model): original for model, _, original, _ in self.emas}

    def describe(self, index: int) -> str:
        """The changes of optimizer ``index``: ``betas (0.9, 0.999) → (0.6561, 0.996), eps 1e-08 → 5e-09``."""
        parts = []
        for key in GROUP_KEYS:
            pairs = [g[key] for g in self.groups[index] if key in g]
            if pairs and any(_fmt(old) != _fmt(new) for old, new in pairs):
                before = ", ".join(dict.fromkeys(_fmt(old) for old, _ in pairs))
                after = ", ".join(dict.fromkeys(_fmt(new) for _, new in pairs))
                parts.append(f"{key} {before} → {after}")
        return ", ".join(parts)

    def describe_ema(self) -> str:
        """``EMA decay 0.999 → 0.996`` (one entry per averaged model whose decay changed)."""
        return "; ".join(f"EMA decay {_fmt(old)} → {_fmt(new)}" for _, _, old, new in self.emas if old != new)

    def hyperparameters(self, names: Sequence[Sequence[str]], ema_names: Sequence[str] = ()) -> dict[str, float]:
        """The changed values in force, for a logger's ``log_hyperparams``.

        Args:
            names: Per optimizer, per group, the LR name (``lrbs/lr-Adam``, ``lrbs/lr-Adam/pg1``); ``lr-`` is
                replaced by the key: ``lrbs/beta1-Adam``, ``lrbs/eps-Adam/pg1``, ``lrbs/weight_decay-AdamW``.
            ema_names: A name per averaged model (default ``lrbs/ema_decay``, numbered when several).
        """
        out: dict[str, float] = {}
        for groups, group_names in zip(self.groups, names):
            for changes, name in zip(groups, group_names):
                for key, (old, new) in changes.items():
                    if _fmt(old) == _fmt(new):
                        continue
                    if key == "betas":
                        for i in (0, 1):
                            if old[i] != new[i]:
                                out[name.replace("lr-", f"beta{i + 1}-", 1)] = float(new[i])
                    else:
                        out[name.replace("lr-", f"{key}-", 1)] = float(new)
        for i, (_, _, old, new) in enumerate(self.emas):
            if old != new:
                default = "lrbs/ema_decay" + (f"-{i}" if i else "")
                out[ema_names[i] if i < len(ema_names) else default] = new
        return out


def plan_time_constants(
    optimizers: Sequence[Optimizer],
    factors: Sequence[float],
    *,
    kappa: float,
    rule: object,
    schedulers: Sequence[Any] = (),
    averaged_models: Sequence[AveragedModel] = (),
    weight_decay: bool = True,
    ema: bool = True,
    state: Mapping[str, Any] | None = None,
    ema_originals: Mapping[int, float] | None = None,
) -> TimeConstantPlan:
    r"""Check everything and compute the new time constants from the originals; change nothing.

    Under ``rule="sde"``, per param group: Adam family :math:`\beta_i \to \beta_i^\kappa`,
    :math:`\epsilon \to \epsilon/\sqrt\kappa` and the ``OneCycleLR`` / ``CyclicLR`` β₁ range (``max_momentum``,
    ``base_momentum``, ``max_momentums``, ``base_momentums``) :math:`\to (\cdot)^\kappa`; RMSprop
    :math:`\alpha \to \alpha^\kappa`, :math:`\epsilon \to \epsilon/\sqrt\kappa`. Under every rule but ``"none"``:
    decoupled weight decay :math:`\lambda \to \lambda\kappa/f` (``weight_decay=True``) and EMA decays
    :math:`\rho \to \rho^\kappa` (``ema=True``). Keys the current rule does not govern go back to their originals.

    Originals come from ``state`` (a previous :meth:`TimeConstantPlan.state_dict`, e.g. from a checkpoint) where it
    holds them, else from the optimizers and schedulers as they are (so a param group added since, as
    ``BackboneFinetuning`` adds one, starts from the values it was added with). A β₁ that a momentum-cycling
    scheduler moves every step keeps its position within the (rescaled) range, so it equals what the scheduler sets
    on that range.

    Args:
        optimizers: The optimizers, after their LRs were (or will be) scaled by ``factors``.
        factors: The LR factor :math:`f` of each optimizer.
        kappa: :math:`\kappa = B_\text{eff} / B_\text{base}`.
        rule: The rule (``"sde"`` transforms the optimizers' time constants).
        schedulers: Every scheduler on these optimizers (flattened).
        averaged_models: ``AveragedModel`` instances whose EMA decay follows :math:`\kappa`.
        weight_decay: Scale decoupled weight decay.
        ema: Scale EMA decays.
        state: A previous plan's ``state_dict()``.
        ema_originals: Original EMA decays by ``id`` of the averaged model (a previous plan's ``ema_originals()``).

    Raises:
        ValueError: A value the transforms cannot handle (a tensor, betas not a pair, a β outside [0, 1) or an
            alpha outside [0, 1], a negative eps or weight decay), or ``state`` does not match the optimizers.
            Nothing has changed then.

    Example::

        >>> opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        >>> plan = plan_time_constants([opt], [2.0], kappa=4.0, rule="sde")
        >>> plan.apply()
        >>> opt.param_groups[0]["betas"], opt.param_groups[0]["eps"]
        ((0.6561, 0.996005996001), 5e-09)
        >>> plan.describe(0)
        'betas (0.9, 0.999) → (0.6561, 0.996), eps 1e-08 → 5e-09'
    """
    rule_text = rule if isinstance(rule, str) else getattr(rule, "__name__", type(rule).__name__)
    sde_kappa = float(kappa) if rule == "sde" else 1.0
    state = state or {}
    stored = state.get("optimizers")
    if stored is not None and (
        len(stored) != len(optimizers) or any(len(s) > len(o.param_groups) for s, o in zip(stored, optimizers))
    ):
        raise ValueError(
            f"the checkpoint's time-constant originals hold {[len(s) for s in stored]} param groups per optimizer, "
            f"but the module has {[len(o.param_groups) for o in optimizers]} (groups may be added, as "
            "BackboneFinetuning does, not removed)"
        )
    applied = float(state.get("kappa", 1.0))
    cycled = _beta1_cycled(schedulers)

    groups: list[list[dict[str, tuple[Any, Any]]]] = []
    for index, (optimizer, factor) in enumerate(zip(optimizers, factors)):
        family = sde_family(optimizer)
        name = type(optimizer).__name__
        plans = []
        for g, group in enumerate(optimizer.param_groups):
            known = stored is not None and g < len(stored[index])  # else a group added since: its values now
            originals = dict(stored[index][g]) if known else {}  # type: ignore[index]
            what = f"{name} param group {g}"
            plan: dict[str, tuple[Any, Any]] = {}
            keys = _governed_keys(optimizer, group, family)
            for key in keys:
                original = originals.get(key, group[key])
                if key == "betas":
                    b1, b2 = _check_betas(original, f"{what} `betas`", rule_text)
                    new_b2 = scale_beta(b2, sde_kappa)
                    plan[key] = ((b1, b2), (scale_beta(b1, sde_kappa), new_b2))
                elif key == "eps":
                    e = _check_nonnegative(original, f"{what} `eps`", rule_text)
                    plan[key] = (e, scale_eps(e, sde_kappa))
                elif key == "weight_decay":
                    w = _check_nonnegative(original, f"{what} `weight_decay`", rule_text)
                    on = weight_decay and scales_weight_decay(rule)
                    plan[key] = (w, scale_weight_decay(w, kappa, factor) if on else w)
                else:  # alpha, max_momentum, base_momentum
                    u = _check_unit(original, f"{what} `{key}`", rule_text, beta=key != "alpha")
                    plan[key] = (u, scale_beta(u, sde_kappa))
            if id(optimizer) in cycled and "betas" in plan:
                now = _check_unit(group["betas"][0], f"{what} `betas`[0]", rule_text, beta=True)
                (b1, b2), (_, new_b2) = plan["betas"]
                plan["betas"] = ((b1, b2), (_cycled_beta1(now, group, plan, sde_kappa / applied), new_b2))
            plans.append(plan)
        groups.append(plans)

    stored_schedulers = state.get("schedulers") or []
    scheduler_changes: list[tuple[Any, str, list[float], list[float]]] = []
    scheduler_state: list[dict[str, list[float]]] = []
    for i, scheduler in enumerate(schedulers):
        entry: dict[str, list[float]] = {}
        if getattr(scheduler, "cycle_momentum", False) and getattr(scheduler, "use_beta1", False):
            saved: dict[str, list[float]] = stored_schedulers[i] if i < len(stored_schedulers) else {}
            for key in SCHEDULER_KEYS:
                values: Any = saved.get(key, getattr(scheduler, key, None))
                if not isinstance(values, list):
                    continue
                what = f"{type(scheduler).__name__} `{key}`"
                start = [_check_unit(v, what, rule_text, beta=True) for v in values]
                entry[key] = start
                scheduler_changes.append((scheduler, key, start, [scale_beta(v, sde_kappa) for v in start]))
        scheduler_state.append(entry)

    emas: list[tuple[AveragedModel, str, float, float]] = []
    for model in averaged_models:
        found = averaged_model_ema(model)
        if found is None:
            continue
        attribute, decay = found
        original = (ema_originals or {}).get(id(model), decay)
        original = _check_unit(original, "the EMA decay", rule_text)
        emas.append(
            (model, attribute, original, scale_ema_decay(original, kappa) if ema and scales_ema(rule) else original)
        )

    return TimeConstantPlan(sde_kappa, list(optimizers), groups, scheduler_changes, emas, scheduler_state)


def _governed_keys(optimizer: Optimizer, group: Mapping[str, Any], family: str | None) -> list[str]:
    keys: list[str] = []
    if family == "adam":
        keys += ["betas", "eps"]
        keys += [k for k in ("max_momentum", "base_momentum") if k in group]
    elif family == "rmsprop":
        keys += ["alpha", "eps"]
    if "weight_decay" in group and has_decoupled_weight_decay(optimizer, group):
        keys.append("weight_decay")
    return [k for k in keys if k in group]


def _cycled_beta1(now: float, group: Mapping[str, Any], plan: Mapping[str, tuple[Any, Any]], ratio: float) -> float:
    r"""The β₁ a momentum-cycling scheduler would have set at the same point of its cycle on the new range.

    ``OneCycleLR`` and ``CyclicLR`` set :math:`\beta_1 = lo + p\,(hi - lo)` (``lo``, ``hi`` the range ends,
    ``base_momentum`` and ``max_momentum``; :math:`p` the schedule's position), linear in the ends: keep :math:`p` and
    change the ends. Without the range in the group, :math:`\beta_1^{\kappa/\kappa_\text{applied}}`.
    """
    if "base_momentum" in plan and "max_momentum" in plan:
        lo, hi = float(group["base_momentum"]), float(group["max_momentum"])
        new_lo, new_hi = float(plan["base_momentum"][1]), float(plan["max_momentum"][1])
        if hi == lo:
            return new_lo
        return new_lo + (now - lo) / (hi - lo) * (new_hi - new_lo)
    return scale_beta(now, ratio)


def _beta1_cycled(schedulers: Sequence[Any]) -> set[int]:
    """``id`` of each optimizer whose β₁ a ``OneCycleLR`` / ``CyclicLR`` (``cycle_momentum=True``) moves every step."""
    return {
        id(getattr(s, "optimizer", None))
        for s in schedulers
        if getattr(s, "cycle_momentum", False) and getattr(s, "use_beta1", False)
    }
