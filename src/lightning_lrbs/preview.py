r"""See the learning rate of every param group at every optimizer step before training.

:func:`preview_schedule` replays what a fit with :class:`~lightning_lrbs.BatchScalingCallback` does to the learning
rates, without a forward or backward pass: it scales deep copies of the optimizers and schedulers to the effective
batch (:func:`~lightning_lrbs.rules.scale_factor`, :func:`~lightning_lrbs.rescale.rescale_`), then walks Lightning's
automatic-optimization loop batch by batch and records, at every optimizer step :math:`t`,

.. math::

    \text{scheduled}_g(t) = \texttt{param\_group["lr"]}, \qquad
    \text{applied}_g(t) = \text{scheduled}_g(t)\; w(t), \qquad w(t) = s + (1 - s)\min\!\left(1, \frac{t}{W}\right)

(:func:`~lightning_lrbs.warmup.warmup_factor`; groups with ``"lrbs_scale": False`` keep :math:`w = 1`). The loop is
Lightning's (``lightning/pytorch/loops/training_epoch_loop.py``, 2.6): with :math:`N` batches per epoch and
accumulation :math:`A`, the optimizer steps after batch :math:`i` (0-based in the epoch) when :math:`(i + 1)
\bmod A = 0` or :math:`i` is the epoch's last batch; then every ``interval="step"`` scheduler steps when
:math:`(i + 1) \bmod \text{frequency} = 0`; after the epoch's last batch every ``interval="epoch"`` scheduler steps
when :math:`(\text{epoch} + 1) \bmod \text{frequency} = 0`; the fit stops after ``max_epochs`` or at ``max_steps``.

This module imports no Lightning; only :func:`preview`, which reads a ``LightningModule``'s ``configure_optimizers``,
does (lazily). ``python -m lightning_lrbs preview --help`` runs it from the command line.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.optim import Optimizer

from lightning_lrbs.batch import check_positive_int, effective_batch_size
from lightning_lrbs.batch_ramp import BatchRamp, aligned
from lightning_lrbs.rescale import rescale_, scalable_groups
from lightning_lrbs.rules import Rule, scale_factor, validate_rule
from lightning_lrbs.summary import describe_scaling, optimizer_names
from lightning_lrbs.warmup import check_start_factor, check_warmup_steps, default_start_factor, warmup_factor

__all__ = ["SchedulePreview", "SchedulerSpec", "preview", "preview_schedule"]


@dataclass(frozen=True)
class SchedulerSpec:
    """A scheduler as the loop steps it: Lightning's ``lr_scheduler`` config, without Lightning.

    Attributes:
        scheduler: The scheduler, built on one of the optimizers given with it.
        interval: ``"step"`` (after optimizer steps) or ``"epoch"`` (after the epoch's last batch).
        frequency: Step it every ``frequency`` batches (``"step"``) or epochs (``"epoch"``).
        name: The config's ``name``, which names its optimizer (as in ``LearningRateMonitor``).
        reduce_on_plateau: Whether it steps on a metric (``ReduceLROnPlateau``): the preview holds its LR.
    """

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    name: str | None = None
    reduce_on_plateau: bool = False


@dataclass(frozen=True)
class SchedulePreview:
    """The learning rates a fit will use, per param group and optimizer step.

    Attributes:
        summary: The line :class:`~lightning_lrbs.BatchScalingCallback` logs when training starts.
        effective_batch_size: :math:`B_\\text{eff}` at the first step.
        scale_factors: The LR factor of each optimizer at the first step.
        warmup_steps: The warmup length :math:`W` in optimizer steps.
        steps: The optimizer steps :math:`t = 0, 1, \\dots`.
        scheduled: For each param group, by ``LearningRateMonitor``'s name (``lr-SGD``, ``lr-SGD/pg2``), the LR in
            ``param_group["lr"]`` at each step: what ``LearningRateMonitor`` logs.
        applied: The same with the warmup applied: the LR each optimizer step uses (``lrbs/lr-...``).
        notes: What the preview could not follow (a ``ReduceLROnPlateau`` held constant).
        effective_batch_sizes: The effective batch of each optimizer step (it grows under a ``batch_ramp``).
    """

    summary: str
    effective_batch_size: int
    scale_factors: tuple[float, ...]
    warmup_steps: int
    steps: list[int]
    scheduled: dict[str, list[float]]
    applied: dict[str, list[float]]
    notes: list[str] = field(default_factory=list)
    effective_batch_sizes: list[int] = field(default_factory=list)

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Write a PNG: applied LR (solid) and scheduled LR (dashed) against optimizer steps, one colour per group.

        Needs ``matplotlib``. Returns the path written.
        """
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for index, name in enumerate(self.scheduled):
            color = f"C{index % 10}"
            ax.plot(self.steps, self.applied[name], color=color, label=f"{name} applied")
            ax.plot(self.steps, self.scheduled[name], color=color, linestyle="--", alpha=0.6, label=f"{name} scheduled")
        if self.warmup_steps:
            ax.axvline(self.warmup_steps, color="grey", linewidth=0.8, linestyle=":", label="end of warmup")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("learning rate")
        ax.set_title(title or f"effective batch {self.effective_batch_size}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out)
        plt.close(fig)
        return out


def _check_lengths(batches_per_epoch: object, max_epochs: object, max_steps: object) -> tuple[int, int | None, int]:
    batches = check_positive_int(batches_per_epoch, "batches_per_epoch")
    epochs = None if max_epochs is None else check_positive_int(max_epochs, "max_epochs")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or (max_steps < 1 and max_steps != -1):
        raise ValueError(f"`max_steps` must be a positive int or -1 (no limit), got {max_steps!r}")
    if epochs is None and max_steps == -1:
        raise ValueError("give `max_epochs` or `max_steps` (or both): the preview needs to know where the fit stops")
    return batches, epochs, max_steps


def preview_schedule(
    optimizers: Optimizer | Sequence[Optimizer],
    schedulers: Sequence[SchedulerSpec | Any] = (),
    *,
    batches_per_epoch: int,
    max_epochs: int | None = None,
    max_steps: int = -1,
    per_device_batch_size: int,
    devices: int = 1,
    nodes: int = 1,
    accumulation: int = 1,
    base_batch_size: int | None = None,
    rule: Rule = "linear",
    warmup_steps: int = 0,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float | None = None,
    step_scheduler: Callable[[Any], None] | None = None,
    names: Sequence[str] | None = None,
    batch_ramp: tuple[int, int, int] | None = None,
) -> SchedulePreview:
    r"""The LR every param group will use at every optimizer step of a fit with ``BatchScalingCallback``.

    Works on deep copies (the parameters are shared, never stepped): ``optimizers`` and ``schedulers`` are left
    exactly as they were. See the module docstring for the loop it replays.

    Args:
        optimizers: The optimizers as built for the base batch (every one steps at each optimizer step).
        schedulers: :class:`SchedulerSpec` objects, or bare schedulers (``interval="epoch"``, as in Lightning).
        batches_per_epoch: :math:`N`, the batches each device runs per epoch (``trainer.num_training_batches``).
        max_epochs: Epochs to run; ``None`` with ``max_steps``.
        max_steps: Optimizer steps to stop at, or ``-1``.
        per_device_batch_size: The batch size each device feeds.
        devices: Devices per node. nodes: Nodes. accumulation: ``accumulate_grad_batches`` :math:`A`.
        base_batch_size: As in :class:`~lightning_lrbs.BatchScalingCallback` (``None``: the per-device batch).
        rule: As in :class:`~lightning_lrbs.BatchScalingCallback`.
        warmup_steps: Warmup length in optimizer steps.
        warmup_epochs: Warmup length in epochs: :math:`W = \lceil \text{epochs} \times \lceil N / A \rceil \rceil`.
        warmup_start_factor: As in :class:`~lightning_lrbs.BatchScalingCallback`.
        step_scheduler: Steps one scheduler (default ``scheduler.step()``); :func:`preview` passes the module's
            ``lr_scheduler_step``.
        names: The name of each optimizer in the summary; default ``LearningRateMonitor``'s.
        batch_ramp: As in :class:`~lightning_lrbs.BatchScalingCallback`: the accumulation grows from
            ``start / (per-device batch × devices × nodes)`` to ``accumulation`` where the windows align, the LR
            follows each change, per-step schedulers (``frequency=1``), the warmup and ``max_steps`` count steps at the
            target batch from the samples (:mod:`lightning_lrbs.batch_ramp`).

    Returns:
        A :class:`SchedulePreview`.

    Raises:
        ValueError: If an argument is invalid (named in the message), or for ``rule="adascale"``, whose factor is
            measured while training, or a ``batch_ramp`` whose batches are not whole numbers of micro-batch rounds.

    Example::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> sched = SchedulerSpec(torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), interval="step")
        >>> p = preview_schedule(opt, [sched], batches_per_epoch=4, max_epochs=1, per_device_batch_size=32,
        ...                      devices=4, base_batch_size=64, warmup_steps=2)
        >>> p.summary
        'effective batch 128 = 32 per device × 4 devices; base 64; rule linear → LR ×2: SGD 0.1 → 0.2; warmup 2 steps from ×0.5'
        >>> p.scheduled["lr-SGD"], p.applied["lr-SGD"], opt.param_groups[0]["lr"]
        ([0.2, 0.2, 0.1, 0.1], [0.1, 0.15000000000000002, 0.1, 0.1], 0.1)
    """  # noqa: E501
    batches, epochs, max_steps = _check_lengths(batches_per_epoch, max_epochs, max_steps)
    per_device = check_positive_int(per_device_batch_size, "per_device_batch_size")
    check_positive_int(devices, "devices")
    check_positive_int(nodes, "nodes")
    check_positive_int(accumulation, "accumulation")
    base = per_device if base_batch_size is None else check_positive_int(base_batch_size, "base_batch_size")
    validate_rule(rule)
    if rule == "adascale":
        raise ValueError(
            "rule='adascale' cannot be previewed: its factor, the AdaScale gain in [1, S], is measured from the "
            "gradients while training. Preview rule='linear' for its upper bound, or rule='none' for its lower one"
        )
    check_warmup_steps(warmup_steps)
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, (int, float)) or not warmup_epochs >= 0:
        raise ValueError(f"`warmup_epochs` must be a non-negative finite number, got {warmup_epochs!r}")
    if not math.isfinite(warmup_epochs):
        raise ValueError(f"`warmup_epochs` must be a non-negative finite number, got {warmup_epochs!r}")
    if warmup_steps and warmup_epochs:
        raise ValueError(
            f"give either `warmup_steps` or `warmup_epochs`, not both: got warmup_steps={warmup_steps!r} "
            f"and warmup_epochs={warmup_epochs!r}"
        )
    start = None if warmup_start_factor is None else check_start_factor(warmup_start_factor)
    given = [optimizers] if isinstance(optimizers, Optimizer) else list(optimizers)
    if not given:
        raise ValueError("`optimizers` must hold at least one optimizer")
    specs = [s if isinstance(s, SchedulerSpec) else SchedulerSpec(s) for s in schedulers]
    for spec in specs:
        if spec.interval not in ("step", "epoch"):
            raise ValueError(f"a scheduler's `interval` must be 'step' or 'epoch', got {spec.interval!r}")
        check_positive_int(spec.frequency, "frequency")

    # Deep copies that share the parameters: nothing here steps an optimizer, so the parameters are never touched.
    memo: dict[int, Any] = {id(p): p for o in given for group in o.param_groups for p in group["params"]}
    opts, specs = copy.deepcopy((given, specs), memo)
    round_size, ramp = per_device * devices * nodes, None if batch_ramp is None else BatchRamp.from_argument(batch_ramp)
    target = round_size * accumulation
    now = accumulation  # the accumulation in force
    if ramp is not None:
        ramp.check(target, round_size)
        if any(spec.interval == "step" and spec.frequency != 1 for spec in specs):
            raise ValueError(
                "`batch_ramp` steps each per-step scheduler once per target batch of samples: `frequency=1`"
            )
        now = ramp.accumulation(0, target, round_size)
    effective = effective_batch_size(per_device, now, devices * nodes)
    factors = [scale_factor(effective / base, rule, o) for o in opts]
    rescale_(opts, [s.scheduler for s in specs], factors)
    per_epoch = math.ceil(batches / accumulation)
    length = warmup_steps if not warmup_epochs else int(math.ceil(warmup_epochs * per_epoch - 1e-9))
    starts = [start if start is not None else default_start_factor(f) for f in factors]

    found = optimizer_names(opts, [(s.scheduler.optimizer, s.name) for s in specs])
    group_names = [n.groups for n in found]
    summary = describe_scaling(
        effective,
        [per_device],
        now,
        base,
        rule,
        opts,
        factors,
        devices=devices,
        nodes=nodes,
        warmup_steps=length,
        start_factors=starts,
        names=list(names) if names is not None else [n.label for n in found],
    )
    if ramp is not None:
        summary += f"; {ramp.describe(target)}"
    notes = [
        f"{type(s.scheduler).__name__} steps on a metric the preview does not have: its LR is held constant"
        for s in specs
        if s.reduce_on_plateau
    ]
    masks = [scalable_groups(o) for o in opts]
    scheduled: dict[str, list[float]] = {name: [] for names_ in group_names for name in names_}
    applied: dict[str, list[float]] = {name: [] for name in scheduled}
    step_one = step_scheduler or (lambda scheduler: scheduler.step())

    def step_schedulers(interval: str, index: int) -> None:
        for spec in specs:
            if spec.interval == interval and not spec.reduce_on_plateau and index % spec.frequency == 0:
                step_one(spec.scheduler)

    first_factors = tuple(factors)  # at the first step (a ramp changes them later)
    step = 0
    epoch = 0
    consumed, window, stepped = 0, 0, 0  # under a batch ramp: samples of the finished steps, of this window; steps
    sizes: list[int] = []

    def follow(batches_done: int) -> None:  # the accumulation the ramp asks for, where the window aligns
        nonlocal now, factors
        assert ramp is not None
        wanted = ramp.accumulation(consumed, target, round_size)
        if wanted != now and aligned(batches_done, wanted):
            new = [scale_factor(round_size * wanted / base, rule, o) for o in opts]
            rescale_(opts, [spec.scheduler for spec in specs], [f / old for f, old in zip(new, factors)])
            now, factors = wanted, new

    def done() -> bool:
        if max_steps == -1:
            return False
        return consumed >= max_steps * target if ramp is not None else step >= max_steps

    with warnings.catch_warnings():
        # the copies are never stepped: torch's "lr_scheduler.step() before optimizer.step()" does not apply
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        warnings.filterwarnings("ignore", message=r"Seems like `optimizer.step\(\)` has been overridden")
        while (epochs is None or epoch < epochs) and not done():
            for batch in range(batches):
                if ramp is not None and batch == 0:
                    follow(0)
                last = batch + 1 == batches
                window += round_size
                if (batch + 1) % now == 0 or last:
                    t = step if ramp is None else consumed / target
                    for index, optimizer in enumerate(opts):
                        w = warmup_factor(t, length, starts[index])
                        for group, active, name in zip(optimizer.param_groups, masks[index], group_names[index]):
                            lr = float(group["lr"])
                            scheduled[name].append(lr)
                            applied[name].append(lr * w if active else lr)
                    sizes.append(round_size * now)
                    step += 1
                    if ramp is None:
                        step_schedulers("step", batch + 1)
                    else:  # per-step schedulers by samples: one step per target batch
                        consumed, window = consumed + window, 0
                        owed = math.floor(consumed / target + 1e-9) - stepped
                        for _ in range(owed):
                            step_schedulers("step", 0)
                        stepped += owed
                        follow(batch + 1)
                if last:
                    step_schedulers("epoch", epoch + 1)
                if done():
                    break
            epoch += 1
    return SchedulePreview(
        summary, effective, first_factors, length, list(range(step)), scheduled, applied, notes, sizes
    )


def preview(
    module: Any,
    *,
    batches_per_epoch: int,
    max_epochs: int | None = None,
    max_steps: int = -1,
    per_device_batch_size: int,
    devices: int = 1,
    nodes: int = 1,
    accumulation: int = 1,
    base_batch_size: int | None = None,
    rule: Rule = "linear",
    warmup_steps: int = 0,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float | None = None,
    batch_ramp: tuple[int, int, int] | None = None,
) -> SchedulePreview:
    """Preview a ``LightningModule``'s learning rates under ``BatchScalingCallback``, without training.

    Calls ``configure_optimizers`` on a deep copy of ``module`` (sharing its parameters, which nothing steps), reads
    the result as Lightning does (``interval``, ``frequency``, ``name``; a scheduler's default interval is
    ``"epoch"``), and replays the fit with :func:`preview_schedule`, stepping schedulers through the module's
    ``lr_scheduler_step``. The module itself is not changed. The arguments are those of :func:`preview_schedule`:
    the Trainer's ``devices``, ``num_nodes``, ``accumulate_grad_batches``, ``max_epochs``, ``max_steps``, the batches
    each device runs per epoch, the loader's batch size, and the callback's arguments.

    Raises:
        ValueError: If the module uses manual optimization (its ``training_step`` decides when optimizers and
            schedulers step, which only a fit can tell), its ``configure_optimizers`` returns no optimizer or
            several (Lightning allows several only under manual optimization) or needs a Trainer
            (e.g. ``self.trainer.estimated_stepping_batches``), or an argument is invalid.

    Example::

        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> p = preview(BoringModel(), batches_per_epoch=8, max_epochs=2, per_device_batch_size=2, devices=4)
        >>> p.summary, p.scheduled["lr-SGD"][:2], len(p.steps)
        ('effective batch 8 = 2 per device × 4 devices; base 2; rule linear → LR ×4: SGD 0.1 → 0.4', [0.4, 0.4], 16)
    """
    from lightning.pytorch.core.optimizer import _configure_optimizers, _configure_schedulers_automatic_opt

    if not module.automatic_optimization:
        raise ValueError(
            f"{type(module).__name__} uses manual optimization: its `training_step` decides when the optimizers and "
            "schedulers step, so only a fit can tell the schedule; the preview follows automatic optimization"
        )
    memo: dict[int, Any] = {id(p): p for p in module.parameters()}
    for attribute in ("_trainer", "_fabric"):
        attached = getattr(module, attribute, None)
        if attached is not None:
            memo[id(attached)] = None
    twin = copy.deepcopy(module, memo)
    try:
        conf = twin.configure_optimizers()
    except RuntimeError as error:
        if "not attached to a `Trainer`" not in str(error):
            raise
        raise ValueError(
            f"`configure_optimizers` of {type(module).__name__} needs a Trainer ({error}); the preview runs without "
            "one: pass the numbers it reads (e.g. the total steps) to the module instead"
        ) from error
    if conf is None:
        raise ValueError(f"`configure_optimizers` of {type(module).__name__} returned no optimizer: nothing to preview")
    optimizers, schedulers, monitor = _configure_optimizers(conf)
    if len(optimizers) > 1:
        raise ValueError(
            f"`configure_optimizers` of {type(module).__name__} returned {len(optimizers)} optimizers: Lightning steps "
            "several optimizers only under manual optimization, which the preview cannot follow"
        )
    configs = _configure_schedulers_automatic_opt(schedulers, monitor)
    specs = [SchedulerSpec(c.scheduler, c.interval, c.frequency, c.name, c.reduce_on_plateau) for c in configs]
    return preview_schedule(
        optimizers,
        specs,
        batches_per_epoch=batches_per_epoch,
        max_epochs=max_epochs,
        max_steps=max_steps,
        per_device_batch_size=per_device_batch_size,
        devices=devices,
        nodes=nodes,
        accumulation=accumulation,
        base_batch_size=base_batch_size,
        rule=rule,
        warmup_steps=warmup_steps,
        warmup_epochs=warmup_epochs,
        warmup_start_factor=warmup_start_factor,
        step_scheduler=lambda scheduler: twin.lr_scheduler_step(scheduler, None),
        batch_ramp=batch_ramp,
    )
