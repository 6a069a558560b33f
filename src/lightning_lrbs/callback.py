r"""Batch scaling callback.

Makes every optimizer's learning rate follow the effective batch size of a Lightning run.

When training starts, :class:`BatchScalingCallback` measures the effective batch size

.. math::

    B_\text{eff} = A \sum_{\text{ranks } r} b_r = b \times \text{devices} \times \text{nodes} \times A,

where :math:`b_r` is the batch size rank :math:`r` actually feeds and :math:`A` is ``accumulate_grad_batches``,
and multiplies every learning rate (and everything a scheduler derived from it) by
:math:`f = \text{rule}(B_\text{eff} / B_\text{base})`. An optional linear warmup ramps the LR in over the first
optimizer steps and composes with any scheduler. The factor already applied is saved in checkpoints, so a resumed
run, also on another number of devices, is always at base LR :math:`\times f`.

The math lives in :mod:`lightning_lrbs.rules`, :mod:`lightning_lrbs.rescale`, :mod:`lightning_lrbs.warmup` and
:mod:`lightning_lrbs.batch`, which import no Lightning; this module only reads the Trainer and calls them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_lrbs.adascale import (
    AdaScaleLR,
    Statistics,
    check_adascale_optimizer,
    preconditioner,
    preconditioner_ready,
)
from lightning_lrbs.batch import check_positive_int, loader_batch_size
from lightning_lrbs.noise import GradientNoiseScale, check_smoothing, describe_noise_scale
from lightning_lrbs.rescale import flatten_schedulers, rescale_, scalable_groups
from lightning_lrbs.rules import Rule, is_adaptive, rule_name, scale_factor, validate_rule
from lightning_lrbs.summary import describe_scaling
from lightning_lrbs.warmup import LinearWarmup, check_start_factor, check_warmup_steps, default_start_factor

__all__ = ["BatchScalingCallback"]


class BatchScalingCallback(pl.Callback):
    r"""Scale every optimizer's learning rate by the effective batch size, with an optional linear warmup.

    Args:
        base_batch_size: The batch size the module's learning rates were tuned for. ``None`` (default) means the
            per-device batch size, so the factor comes from devices × nodes × accumulation alone.
        rule: How the ratio :math:`r = B_\text{eff} / B_\text{base}` maps to the LR factor: ``"linear"``
            (:math:`r`, Goyal et al. 2017), ``"sqrt"`` (:math:`\sqrt r`, Krizhevsky 2014; Malladi et al. 2022 for
            adaptive optimizers), ``"auto"`` (per optimizer: ``sqrt`` for adaptive ones such as Adam, ``linear``
            otherwise, as timm does), ``"none"`` (1), ``"adascale"`` (at each step the AdaScale gain
            :math:`r_t \in [1, r]` of the measured gradient noise, Johnson et al. 2020, :math:`r_t^{1/2}` for
            adaptive optimizers; see :mod:`lightning_lrbs.adascale`; needs 2 or more devices or
            ``accumulate_grad_batches >= 2``, and measures the noise at every step), or a callable ``f(r) -> float``.
        batch_size: Per-device batch size, for loaders that do not expose one. ``None`` reads it from the train
            loader(s) Lightning actually uses, or from the first batch.
        warmup_steps: Linear warmup length in optimizer steps (``0``: none).
        warmup_epochs: Warmup length in epochs, fractions allowed; converted with the optimizer steps of the first
            epoch (accumulation counted) and rounded up. Not together with ``warmup_steps``.
        warmup_start_factor: Multiplier on the scheduled LR at the first step, in [0, 1]. ``None`` starts from the
            unscaled LR, :math:`1/f` (Goyal et al.; Horovod), or from 0 when :math:`f \le 1`.
        log_lr: Log the LR each optimizer group actually uses (warmup applied) at the Trainer's
            ``log_every_n_steps``, under ``LearningRateMonitor``'s names prefixed with ``lrbs/``
            (``lrbs/lr-<Optimizer>[-<n>][/pg<i>]``; ``LearningRateMonitor`` logs the LR before the warmup).
        noise_scale: Measure the gradient noise scale :math:`B_\text{noise} = \operatorname{tr}\Sigma / |G|^2`
            (McCandlish et al. 2018) from the micro-batch gradients of each measured step (needs
            ``accumulate_grad_batches >= 2`` or ``>= 2`` devices); see :mod:`lightning_lrbs.noise`. Read it as
            :attr:`noise_scale`; logged as ``lrbs/noise_scale``, ``lrbs/grad_sq_norm``, ``lrbs/grad_var``.
        noise_every_n_steps: Measure on every n-th optimizer step.
        noise_smoothing: :math:`\beta` of the moving averages of :math:`|G|^2` and :math:`\operatorname{tr}\Sigma`,
            per measured step.

    Raises:
        ValueError: If an argument is invalid (named in the message), and, when training starts, if the module has
            no optimizer, the per-device batch size cannot be found, or a callable rule returns a non-finite or
            non-positive factor. Nothing is changed before such an error.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_lrbs import BatchScalingCallback
        >>> trainer = Trainer(callbacks=[BatchScalingCallback(base_batch_size=32, rule="linear", warmup_steps=100)])
    """

    #: The Lightning namespace whose utilities the hooks use (``pytorch_lightning`` in the compat subclass).
    _pl: ClassVar[ModuleType] = pl

    def __init__(
        self,
        base_batch_size: int | None = None,
        rule: Rule = "linear",
        batch_size: int | None = None,
        warmup_steps: int = 0,
        warmup_epochs: float = 0.0,
        warmup_start_factor: float | None = None,
        log_lr: bool = True,
        noise_scale: bool = False,
        noise_every_n_steps: int = 10,
        noise_smoothing: float = 0.95,
    ) -> None:
        super().__init__()
        self.base_batch_size = (
            None if base_batch_size is None else check_positive_int(base_batch_size, "base_batch_size")
        )
        self.rule: Rule = validate_rule(rule)
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.warmup_steps = check_warmup_steps(warmup_steps)
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, (int, float))
            or not math.isfinite(warmup_epochs)
            or warmup_epochs < 0
        ):
            raise ValueError(f"`warmup_epochs` must be a non-negative finite number, got {warmup_epochs!r}")
        if warmup_steps and warmup_epochs:
            raise ValueError(
                f"give either `warmup_steps` or `warmup_epochs`, not both: got warmup_steps={warmup_steps!r} "
                f"and warmup_epochs={warmup_epochs!r}"
            )
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_start_factor = (
            None if warmup_start_factor is None else check_start_factor(warmup_start_factor, "warmup_start_factor")
        )
        if self.warmup_start_factor is not None and not (self.warmup_steps or self.warmup_epochs):
            self._pl.utilities.rank_zero.rank_zero_warn(
                f"`warmup_start_factor={warmup_start_factor!r}` has no effect without `warmup_steps` or "
                "`warmup_epochs`",
                category=RuntimeWarning,
            )
        self.log_lr = bool(log_lr)
        self.measure_noise = bool(noise_scale)
        self.noise_every_n_steps = check_positive_int(noise_every_n_steps, "noise_every_n_steps")
        self.noise_smoothing = check_smoothing(noise_smoothing, "noise_smoothing")
        if self.rule == "adascale":  # the gain needs the noise statistics of every step (lightning_lrbs.adascale)
            self.measure_noise, self.noise_every_n_steps = True, 1
        self._reset()

    def _reset(self) -> None:
        self._per_rank: list[int] | None = None
        self._accumulation: int | None = None
        self._effective: int | None = None
        self._base: int | None = None
        self._factors: list[float] | None = None  # applied now, relative to the module's own LRs
        self._resolved_warmup: int | None = None  # warmup length in steps, fixed once (never restarted)
        self._start_factors: list[float] | None = None
        self._warmup: LinearWarmup | None = None
        self._pending_batch = False
        self._lr_names: list[list[str]] = []
        self.summary = ""
        self._scaling_summary = ""
        self._noise: GradientNoiseScale | None = None
        self._noise_state: dict[str, Any] | None = None  # restored from a checkpoint, applied at train start
        self._noise_warned: set[str] = set()
        self._adascale: AdaScaleLR | None = None

    # ------------------------------------------------------------------ read-only results
    @property
    def effective_batch_size(self) -> int | None:
        """The effective batch size now in force (``None`` before training starts)."""
        return self._effective

    @property
    def per_device_batch_size(self) -> int | None:
        """The batch size rank zero feeds (``None`` before training starts)."""
        return None if self._per_rank is None else self._per_rank[0]

    @property
    def scale_factors(self) -> tuple[float, ...]:
        """The LR factor now applied to each optimizer, relative to the module's own LRs."""
        if self._adascale is not None:
            return (self._adascale.factor,)
        return tuple(self._factors or ())

    @property
    def scale_factor(self) -> float | tuple[float, ...] | None:
        """The LR factor now applied; a tuple (one per optimizer) when ``rule="auto"`` gives them different ones."""
        if self._adascale is not None:
            return self._adascale.factor
        if not self._factors:
            return None
        if all(f == self._factors[0] for f in self._factors):
            return self._factors[0]
        return tuple(self._factors)

    @property
    def noise_scale(self) -> float | None:
        """The smoothed gradient noise scale in samples (``None`` before the first measurement or when not measured)."""
        return None if self._noise is None else self._noise.noise_scale

    @property
    def noise(self) -> GradientNoiseScale | None:
        """The estimator (``grad_sq_norm``, ``grad_var``, ``last``, ...) when ``noise_scale=True``."""
        return self._noise

    @property
    def warmup(self) -> LinearWarmup | None:
        """The running warmup, if any."""
        return self._warmup

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # a new fit starts from the module's own LRs; a resume restores state after this
            self._remove_warmup()
            self._reset()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning stands a `_MockOptimizer` without param groups in for a `configure_optimizers` returning None.
        if not any(group for opt in trainer.optimizers for group in opt.param_groups if "lr" in group):
            raise ValueError(
                f"{type(self).__name__} scales optimizer learning rates, but `configure_optimizers` of "
                f"{type(pl_module).__name__} returned no optimizer"
            )
        if self.rule == "adascale":
            self._check_adascale(trainer, pl_module)
        if self.measure_noise and not pl_module.automatic_optimization:
            raise ValueError(
                f"`noise_scale=True` needs automatic optimization, but {type(pl_module).__name__} sets "
                "`automatic_optimization = False`: use `lightning_lrbs.noise.GradientNoiseScale` in `training_step`"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local = self._local_batch_size(trainer, batch=None)
        if local is None:
            self._pending_batch = True  # only the first batch tells; scale before its optimizer step
        else:
            self._apply(trainer, local)
        if self.measure_noise:
            params = [p for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]]
            transform = preconditioner(trainer.optimizers[0]) if self.rule == "adascale" else None
            self._noise = GradientNoiseScale(params, smoothing=self.noise_smoothing, transform=transform)
            if self._noise_state is not None:
                self._noise.load_state_dict(self._noise_state)
            if self._adascale is not None:
                self._adascale.refresh()  # a resumed run continues from the checkpoint's statistics

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._per_rank is not None and self._accumulation_now(trainer) != self._accumulation:
            self._apply(trainer, local=None)
        if self._noise is not None and trainer.world_size * self._accumulation_now(trainer) < 2:
            self._warn_noise_once(
                "single",
                "`noise_scale=True` needs two or more micro-batch gradients per optimizer step, and this run has one "
                "device without gradient accumulation: set `accumulate_grad_batches>=2` or train on 2 or more "
                "devices to get an estimate. `noise_scale` stays as it is; training is not affected",
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending_batch:
            self._pending_batch = False
            local = self._local_batch_size(trainer, batch=batch)
            if local is None:
                raise ValueError(
                    f"{type(self).__name__} could not find the per-device batch size in the train loader or the first "
                    "batch: pass `batch_size=` (the number of samples each device feeds per step)"
                )
            self._apply(trainer, local)
        if self.log_lr and trainer.loggers:
            self._log_lr(trainer)
        if self._adascale is not None and trainer.loggers:
            self._log_scale(trainer, every_n_steps=True)
        if self._noise is not None and self._measuring_noise(trainer):
            scaler = getattr(trainer.precision_plugin, "scaler", None)  # fp16 AMP: hooks see loss-scaled gradients
            amp = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
            size = self._batch_len(batch)
            if size is not None:
                self._noise.micro_batch(size, loss_scale=amp / trainer.accumulate_grad_batches)
        if self._noise is not None and self._noise.measurements and trainer.loggers:
            self._log_noise(trainer)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # .grad: the mean over ranks and micro-batches, AMP-unscaled, not yet clipped; Lightning divided each loss by A
        if self._noise is not None and self._measuring_noise(trainer):  # on every rank alike: `step` all-reduces
            scale = max(self._noise.local_micro_batches, 1) / trainer.accumulate_grad_batches
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None and scaler.is_enabled() and getattr(optimizer, "_step_supports_amp_scaling", False):
                scale *= float(scaler.get_scale())  # fused optimizers unscale inside `step`: .grad is still scaled
            self._noise.step(grad_scale=scale)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.estimated_stepping_batches
        self._report_noise(trainer, late=math.isfinite(steps) and trainer.global_step >= steps / 2)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_warmup()
        if self._noise is not None:
            self._noise.remove()
            self._warn_noise_far_beyond(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_warmup()
        if self._noise is not None:
            self._noise.remove()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "scale_factors": list(self._factors) if self._factors is not None else None,
            "effective_batch_size": self._effective,
            "base_batch_size": self._base,
            "warmup_steps": self._resolved_warmup,
            "warmup_start_factors": self._start_factors,
            "noise": self._noise.state_dict() if self._noise is not None else self._noise_state,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        factors = state_dict.get("scale_factors")
        self._factors = None if factors is None else [float(f) for f in factors]
        self._effective = state_dict.get("effective_batch_size")
        self._resolved_warmup = state_dict.get("warmup_steps")
        starts = state_dict.get("warmup_start_factors")
        self._start_factors = None if starts is None else [float(s) for s in starts]
        self._noise_state = state_dict.get("noise")

    # ------------------------------------------------------------------ internals
    def _accumulation_now(self, trainer: Any) -> int:
        """Accumulation for the current epoch, reading a ``GradientAccumulationScheduler`` directly so that the
        result does not depend on whether it ran its ``on_train_epoch_start`` before this callback."""
        scheduler_cls = self._pl.callbacks.GradientAccumulationScheduler
        for callback in trainer.callbacks:
            if isinstance(callback, scheduler_cls):
                return int(callback.get_accumulate_grad_batches(trainer.current_epoch))
        return int(trainer.accumulate_grad_batches)

    def _local_batch_size(self, trainer: Any, batch: Any) -> int | None:
        """This rank's per-step batch size: the override, the loaders' sizes (summed), or the batch's."""
        if self.batch_size is not None:
            return self.batch_size
        combined = getattr(trainer.fit_loop, "_combined_loader", None)
        if getattr(combined, "_mode", None) == "sequential":
            return None if batch is None else self._batch_len(batch)
        return self._tree_batch_size(trainer.train_dataloader, batch)

    def _tree_batch_size(self, loaders: Any, batch: Any) -> int | None:
        combined_cls = self._pl.utilities.combined_loader.CombinedLoader
        if isinstance(loaders, combined_cls):
            return self._tree_batch_size(loaders.iterables, batch)
        if isinstance(loaders, Mapping):
            sizes = [self._tree_batch_size(v, None if batch is None else batch[k]) for k, v in loaders.items()]
        elif isinstance(loaders, Sequence) and not isinstance(loaders, (str, bytes)):
            parts: list[Any] = list(batch) if isinstance(batch, (list, tuple)) else [None] * len(loaders)
            if len(parts) != len(loaders):
                parts = [None] * len(loaders)
            sizes = [self._tree_batch_size(v, b) for v, b in zip(loaders, parts)]
        else:
            size = loader_batch_size(loaders)
            if size is None and batch is not None:
                size = self._batch_len(batch)
            return size
        if not sizes or any(s is None for s in sizes):
            return None
        return sum(s for s in sizes if s is not None)

    def _batch_len(self, batch: Any) -> int | None:
        try:
            size = int(self._pl.utilities.data.extract_batch_size(batch))
        except Exception:
            return None
        return size if size > 0 else None

    def _gather(self, trainer: Any, local: int) -> list[int]:
        """Every rank's batch size, in rank order, identical on all ranks."""
        tensor = torch.tensor(local, dtype=torch.long, device=trainer.strategy.root_device)
        gathered = trainer.strategy.all_gather(tensor)
        return [int(v) for v in gathered.reshape(-1).tolist()]

    def _apply(self, trainer: Any, local: int | None) -> None:
        """Compute the target factors, then rescale by target / applied. Everything that can fail runs first.

        ``local`` is this rank's batch size, gathered from all ranks the first time; later calls (a change of
        accumulation) reuse the gathered sizes.
        """
        per_rank = self._per_rank
        if per_rank is None:
            assert local is not None  # noqa: S101 - internal invariant
            per_rank = self._gather(trainer, local)
        accumulation = self._accumulation_now(trainer)
        effective = sum(per_rank) * accumulation
        base = self.base_batch_size if self.base_batch_size is not None else per_rank[0]
        optimizers = list(trainer.optimizers)
        ratio = effective / base
        targets = [scale_factor(ratio, self.rule, opt) for opt in optimizers]
        previous = self._factors
        if previous is not None and len(previous) != len(optimizers):
            raise ValueError(
                f"the checkpoint's {type(self).__name__} state holds {len(previous)} scale factors, but the module "
                f"has {len(optimizers)} optimizers"
            )
        applied = previous if previous is not None else [1.0] * len(optimizers)
        schedulers = flatten_schedulers(config.scheduler for config in trainer.lr_scheduler_configs)
        relative = [t / a for t, a in zip(targets, applied)]
        first = self._per_rank is None
        warmup_steps = self._warmup_length(trainer) if first else 0  # can fail: before anything changes

        rescale_(optimizers, schedulers, relative)

        self._per_rank, self._accumulation, self._effective, self._base = per_rank, accumulation, effective, base
        self._factors = targets
        if first:
            self._start_warmup(trainer, optimizers, targets, warmup_steps)
            self._lr_names = self._make_lr_names(optimizers)
        if self.rule == "adascale":
            self._start_adascale(optimizers[0], base, effective)
        self.summary = self._scaling_summary = describe_scaling(
            effective,
            per_rank,
            accumulation,
            base,
            self.rule,
            optimizers,
            targets,
            devices=trainer.num_devices,
            nodes=trainer.num_nodes,
            warmup_steps=self._resolved_warmup or 0,
            start_factors=self._start_factors or (),
        )
        if self.rule == "adascale":
            self.summary = self._scaling_summary = f"{self.summary}; × AdaScale gain in [1, {effective / base:.4g}]"
        if previous is not None and first:  # resumed from a checkpoint that holds scaled LRs
            rescaled = any(a != t for a, t in zip(applied, targets))
            applied_text = "/".join(f"{a:.2f}" for a in applied)
            self.summary += f" (resumed at ×{applied_text}, rescaled)" if rescaled else " (resumed, already scaled)"
            self._scaling_summary = self.summary
        self._pl.utilities.rank_zero.rank_zero_info(self.summary)
        self._log_scale(trainer)
        if first:
            self._warn(optimizers, targets)

    def _warmup_length(self, trainer: Any) -> int:
        """The warmup length in optimizer steps: restored from a checkpoint (never recomputed), or resolved now."""
        if self._resolved_warmup is not None:
            return self._resolved_warmup
        if not self.warmup_epochs:
            return self.warmup_steps
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ValueError(
                f"`warmup_epochs={self.warmup_epochs}` needs a train loader with a length; use `warmup_steps=` instead"
            )
        per_epoch = math.ceil(batches / self._accumulation_now(trainer))
        return int(math.ceil(self.warmup_epochs * per_epoch - 1e-9))

    def _start_warmup(
        self, trainer: Any, optimizers: list[torch.optim.Optimizer], targets: list[float], warmup_steps: int
    ) -> None:
        self._resolved_warmup = warmup_steps
        if self._start_factors is None or len(self._start_factors) != len(optimizers):
            if self.warmup_start_factor is not None:
                self._start_factors = [self.warmup_start_factor] * len(optimizers)
            else:
                # adascale: from the unscaled LR as for linear, s = 1/S (its static factor is 1)
                ratio = (self._effective or 1) / (self._base or 1)
                self._start_factors = [default_start_factor(ratio if self.rule == "adascale" else f) for f in targets]
        if self._resolved_warmup > 0:
            self._warmup = LinearWarmup(
                optimizers, self._resolved_warmup, self._start_factors, step_fn=lambda: trainer.global_step
            )

    def _remove_warmup(self) -> None:
        if self._adascale is not None:  # first: its hooks nest inside the warmup's; its last gain stays readable
            self._adascale.remove()
        if self._warmup is not None:
            self._warmup.remove()
            self._warmup = None

    @staticmethod
    def _make_lr_names(optimizers: list[torch.optim.Optimizer]) -> list[list[str]]:
        """``LearningRateMonitor``'s names under ``lrbs/``: ``lr-<Optimizer>[-<n>]``, plus ``/<group name>`` or, with
        several groups, ``/pg<i>`` (1-based), so ``lrbs/lr-SGD/pg1`` is the warmed ``lr-SGD/pg1``."""
        counts: dict[str, int] = {}
        names: list[list[str]] = []
        for optimizer in optimizers:
            name = type(optimizer).__name__
            seen = counts.get(name, 0)
            counts[name] = seen + 1
            stem = f"lrbs/lr-{name}" + (f"-{seen}" if seen else "")
            groups = optimizer.param_groups
            if len(groups) > 1:
                names.append([f"{stem}/{group.get('name', f'pg{i}')}" for i, group in enumerate(groups, start=1)])
            else:
                names.append([f"{stem}/{group['name']}" if group.get("name") else stem for group in groups])
        return names

    def _log_lr(self, trainer: Any) -> None:
        """Log the LR each group will actually use for the coming step: scheduled LR × warmup factor."""
        connector = getattr(trainer, "_logger_connector", None)
        if connector is not None and not connector.should_update_logs:
            return
        step = trainer.global_step
        metrics: dict[str, float] = {}
        for index, (optimizer, names) in enumerate(zip(trainer.optimizers, self._lr_names)):
            w = self._warmup.factor(index, step) if self._warmup is not None else 1.0
            w *= self._adascale.factor if self._adascale is not None else 1.0
            for group, active, name in zip(optimizer.param_groups, scalable_groups(optimizer), names):
                metrics[name] = float(group["lr"]) * (w if active else 1.0)
        self._log_metrics(trainer, metrics)

    def _log_scale(self, trainer: Any, every_n_steps: bool = False) -> None:
        connector = getattr(trainer, "_logger_connector", None)
        if every_n_steps and connector is not None and not connector.should_update_logs:
            return
        metrics = {"lrbs/effective_batch_size": float(self._effective or 0)}
        for names, factor in zip(self._lr_names, self.scale_factors):
            single = len(self._lr_names) == 1
            stem = names[0].split("/")[1].replace("lr-", "scale_factor-", 1)  # lrbs/lr-SGD-1/pg1 -> scale_factor-SGD-1
            metrics["lrbs/scale_factor" if single else f"lrbs/{stem}"] = factor
        self._log_metrics(trainer, metrics)

    @staticmethod
    def _log_metrics(trainer: Any, metrics: dict[str, float]) -> None:
        step = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", trainer.global_step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def _warn(self, optimizers: list[torch.optim.Optimizer], targets: list[float]) -> None:
        warn = self._pl.utilities.rank_zero.rank_zero_warn
        if self.rule not in ("none", "adascale") and all(t == 1.0 for t in targets):
            warn(
                f"{type(self).__name__}: the LR factor is 1 (effective batch {self._effective}, base {self._base}, "
                f"rule {rule_name(self.rule)}): nothing to scale",
                category=RuntimeWarning,
            )
        if self.rule == "linear":
            adaptive = sorted({type(o).__name__ for o, t in zip(optimizers, targets) if is_adaptive(o) and t != 1.0})
            if adaptive:
                warn(
                    f"{type(self).__name__}: the linear rule scales the adaptive optimizer(s) {', '.join(adaptive)}; "
                    "adaptive optimizers usually follow the square-root rule (Malladi et al. 2022): "
                    "try rule='sqrt' or rule='auto'",
                    category=RuntimeWarning,
                )

    # ------------------------------------------------------------------ gradient noise scale (lightning_lrbs.noise)
    #: Warn when the effective batch is more than this many times the noise scale, late in training.
    NOISE_WARN_RATIO: ClassVar[float] = 10.0

    def _measuring_noise(self, trainer: Any) -> bool:
        return (
            self._noise is not None
            and trainer.global_step % self.noise_every_n_steps == 0
            and trainer.world_size * trainer.accumulate_grad_batches >= 2
            and (self._adascale is None or preconditioner_ready(self._adascale.optimizer))
        )

    def _log_noise(self, trainer: Any) -> None:
        connector = getattr(trainer, "_logger_connector", None)
        if self._noise is None or (connector is not None and not connector.should_update_logs):
            return
        values = {"noise_scale": self._noise.noise_scale, "grad_sq_norm": self._noise.grad_sq_norm}
        values["grad_var"] = self._noise.grad_var
        self._log_metrics(trainer, {f"lrbs/{k}": float(v) for k, v in values.items() if v is not None})

    def _report_noise(self, trainer: Any, late: bool) -> None:
        """The epoch's info line (also appended to ``summary``), and the far-beyond warning late in training."""
        if self._noise is None or not self._noise.measurements or self._effective is None:
            return
        bound = None if self._noise.resolved else self._noise.noise_scale_lower_bound
        line = (
            f"{describe_noise_scale(self._noise.noise_scale, self._effective, bound)} (epoch {trainer.current_epoch})"
        )
        self.summary = f"{self._scaling_summary}\n{line}" if self._scaling_summary else line
        self._pl.utilities.rank_zero.rank_zero_info(f"{type(self).__name__}: {line}")
        if late:
            self._warn_noise_far_beyond(trainer)

    def _warn_noise_far_beyond(self, trainer: Any) -> None:
        """Warn once when B_eff > NOISE_WARN_RATIO × B_noise, from enough measurements to average over."""
        noise = self._noise
        if noise is None or self._effective is None or noise.measurements < 1 / (1 - noise.smoothing):
            return
        if not noise.resolved:  # far beyond the noise scale, |G|^2 is measured precisely: unresolved means below it
            return
        value = noise.noise_scale
        if value is not None and self._effective > self.NOISE_WARN_RATIO * value:
            self._warn_noise_once(
                "beyond",
                f"the effective batch {self._effective} is far beyond the measured gradient noise scale "
                f"({describe_noise_scale(value, self._effective)}): most of each step's samples buy little progress "
                "(McCandlish et al. 2018); fewer devices or less accumulation would reach the same loss with fewer "
                "samples, and LR scaling rules stop holding there",
            )

    def _warn_noise_once(self, key: str, message: str) -> None:
        if key not in self._noise_warned:
            self._noise_warned.add(key)
            self._pl.utilities.rank_zero.rank_zero_warn(f"{type(self).__name__}: {message}", category=RuntimeWarning)

    # ------------------------------------------------------------------ rule="adascale" (lightning_lrbs.adascale)
    def _check_adascale(self, trainer: Any, pl_module: Any) -> None:
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
        accumulations = [self._accumulation_now(trainer)]
        for callback in trainer.callbacks:
            if isinstance(callback, self._pl.callbacks.GradientAccumulationScheduler):
                accumulations += [callback.get_accumulate_grad_batches(e) for e in [0, *callback.scheduling]]
        if trainer.world_size * min(accumulations) < 2:
            raise ValueError(
                "rule='adascale' needs the gradient noise of every optimizer step, measured from two or more "
                "micro-batch gradients per step, and this run has one device without gradient accumulation: set "
                "`accumulate_grad_batches>=2` (Trainer) or train on 2 or more devices"
            )

    def _noise_statistics(self) -> Statistics:
        return (None, None) if self._noise is None else (self._noise.grad_sq_norm, self._noise.grad_var)

    def _start_adascale(self, optimizer: torch.optim.Optimizer, base: int, effective: int) -> None:
        """Start the gain's hooks after the warmup's (they nest inside them), or follow a new effective batch."""
        if self._adascale is None:
            self._adascale = AdaScaleLR(optimizer, self._noise_statistics, base, effective)
        else:
            self._adascale.set_batch_sizes(base, effective)
