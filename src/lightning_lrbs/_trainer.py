"""What :class:`~lightning_lrbs.BatchScalingCallback` reads from, checks on and writes to a Lightning Trainer.

Plain functions that need none of the callback's state: the per-device batch size (train loaders, ``CombinedLoader``,
first batch), the accumulation now, every rank's batch size, LR-finder suggestions, ``StochasticWeightAveraging``'s
``swa_lrs``, logging to the Trainer's loggers, the refusals of ``on_fit_start`` and the noise-scale report lines.

This module imports no Lightning: the functions that need a Lightning class take the namespace as ``pl``
(``lightning.pytorch``, or ``pytorch_lightning`` in :mod:`lightning_lrbs.pytorch_lightning`), so the callback of either
namespace reads its own Trainer's classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import torch
from torch.optim import Optimizer

from lightning_lrbs.adascale import check_adascale_optimizer, preconditioner
from lightning_lrbs.batch import loader_batch_size
from lightning_lrbs.noise import GradientNoiseScale, describe_noise_scale
from lightning_lrbs.rescale import check_numeric_lrs, scalable_groups
from lightning_lrbs.rules import Rule
from lightning_lrbs.sde import TimeConstantPlan
from lightning_lrbs.summary import describe_scaling, lr_monitor_names, optimizer_names, scaling_hparams
from lightning_lrbs.warmup import steps_per_epoch

__all__: list[str] = []

#: An optimizer step pre-hook, as ``Optimizer.register_step_pre_hook`` takes it.
StepPreHook = Callable[[Optimizer, Any, Any], None]


# ---------------------------------------------------------------------- batch size and accumulation
def accumulation_now(pl: ModuleType, trainer: Any, override: int | None = None) -> int:
    """Accumulation for the current epoch: ``override`` (manual accumulation) if given, else read from a
    ``GradientAccumulationScheduler`` directly, so that the result does not depend on whether it ran its
    ``on_train_epoch_start`` before the caller, else ``trainer.accumulate_grad_batches``."""
    if override is not None:
        return override
    for callback in trainer.callbacks:
        if isinstance(callback, pl.callbacks.GradientAccumulationScheduler):
            return int(callback.get_accumulate_grad_batches(trainer.current_epoch))
    return int(trainer.accumulate_grad_batches)


def micro_batches(trainer: Any, accumulation: int) -> int:
    """Micro-batch gradients per optimizer step: world size × accumulation (the noise scale needs 2 or more)."""
    return int(trainer.world_size * accumulation)


def local_batch_size(pl: ModuleType, trainer: Any, batch: Any, override: int | None = None) -> int | None:
    """This rank's per-step batch size: ``override``, the train loaders' sizes (summed), or the batch's (``None``:
    not found, or only a batch tells and none is given)."""
    if override is not None:
        return override
    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    if getattr(combined, "_mode", None) == "sequential":
        return None if batch is None else batch_len(pl, batch)
    return tree_batch_size(pl, trainer.train_dataloader, batch)


def tree_batch_size(pl: ModuleType, loaders: Any, batch: Any) -> int | None:
    """The summed batch size of a loader, a ``CombinedLoader`` or a mapping or sequence of them, reading the matching
    part of ``batch`` for a loader that does not expose its batch size."""
    if isinstance(loaders, pl.utilities.combined_loader.CombinedLoader):
        return tree_batch_size(pl, loaders.iterables, batch)
    if isinstance(loaders, Mapping):
        sizes = [tree_batch_size(pl, v, None if batch is None else batch[k]) for k, v in loaders.items()]
    elif isinstance(loaders, Sequence) and not isinstance(loaders, (str, bytes)):
        parts: list[Any] = list(batch) if isinstance(batch, (list, tuple)) else [None] * len(loaders)
        if len(parts) != len(loaders):
            parts = [None] * len(loaders)
        sizes = [tree_batch_size(pl, v, b) for v, b in zip(loaders, parts)]
    else:
        size = loader_batch_size(loaders)
        if size is None and batch is not None:
            size = batch_len(pl, batch)
        return size
    if not sizes or any(s is None for s in sizes):
        return None
    return sum(s for s in sizes if s is not None)


def batch_len(pl: ModuleType, batch: Any) -> int | None:
    """The batch size Lightning's ``extract_batch_size`` finds in ``batch`` (``None`` if none, or not positive)."""
    try:
        size = int(pl.utilities.data.extract_batch_size(batch))
    except Exception:
        return None
    return size if size > 0 else None


