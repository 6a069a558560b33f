r"""Batch scaling for a training loop of your own: Lightning Fabric or raw PyTorch.

Pure PyTorch, no Lightning import. :func:`scale_for_batch` does in one call what
:class:`~lightning_lrbs.BatchScalingCallback` does when a Trainer starts: it computes the effective batch size

.. math::

    B_\text{eff} = A \sum_{\text{ranks } r} b_r = b \times \text{world size} \times A,

multiplies every learning rate, and everything the schedulers derived from it, by
:math:`f = \text{rule}(B_\text{eff} / B_\text{base})`, and optionally starts a linear warmup over the first
optimizer steps that composes with any scheduler.

With Fabric::

    fabric = Fabric(devices=4, strategy="ddp")
    fabric.launch()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)
    loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=32, shuffle=True))
    scaling = scale_for_batch(
        optimizer, scheduler,
        per_device_batch_size=32, world_size=fabric.world_size, accumulation=2,
        base_batch_size=256, rule="linear", warmup_steps=100,
    )
    fabric.print(scaling.summary)  # effective batch 256 = 32 per device × 4 devices × 2 accumulation; ...

Then train as usual: ``optimizer.step()`` uses the warmed-up LR during the first ``warmup_steps`` optimizer steps,
and ``scheduler.step()`` keeps following its own schedule at :math:`f\times` the LRs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.optim import Optimizer

from lightning_lrbs.adascale import AdaScaleLR, check_adascale_optimizer, preconditioner
from lightning_lrbs.batch import check_positive_int, effective_batch_size
from lightning_lrbs.noise import GradientNoiseScale, check_smoothing
from lightning_lrbs.rescale import flatten_schedulers, rescale_
from lightning_lrbs.rules import Rule, resolve_rule, rule_name, scale_factor, validate_rule
from lightning_lrbs.sde import plan_time_constants
from lightning_lrbs.summary import describe_scaling, optimizer_names, scaling_warnings
from lightning_lrbs.warmup import LinearWarmup, check_start_factor, check_warmup_steps, default_start_factor

__all__ = ["ScalingResult", "scale_for_batch"]


@dataclass(frozen=True)
class ScalingResult:
    r"""What :func:`scale_for_batch` did.

    Attributes:
        effective_batch_size: :math:`B_\text{eff}`, samples per optimizer step over all ranks.
        base_batch_size: :math:`B_\text{base}`, the batch size the LRs were tuned for.
        scale_factors: The LR factor applied to each optimizer, in order.
        rules: The rule each optimizer was scaled with (``"auto"`` resolved to ``"linear"`` or ``"sqrt"``).
        warmup: The running :class:`~lightning_lrbs.warmup.LinearWarmup`, or ``None`` without warmup.
        summary: One line with the numbers, for a log.
        hyperparameters: The betas, eps, weight decays and EMA decays changed (:mod:`lightning_lrbs.sde`), as now in
            force, e.g. ``{"lrbs/beta1-Adam": 0.81}``: for a logger's ``log_hyperparams``.
        noise: With ``rule="adascale"``: the :class:`~lightning_lrbs.noise.GradientNoiseScale` to feed every step
            (``noise.micro_batch(b, loss_scale=1 / A)`` before each backward, ``noise.step()`` before
            ``optimizer.step()``; for adaptive optimizers only once ``adascale.preconditioner_ready(optimizer)``).
        adascale: With ``rule="adascale"``: the :class:`~lightning_lrbs.adascale.AdaScaleLR` applying the gain.
    """

    effective_batch_size: int
    base_batch_size: int
    scale_factors: tuple[float, ...]
    rules: tuple[str, ...]
    warmup: LinearWarmup | None
    summary: str
    hyperparameters: dict[str, float] = field(default_factory=dict)
    noise: GradientNoiseScale | None = None
    adascale: AdaScaleLR | None = None

    @property
    def scale_factor(self) -> float | tuple[float, ...]:
        """The LR factor; a tuple (one per optimizer) only when ``rule="auto"`` gave them different ones; with
        ``rule="adascale"`` the gain factor the next step applies."""
        if self.adascale is not None:
            return self.adascale.factor
        if all(f == self.scale_factors[0] for f in self.scale_factors):
            return self.scale_factors[0]
        return self.scale_factors


def _inner(optimizer: Any) -> Any:
    """The torch optimizer behind a Fabric (``fabric.setup``) or Lightning wrapper, or ``optimizer`` itself."""
    for attribute in ("optimizer", "_optimizer"):
        inner = getattr(optimizer, attribute, None)
        if isinstance(inner, Optimizer):
            return inner
    return optimizer


def _unwrap(optimizer: object) -> Optimizer:
    inner = _inner(optimizer)
    if not isinstance(inner, Optimizer):
        raise TypeError(f"`optimizers` must hold torch.optim.Optimizer instances, got {type(optimizer).__name__}")
    return inner


def _scheduler_owners(optimizers: list[Optimizer], schedulers: list[Any]) -> list[Optimizer]:
    """For each optimizer, the object its schedulers were built on: the optimizer, or the wrapper ``fabric.setup``
    returned (which shares its param groups). :func:`~lightning_lrbs.rescale.rescale_` matches schedulers to
    optimizers by identity, so it must be handed that object."""
    owners: dict[int, list[Any]] = {id(o): [] for o in optimizers}
    for scheduler in schedulers:
        owner = getattr(scheduler, "optimizer", None)
        objects = owners.get(id(_inner(owner)))
        if objects is not None and all(owner is not o for o in objects):
            objects.append(owner)
    chosen = []
    for optimizer in optimizers:
        objects = owners[id(optimizer)]
        if len(objects) > 1:
            raise ValueError(
                f"the schedulers of {type(optimizer).__name__} were built on both the optimizer and the wrapper "
                "`fabric.setup` returned for it: build them all on one of the two"
            )
        chosen.append(objects[0] if objects else optimizer)
    return chosen


def scale_for_batch(
    optimizers: Optimizer | Sequence[Optimizer],
    schedulers: Any = (),
    *,
    per_device_batch_size: int | Sequence[int],
    world_size: int = 1,
    accumulation: int = 1,
    base_batch_size: int | None = None,
    rule: Rule = "linear",
    warmup_steps: int = 0,
    warmup_start_factor: float | None = None,
    averaged_models: Sequence[Any] = (),
    scale_weight_decay: bool = True,
    scale_ema: bool = True,
    noise_smoothing: float = 0.95,
) -> ScalingResult:
    r"""Scale the learning rates of ``optimizers`` and ``schedulers`` to the effective batch size, in place.

    .. math::

        B_\text{eff} = b \times \text{world size} \times A, \qquad
        \eta \leftarrow f\,\eta \quad\text{with}\quad f = \text{rule}\!\left(\frac{B_\text{eff}}{B_\text{base}}\right)

    Every stored copy of the LR is scaled (see :func:`~lightning_lrbs.rescale.rescale_`), so each scheduler behaves
    exactly as if it had been built at :math:`f\times` the LRs. Call it once, on freshly built optimizers and
    schedulers, and before loading a checkpoint: a checkpoint holds already-scaled LRs, which loading puts back. To
    resume on another world size, rescale by ``new / old`` factor with :func:`~lightning_lrbs.rescale.rescale_`.

    Args:
        optimizers: One optimizer or a sequence of them; the wrappers ``fabric.setup`` returns are accepted.
        schedulers: One scheduler or an iterable of them, built on those optimizers or their ``fabric.setup``
            wrappers (``ReduceLROnPlateau``, ``SequentialLR`` and ``ChainedScheduler`` included).
        per_device_batch_size: The batch size :math:`b` each rank feeds per forward pass, or one size per rank.
        world_size: Number of ranks (``fabric.world_size``) when ``per_device_batch_size`` is a single int.
        accumulation: Gradient-accumulation steps :math:`A` (forward passes per optimizer step).
        base_batch_size: The batch size the LRs were tuned for. ``None`` means the per-device batch size (of the
            first rank), so the factor comes from world size × accumulation alone.
        rule: ``"linear"`` (:math:`f = r`, Goyal et al. 2017), ``"sqrt"`` (:math:`f = \sqrt r`, Malladi et al.
            2022 for adaptive optimizers), ``"auto"`` (``sqrt`` for adaptive optimizers, ``linear`` otherwise),
            ``"none"``, or a callable ``f(r) -> float``; see :mod:`lightning_lrbs.rules`.
        warmup_steps: Linear warmup length :math:`W` in optimizer steps (``0``: none). The warmup counts the steps
            each optimizer takes; save and restore it with ``result.warmup.state_dict()`` / ``load_state_dict``.
        warmup_start_factor: Multiplier :math:`s` on the scheduled LR at the first step, in [0, 1]. ``None`` starts
            from the unscaled LR, :math:`s = 1/f` (Goyal et al.), or from 0 when :math:`f \le 1`. The LR at
            optimizer step :math:`t` is the scheduled LR times :math:`s + (1 - s)\min(1, t / W)`.
            With ``rule="adascale"``, ``None`` means :math:`s = 1/S` with :math:`S = B_\text{eff}/B_\text{base}`.
        averaged_models: ``torch.optim.swa_utils.AveragedModel`` instances whose EMA decay :math:`\rho` becomes
            :math:`\rho^\kappa` (``get_ema_avg_fn`` / ``get_ema_multi_avg_fn``; others are left alone).
        scale_weight_decay: Multiply decoupled weight decay by :math:`\kappa / f` (every rule but ``"none"``).
        scale_ema: Scale the EMA decay of ``averaged_models`` (every rule but ``"none"``).
        noise_smoothing: With ``rule="adascale"``: :math:`\beta` of the noise statistics' moving averages.

    Under ``rule="sde"`` the Adam family's betas and eps and RMSprop's alpha and eps follow :math:`\kappa` too
    (:mod:`lightning_lrbs.sde`); the summary lists every change.

    With ``rule="adascale"`` the LRs are not rescaled up front: step :math:`t` uses the scheduled LR times the warmup
    times the AdaScale gain :math:`r_t` of the noise measured at steps :math:`0 \dots t-1` (:math:`r_t^{1/2}` for
    adaptive optimizers; see :mod:`lightning_lrbs.adascale`), exactly as :class:`~lightning_lrbs.BatchScalingCallback`
    does. Feed ``result.noise`` every step (see :class:`ScalingResult`); to resume, save ``result.noise.state_dict()``
    and ``result.adascale.state_dict()``, and load them in that order. For AdaScale's scale-invariant iterations
    (``BatchScalingCallback(scale_invariant=True)``), step the schedulers through a
    :class:`~lightning_lrbs.adascale.ScaleInvariantSchedule` instead of ``scheduler.step()`` and train until it is
    done, e.g. for ``planned`` optimizer steps at :math:`S = B_\text{eff}/B_\text{base}`::

        invariant = ScaleInvariantSchedule([scheduler], periods=[S], total=planned * S)
        while not invariant.done(result.adascale.progress):
            ...  # one optimizer step, the noise fed as above
            invariant.advance(result.adascale.progress)

    Returns:
        A :class:`ScalingResult` with the effective batch size, the factors, the warmup and a summary line.

    Raises:
        ValueError: If a size is not a positive int, ``per_device_batch_size`` lists a number of ranks other than
            ``world_size``, the rule is unknown or returns a non-finite or non-positive factor, a warmup argument is
            out of range, or a scheduler belongs to an optimizer that is not given (or one optimizer's schedulers
            were built on both it and its ``fabric.setup`` wrapper). Nothing is changed then.
        TypeError: If ``optimizers`` holds something that is not an optimizer.

    Warns:
        RuntimeWarning: Exactly when :class:`~lightning_lrbs.BatchScalingCallback` warns: the linear rule scales an
            adaptive optimizer, or the factor is 1 under a rule other than ``"none"``
            (:func:`~lightning_lrbs.summary.scaling_warnings`).

    Example::

        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> optimizer = torch.optim.SGD([w], lr=0.1)
        >>> scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100, eta_min=0.001)
        >>> result = scale_for_batch(
        ...     optimizer, scheduler, per_device_batch_size=32, world_size=8, base_batch_size=64, warmup_steps=10
        ... )
        >>> result.effective_batch_size, result.scale_factor, scheduler.base_lrs, scheduler.eta_min
        (256, 4.0, [0.4], 0.004)
        >>> print(result.summary)
        effective batch 256 = 32 per device × 8 devices; base 64; rule linear → LR ×4: SGD 0.1 → 0.4; warmup 10 steps from ×0.25
        >>> result.warmup.factor(0), result.warmup.factor(0, step=5), result.warmup.factor(0, step=10)
        (0.25, 0.625, 1.0)
        >>> result.warmup.remove()
    """  # noqa: E501
    # Everything that can fail is checked first, so a bad argument leaves the optimizers as they were.
    per_device_sizes: list[int] | None = None
    if isinstance(per_device_batch_size, Sequence) and not isinstance(per_device_batch_size, (str, bytes)):
        per_device_sizes = [check_positive_int(b, "per_device_batch_size") for b in per_device_batch_size]
        if not per_device_sizes:
            raise ValueError("`per_device_batch_size` must not be empty")
        check_positive_int(world_size, "world_size")
        if world_size not in (1, len(per_device_sizes)):
            raise ValueError(
                f"`per_device_batch_size` lists {len(per_device_sizes)} ranks but `world_size` is {world_size}"
            )
        first = per_device_sizes[0]
        effective = effective_batch_size(per_device_sizes, accumulation)
    else:
        first = check_positive_int(per_device_batch_size, "per_device_batch_size")
        effective = effective_batch_size(first, accumulation, world_size)
    base = first if base_batch_size is None else check_positive_int(base_batch_size, "base_batch_size")
    validate_rule(rule)
    smoothing = check_smoothing(noise_smoothing, "noise_smoothing")
    warmup_steps = check_warmup_steps(warmup_steps)
    start_factor = None if warmup_start_factor is None else check_start_factor(warmup_start_factor)

    given = [optimizers] if isinstance(optimizers, Optimizer) else list(optimizers)
    optimizer_list = [_unwrap(o) for o in given]
    if not optimizer_list:
        raise ValueError("`optimizers` must hold at least one optimizer")
    scheduler_list = flatten_schedulers([schedulers] if hasattr(schedulers, "optimizer") else schedulers)
    ratio = effective / base
    if rule == "adascale":
        ranks = world_size if per_device_sizes is None else len(per_device_sizes)
        _check_adascale(optimizer_list, ranks * accumulation)
    factors = [scale_factor(ratio, rule, o) for o in optimizer_list]
    rules = [rule_name(resolve_rule(rule, o)) for o in optimizer_list]

    owners = _scheduler_owners(optimizer_list, scheduler_list)
    plan = plan_time_constants(
        optimizer_list,
        factors,
        kappa=ratio,
        rule=rule,
        schedulers=scheduler_list,
        averaged_models=averaged_models,
        weight_decay=scale_weight_decay,
        ema=scale_ema,
    )  # checks every value before changing anything

    rescale_(owners, scheduler_list, factors)  # checks the schedulers' optimizers before changing anything
    plan.apply()
    warmup = None
    reference = [ratio if rule == "adascale" else f for f in factors]  # adascale: from the unscaled LR, s = 1/S
    starts = [start_factor if start_factor is not None else default_start_factor(f) for f in reference]
    if warmup_steps > 0:
        warmup = LinearWarmup(optimizer_list, warmup_steps, starts)
    noise = adascale = None
    if rule == "adascale":  # after the warmup: the gain's hooks nest inside the warmup's
        optimizer = optimizer_list[0]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        gns = noise = GradientNoiseScale(params, smoothing=smoothing, transform=preconditioner(optimizer))
        adascale = AdaScaleLR(optimizer, lambda: (gns.grad_sq_norm, gns.grad_var), base, effective)
    summary = describe_scaling(
        effective,
        per_device_sizes or [first],
        accumulation,
        base,
        rule,
        optimizer_list,
        factors,
        devices=world_size if per_device_sizes is None else len(per_device_sizes),
        warmup_steps=warmup_steps,
        start_factors=starts,
        details=[plan.describe(i) for i in range(len(optimizer_list))],
        tail=plan.describe_ema(),
    )
    for message in scaling_warnings(rule, optimizer_list, factors, effective, base, "scale_for_batch"):
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    hparams = plan.hyperparameters([[f"lrbs/{g}" for g in n.groups] for n in optimizer_names(optimizer_list)])
    if adascale is not None:
        summary += f"; × AdaScale gain in [1, {ratio:.4g}]"
    return ScalingResult(
        effective,
        base,
        tuple(factors),
        tuple(rules),
        warmup,
        summary,
        hyperparameters=hparams,
        noise=noise,
        adascale=adascale,
    )


def _check_adascale(optimizers: list[Optimizer], micro_batches: int) -> None:
    """Refuse what ``rule="adascale"`` cannot do: several optimizers, refused ones, a single micro-batch per step."""
    if len(optimizers) != 1:
        raise ValueError(
            f"rule='adascale' scales one optimizer (one gain from all measured gradients), got {len(optimizers)}"
        )
    check_adascale_optimizer(optimizers[0])
    if micro_batches < 2:
        raise ValueError(
            "rule='adascale' needs the gradient noise of every optimizer step, measured from two or more micro-batch "
            "gradients per step, and this loop has one rank without gradient accumulation: pass `accumulation>=2` "
            "or `world_size>=2`"
        )