def gather(trainer: Any, local: int) -> list[int]:
    """Every rank's batch size, in rank order, identical on all ranks."""
    tensor = torch.tensor(local, dtype=torch.long, device=trainer.strategy.root_device)
    gathered = trainer.strategy.all_gather(tensor)
    return [int(v) for v in gathered.reshape(-1).tolist()]


def first_epoch_steps(trainer: Any, warmup_epochs: float, accumulation: int) -> int:
    """Optimizer steps in an epoch, counted as ``trainer.global_step`` counts them
    (:func:`~lightning_lrbs.warmup.steps_per_epoch`); ``accumulation`` is used under automatic optimization only."""
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ValueError(
            f"`warmup_epochs={warmup_epochs}` needs a train loader with a length; use `warmup_steps=` instead"
        )
    automatic = trainer.lightning_module.automatic_optimization
    # Manual optimization: Lightning counts every optimizer's step in `global_step`; assume each steps once a batch.
    return steps_per_epoch(int(batches), accumulation if automatic else 1, 1 if automatic else len(trainer.optimizers))


def first_epoch_mismatch(
    trainer: Any, who: str, warmup_epochs: float, warmup_steps: int | None, expected: int, start: int
) -> str | None:
    """The warning when the first epoch, begun at ``global_step`` ``start`` and not stopped early, made other than the
    ``expected`` optimizer steps that ``warmup_epochs`` was converted with, else ``None``."""
    made = trainer.global_step - start
    stopped = trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step
    if made == expected or stopped:
        return None
    return (
        f"{who}: `warmup_epochs={warmup_epochs}` was converted with {expected} optimizer "
        f"steps per epoch, but the first epoch made {made} (trainer.global_step): the warmup lasts "
        f"{warmup_steps} steps, not {warmup_epochs} epoch(s). Give `warmup_steps=` instead"
    )


def loss_scaler(trainer: Any) -> Any:
    """The enabled fp16 AMP gradient scaler of the Trainer's precision plugin, else ``None``."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def micro_batch_loss_scale(trainer: Any) -> float:
    """What the gradients the hooks see are scaled by against the micro-batch's mean loss: the fp16 AMP loss scale,
    over ``accumulate_grad_batches`` (Lightning divides each micro-batch's loss by it)."""
    scaler = loss_scaler(trainer)
    amp = float(scaler.get_scale()) if scaler is not None else 1.0
    return float(amp / trainer.accumulate_grad_batches)


def step_grad_scale(trainer: Any, optimizer: Optimizer, local_micro_batches: int) -> float:
    """What ``.grad`` before ``optimizer.step`` is scaled by against the mean of this rank's micro-batch gradients:
    micro-batches / ``accumulate_grad_batches``, and the fp16 AMP loss scale for fused optimizers, which unscale
    inside ``step`` (``.grad`` is still scaled)."""
    scale = max(local_micro_batches, 1) / trainer.accumulate_grad_batches
    scaler = loss_scaler(trainer)
    if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
        scale *= float(scaler.get_scale())
    return float(scale)


def noise_estimator(trainer: Any, smoothing: float, adascale: bool) -> GradientNoiseScale:
    """A :class:`~lightning_lrbs.noise.GradientNoiseScale` over every parameter of the Trainer's optimizers, in
    Adam's preconditioned geometry under ``adascale`` (:func:`~lightning_lrbs.adascale.preconditioner`)."""
    params = [p for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]]
    transform = preconditioner(trainer.optimizers[0]) if adascale else None
    return GradientNoiseScale(params, smoothing=smoothing, transform=transform)


# ---------------------------------------------------------------------- checks when the fit starts
def check_fit(
    pl: ModuleType, trainer: Any, pl_module: Any, who: str, rule: Any, measure_noise: bool, accumulation: int | None
) -> None:
    """Refuse, before anything changes, a fit the callback named ``who`` cannot scale exactly."""
    # Lightning stands a `_MockOptimizer` without param groups in for a `configure_optimizers` returning None.
    if not any(opt.param_groups for opt in trainer.optimizers):
        raise ValueError(
            f"{who} scales optimizer learning rates, but `configure_optimizers` of "
            f"{type(pl_module).__name__} returned no optimizer"
        )
    check_numeric_lrs(trainer.optimizers)  # `lr=None` (Adafactor) or no `lr` key: nothing to scale
    if rule == "adascale":
        check_adascale(pl, trainer, pl_module, accumulation)
    if measure_noise and not pl_module.automatic_optimization:
        raise ValueError(
            f"`noise_scale=True` needs automatic optimization, but {type(pl_module).__name__} sets "
            "`automatic_optimization = False`: use `lightning_lrbs.noise.GradientNoiseScale` in `training_step`"
        )
    scheduler_cls = pl.callbacks.GradientAccumulationScheduler
    if accumulation is not None and (
        trainer.accumulate_grad_batches != 1
        or any(isinstance(c, scheduler_cls) for c in getattr(trainer, "callbacks", []))
    ):
        raise ValueError(
            f"`accumulation={accumulation}` is for accumulation by hand under manual optimization, but the "
            f"Trainer accumulates itself (accumulate_grad_batches={trainer.accumulate_grad_batches} or a "
            "GradientAccumulationScheduler): leave `accumulation` unset"
        )


def check_adascale(pl: ModuleType, trainer: Any, pl_module: Any, accumulation: int | None) -> None:
    """Refuse, before anything changes, what rule="adascale" cannot do exactly."""
    name = type(pl_module).__name__
    optimizers = list(trainer.optimizers)
    if len(optimizers) != 1:
        raise ValueError(
            f"rule='adascale' scales one optimizer (one gain from all measured gradients), but {name} has "
            f"{len(optimizers)}: use another rule"
        )
    check_adascale_optimizer(optimizers[0])
    if not pl_module.automatic_optimization:
        raise ValueError(
            f"rule='adascale' measures the gradient noise of each step and needs automatic optimization, but "
            f"{name} sets `automatic_optimization = False`: use `lightning_lrbs.adascale.AdaScaleLR` in your loop"
        )
    accumulations = [accumulation_now(pl, trainer, accumulation)]
    for callback in trainer.callbacks:
        if isinstance(callback, pl.callbacks.GradientAccumulationScheduler):
            accumulations += [callback.get_accumulate_grad_batches(e) for e in [0, *callback.scheduling]]
    if micro_batches(trainer, min(accumulations)) < 2:
        raise ValueError(
            "rule='adascale' needs the gradient noise of every optimizer step, measured from two or more "
            "micro-batch gradients per step, and this run has one device without gradient accumulation: set "
            "`accumulate_grad_batches>=2` (Trainer) or train on 2 or more devices"
        )


#: A ``frequency`` at which Lightning never steps a scheduler (``(batch_idx + 1) % frequency`` is never 0).
_NEVER = 2**62
_INVARIANT = "`scale_invariant=True` (rule='adascale')"


def check_scale_invariant(pl: ModuleType, trainer: Any, pl_module: Any) -> int:
    """Refuse, before anything changes, what ``scale_invariant=True`` cannot do exactly; return the optimizer steps
    the Trainer plans (``estimated_stepping_batches``), the work the run must match."""
    who = _INVARIANT
    for callback in trainer.callbacks:
        if isinstance(callback, pl.callbacks.StochasticWeightAveraging):
            raise ValueError(
                f"{who} lets the run go past `max_epochs` until the planned work is done, and "
                "StochasticWeightAveraging starts and anneals by epoch number: use `scale_invariant=False`"
            )
        if isinstance(callback, pl.callbacks.GradientAccumulationScheduler):
            raise ValueError(
                f"{who} counts the planned work from `estimated_stepping_batches`, which a "
                "GradientAccumulationScheduler changes while training: use `scale_invariant=False`"
            )
    for config in trainer.lr_scheduler_configs:
        if config.reduce_on_plateau:
            raise ValueError(
                f"{who} advances the schedulers by AdaScale's scale-invariant iterations, and ReduceLROnPlateau "
                "follows a metric, not a step count: use another scheduler or `scale_invariant=False`"
            )
        if config.frequency != 1:
            raise ValueError(
                f"{who} steps each scheduler once per scale-invariant step (or epoch) and supports `frequency=1`, got "
                f"frequency={config.frequency} for {type(config.scheduler).__name__}"
            )
    if trainer.lr_scheduler_configs and type(pl_module).lr_scheduler_step is not pl.LightningModule.lr_scheduler_step:
        raise ValueError(
            f"{who} steps the schedulers itself with `scheduler.step()`, but {type(pl_module).__name__} overrides "
            "`lr_scheduler_step` (timm schedulers need it, with Lightning's step or epoch count, which is not the "
            "scale-invariant one): use `scale_invariant=False`"
        )
    planned = trainer.estimated_stepping_batches
    if not math.isfinite(planned) or planned <= 0:
        raise ValueError(
            f"{who} trains until the planned work is done and needs `max_steps`, or `max_epochs` with a train loader "
            f"of known length (the Trainer plans {planned} optimizer steps)"
        )
    return int(planned)


def check_scale_invariant_start(trainer: Any, batch_size_known: bool, has_state: bool) -> None:
    """Refuse, when training starts, a ``scale_invariant=True`` fit that would count its progress wrongly."""
    who = _INVARIANT
    if trainer.global_step > 0 and not has_state:
        raise ValueError(
            f"{who} counts AdaScale's progress from the first step, and this fit starts at global step "
            f"{trainer.global_step} without it (a checkpoint written without `scale_invariant=True`, or a second `fit` "
            "of the same Trainer): resume from a checkpoint written with it, or train with a new Trainer"
        )
    if not batch_size_known:
        raise ValueError(
            f"{who} needs the per-device batch size when training starts, and the train loader does not expose it: "
            "pass `batch_size=` (the number of samples each device feeds per step)"
        )
    per_epoch = [config for config in trainer.lr_scheduler_configs if config.interval != "step"]
    if per_epoch and not math.isfinite(trainer.num_training_batches):
        raise ValueError(
            f"{who} steps a per-epoch scheduler after each epoch's worth of optimizer steps and needs a train loader "
            f"with a length ({type(per_epoch[0].scheduler).__name__} is per epoch)"
        )


def check_invariant_scale(state: dict[str, Any], scale: float) -> None:
    """Refuse to resume a ``scale_invariant=True`` fit at another :math:`S` than its checkpoint's: its schedulers'
    periods and its planned work were counted at that one."""
    saved = float(state.get("scale", scale))
    if not math.isclose(saved, scale, rel_tol=1e-12):
        raise ValueError(
            f"{_INVARIANT} counts the schedulers' steps and the planned work at the scale S = B_eff / B_base of the "
            f"run that wrote the checkpoint, S = {saved:.6g}, and this fit has S = "
            f"{scale:.6g}: resume with the same effective batch (devices × batch × accumulation), or without the flag"
        )


def stop_after_this_step(trainer: Any) -> None:
    """End the fit as ``max_steps`` would, now: after the current batch, or before the first one (``max_steps`` wins
    over ``min_epochs``/``min_steps``, as for a Trainer that reaches it; :func:`restore_limits` puts it back)."""
    trainer.fit_loop.epoch_loop.max_steps = trainer.global_step


def lift_limits(trainer: Any) -> tuple[Any, Any, list[int]]:
    """Let the run go on past ``max_epochs``/``max_steps`` (the callback stops it) and keep Lightning from stepping
    the schedulers (the callback steps them); return what :func:`restore_limits` puts back."""
    fit_loop = trainer.fit_loop
    held = (fit_loop.max_epochs, fit_loop.max_steps, [config.frequency for config in trainer.lr_scheduler_configs])
    # A `max_steps` the user set stays set (only larger): Lightning restarts a resumed fit by steps when it is not -1.
    fit_loop.max_epochs = -1
    fit_loop.epoch_loop.max_steps = -1 if fit_loop.max_steps == -1 else _NEVER
    for config in trainer.lr_scheduler_configs:
        config.frequency = _NEVER
    return held


def restore_limits(trainer: Any, held: tuple[Any, Any, list[int]]) -> None:
    """Undo :func:`lift_limits`."""
    trainer.fit_loop.max_epochs, trainer.fit_loop.epoch_loop.max_steps, frequencies = held
    for config, frequency in zip(trainer.lr_scheduler_configs, frequencies):
        config.frequency = frequency


def scheduler_periods(trainer: Any, scale: float, accumulation: int) -> list[float]:
    """Each scheduler's period in base-batch steps for :class:`~lightning_lrbs.adascale.ScaleInvariantSchedule`:
    S for ``interval="step"``, S × optimizer steps per epoch for ``interval="epoch"``."""
    periods = []
    for config in trainer.lr_scheduler_configs:
        if config.interval == "step":
            periods.append(scale)
        else:  # the loader has a length: check_scale_invariant_start
            periods.append(scale * steps_per_epoch(int(trainer.num_training_batches), accumulation, 1))
    return periods


# ---------------------------------------------------------------------- other callbacks in the Trainer
def finder_suggestion(finder: Any) -> float | None:
    """The LR a finished ``LearningRateFinder`` wrote into the module (``None`` if it did not)."""
    result = getattr(finder, "optimal_lr", None)
    if result is None or not getattr(finder, "_update_attr", True):
        return None
    lr = result.suggestion()
    return None if lr is None else float(lr)


def tuned_suggestion(pl: ModuleType, trainer: Any) -> tuple[float, int] | None:
    """``(suggestion, accumulation)`` of a ``Tuner.lr_find`` fit ending now (it ends its fit right after the finder),
    else ``None``."""
    tuned = None
    for callback in getattr(trainer, "callbacks", ()):
        if isinstance(callback, pl.callbacks.LearningRateFinder) and getattr(callback, "_early_exit", False):
            lr = finder_suggestion(callback)
            if lr is not None:
                tuned = (lr, int(trainer.accumulate_grad_batches))
    return tuned


def found_lr(
    pl: ModuleType, trainer: Any, tuned: tuple[float, int] | None, setup_accumulation: int
) -> tuple[float, int] | None:
    """``(suggestion, accumulation it was swept at)`` when an LR finder set the optimizers' LR, else ``None``.

    A ``LearningRateFinder`` in this fit (swept at ``setup_accumulation``), or a ``Tuner.lr_find`` fit before it
    (``tuned``), counts when one of the groups' ``lr`` or ``initial_lr`` equals its suggestion (``lr_find`` writes it
    into every group, or into the module's LR attribute that ``configure_optimizers`` reads).
    """
    found = tuned
    for callback in trainer.callbacks:
        if isinstance(callback, pl.callbacks.LearningRateFinder):
            lr = finder_suggestion(callback)
            if lr is not None:
                found = (lr, setup_accumulation)
    if found is None:
        return None
    for optimizer in trainer.optimizers:
        for group, active in zip(optimizer.param_groups, scalable_groups(optimizer)):
            values = [group["lr"], group.get("initial_lr", group["lr"])]
            if active and any(math.isclose(float(v), found[0], rel_tol=1e-12) for v in values):
                return found
    return None


def scale_swa(pl: ModuleType, trainer: Any, targets: Sequence[float], originals: dict[int, Any]) -> str:
    """Give each ``StochasticWeightAveraging`` its ``swa_lrs`` × the factor (SWA allows one optimizer), from the
    ``swa_lrs`` it had first (kept in ``originals`` by ``id``); the ``swa_lr`` its ``SWALR`` already put into the param
    groups is rescaled with the other LRs. Returns the text for the summary."""
    text = ""
    for callback in trainer.callbacks:
        if isinstance(callback, pl.callbacks.StochasticWeightAveraging) and targets:
            original = originals.setdefault(id(callback), callback._swa_lrs)
            f = targets[0]
            scaled = [lr * f for lr in original] if isinstance(original, list) else original * f
            callback._swa_lrs = scaled
            shown = ", ".join(f"{v:.4g}" for v in (original if isinstance(original, list) else [original]))
            after = ", ".join(f"{v:.4g}" for v in (scaled if isinstance(scaled, list) else [scaled]))
            text += f"; StochasticWeightAveraging swa_lrs {shown} → {after}"
    return text


def swa_bn_pass(pl: ModuleType, trainer: Any) -> bool:
    """Whether this is the extra epoch in which ``StochasticWeightAveraging`` recomputes BatchNorm statistics
    (it sets ``accumulate_grad_batches`` to the epoch's length and skips the backward: no batch change)."""
    return any(
        isinstance(callback, pl.callbacks.StochasticWeightAveraging)
        and getattr(callback, "_model_contains_batch_norm", False)
        and getattr(callback, "_max_epochs", -1) != -1
        and trainer.current_epoch == callback.swa_end + 1
        for callback in trainer.callbacks
    )


def averaged_models(pl: ModuleType, trainer: Any) -> list[Any]:
    """The averaged models of the Trainer's ``WeightAveraging`` callbacks (Lightning >= 2.5) that have one."""
    averaging = getattr(pl.callbacks, "WeightAveraging", None)
    callbacks = [cb for cb in trainer.callbacks if averaging and isinstance(cb, averaging)]
    models = [getattr(cb, "_average_model", None) for cb in callbacks]
    return [m for m in models if m is not None]


# ---------------------------------------------------------------------- reporting and logging
def scaling_report(
    trainer: Any,
    rule: Rule,
    effective: int,
    per_rank: list[int],
    accumulation: int,
    base: int,
    factors: list[float],
    warmup_steps: int,
    start_factors: Sequence[float],
    plan: TimeConstantPlan,
) -> tuple[str, dict[str, Any]]:
    """The summary line (:func:`~lightning_lrbs.summary.describe_scaling`, with ``plan``'s changes) and the
    hyperparameters (:func:`~lightning_lrbs.summary.scaling_hparams`) of the scaling of the Trainer's optimizers by
    ``factors``, on its devices and nodes, each optimizer named as ``LearningRateMonitor`` names it."""
    optimizers = list(trainer.optimizers)
    names = [n.label for n in optimizer_names(optimizers, scheduled(trainer))]
    devices, nodes = trainer.num_devices, trainer.num_nodes
    text = describe_scaling(
        effective,
        per_rank,
        accumulation,
        base,
        rule,
        optimizers,
        factors,
        devices=devices,
        nodes=nodes,
        warmup_steps=warmup_steps,
        start_factors=start_factors,
        names=names,
        details=[plan.describe(i) for i in range(len(optimizers))],
        tail=plan.describe_ema(),
    )
    hparams = scaling_hparams(
        effective,
        per_rank[0],
        accumulation,
        base,
        rule,
        optimizers,
        factors,
        names=names,
        devices=devices,
        nodes=nodes,
        warmup_steps=warmup_steps,
        start_factors=start_factors,
    )
    return text, hparams


def logs_now(trainer: Any) -> bool:
    """Whether the Trainer logs at this step (``log_every_n_steps``); ``True`` outside its fit loop."""
    connector = getattr(trainer, "_logger_connector", None)
    return connector is None or bool(connector.should_update_logs)


def log_metrics(trainer: Any, metrics: dict[str, float]) -> None:
    """Log ``metrics`` to every logger at the step Lightning's own ``self.log`` uses."""
    step = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", trainer.global_step)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def scheduled(trainer: Any) -> list[tuple[Any, str | None]]:
    """``(optimizer, name)`` of each of the Trainer's scheduler configs, as ``LearningRateMonitor`` names them."""
    pairs = [(getattr(c.scheduler, "optimizer", None), c.name) for c in trainer.lr_scheduler_configs]
    return [(o, n) for o, n in pairs if o is not None]


def lr_names(optimizers: Sequence[Optimizer], schedulers: Sequence[tuple[Any, str | None]] = ()) -> list[list[str]]:
    """``LearningRateMonitor``'s names of each param group under ``lrbs/``, e.g. ``lrbs/lr-SGD/pg1``."""
    return [[f"lrbs/{name}" for name in names] for names in lr_monitor_names(optimizers, schedulers)]


def lr_log_hook(trainer: Any, callback: Any, index: int) -> StepPreHook:
    """An optimizer step pre-hook logging the LR of each of its groups at the step (warmup applied), under the
    name ``LearningRateMonitor`` gives that group now (groups added later and scheduler ``name`` included), while
    ``callback`` is among the Trainer's callbacks; ``index`` is the optimizer's."""

    def log_lr(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if not trainer.loggers or not logs_now(trainer):
            return
        if callback not in trainer.callbacks:  # an LR finder's sweep runs with its own callbacks only
            return
        names = lr_names(trainer.optimizers, scheduled(trainer))[index]
        metrics = {
            name: float(group["lr"])
            for group, name in zip(optimizer.param_groups, names)
            if group.get("lr") is not None  # an opted-out group may have none (Adafactor's relative step)
        }
        log_metrics(trainer, metrics)

    return log_lr


def scale_metrics(effective: int, names: Sequence[Sequence[str]], factors: Sequence[float]) -> dict[str, float]:
    """``lrbs/effective_batch_size`` and the factor of each optimizer: ``lrbs/scale_factor`` for one, else
    ``lrbs/scale_factor-<Optimizer>[-<n>]`` after its LR names ``names``."""
    metrics = {"lrbs/effective_batch_size": float(effective)}
    for group_names, factor in zip(names, factors):
        stem = group_names[0].split("/")[1].replace("lr-", "scale_factor-", 1)  # lrbs/lr-SGD-1/pg1: scale_factor-SGD-1
        metrics["lrbs/scale_factor" if len(names) == 1 else f"lrbs/{stem}"] = factor
    return metrics


# ---------------------------------------------------------------------- gradient noise scale
def noise_metrics(noise: GradientNoiseScale) -> dict[str, float]:
    """``lrbs/noise_scale``, ``lrbs/grad_sq_norm`` and ``lrbs/grad_var``, those measured."""
    values = {"noise_scale": noise.noise_scale, "grad_sq_norm": noise.grad_sq_norm, "grad_var": noise.grad_var}
    return {f"lrbs/{k}": float(v) for k, v in values.items() if v is not None}


def noise_line(noise: GradientNoiseScale, effective: int, epoch: int) -> str:
    """The epoch's info line on the noise scale (:func:`~lightning_lrbs.noise.describe_noise_scale`)."""
    bound = None if noise.resolved else noise.noise_scale_lower_bound
    return f"{describe_noise_scale(noise.noise_scale, effective, bound)} (epoch {epoch})"


def noise_far_beyond(noise: GradientNoiseScale, effective: int, ratio: float) -> str | None:
    """The warning when ``effective > ratio × B_noise``, from enough measurements to average over, else ``None``."""
    if noise.measurements < 1 / (1 - noise.smoothing):
        return None
    if not noise.resolved:  # far beyond the noise scale, |G|^2 is measured precisely: unresolved means below it
        return None
    value = noise.noise_scale
    if value is None or not effective > ratio * value:
        return None
    return (
        f"the effective batch {effective} is far beyond the measured gradient noise scale "
        f"({describe_noise_scale(value, effective)}): most of each step's samples buy little progress "
        "(McCandlish et al. 2018); fewer devices or less accumulation would reach the same loss with fewer "
        "samples, and LR scaling rules stop holding there"
    )


def trainable_param_count(trainer: Any) -> int:
    """How many trainable parameter tensors the optimizers hold now (each counted once)."""
    return len(
        {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"] if p.requires_grad}
    )
