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
:mod:`lightning_lrbs.batch`, which import no Lightning; what the hooks read from the Trainer is in
:mod:`lightning_lrbs._trainer`; this module only wires the hooks to them.
"""

from __future__ import annotations

import math
import sys
from types import ModuleType
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_lrbs import _trainer
from lightning_lrbs._coerce import check_bool
from lightning_lrbs.adascale import AdaScaleLR, ScaleInvariantSchedule, Statistics, preconditioner_ready
from lightning_lrbs.batch import check_positive_int
from lightning_lrbs.noise import GradientNoiseScale, check_smoothing
from lightning_lrbs.rescale import flatten_schedulers, rescale_, unsaved_schedulers
from lightning_lrbs.rules import Rule, scale_factor, validate_rule
from lightning_lrbs.sde import TimeConstantPlan, plan_time_constants
from lightning_lrbs.spawn import ResultChannel
from lightning_lrbs.summary import scaling_notes, scaling_warnings
from lightning_lrbs.warmup import (
    LinearWarmup,
    check_start_factor,
    check_warmup_epochs,
    check_warmup_steps,
    default_start_factor,
)

__all__ = ["BatchScalingCallback"]


class BatchScalingCallback(pl.Callback):
    r"""Scale every optimizer's learning rate by the effective batch size, with an optional linear warmup.

    Args:
        base_batch_size: The batch size the module's learning rates were tuned for. ``None`` (default) means the
            per-device batch size, so the factor comes from devices × nodes × accumulation alone.
        rule: How the ratio :math:`r = B_\text{eff} / B_\text{base}` maps to the LR factor: ``"linear"``
            (:math:`r`, Goyal et al. 2017), ``"sqrt"`` (:math:`\sqrt r`, Krizhevsky 2014; Malladi et al. 2022 for
            adaptive optimizers), ``"auto"`` (per optimizer: ``sqrt`` for adaptive ones such as Adam, ``linear``
            otherwise, as timm does), ``"none"`` (1), ``"sde"`` (per optimizer: ``linear`` for SGD, ``sqrt`` for
            the Adam family and RMSprop with their betas, eps and RMSprop's alpha following the batch, Malladi et al.
            2022; see :mod:`lightning_lrbs.sde`), ``"adascale"`` (at each step the AdaScale gain
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
        accumulation: Gradient-accumulation steps to count, for manual optimization that accumulates by hand (the
            callback cannot see it). ``None`` reads ``accumulate_grad_batches`` (and a
            ``GradientAccumulationScheduler``); not together with either.
        scale_weight_decay: Under every rule but ``"none"``, multiply decoupled weight decay (AdamW; Adam, NAdam,
            RAdam with ``decoupled_weight_decay=True``) by :math:`\kappa / f`, so :math:`\eta\lambda` per epoch stays
            (Wang & Aitchison 2024).
        scale_ema: Under every rule but ``"none"``, raise the decay :math:`\rho` of an ``EMAWeightAveraging`` (or a
            ``WeightAveraging`` with torch's EMA ``avg_fn``) in the same Trainer to :math:`\rho^\kappa`
            (Busbridge et al. 2023).
        noise_scale: Measure the gradient noise scale :math:`B_\text{noise} = \operatorname{tr}\Sigma / |G|^2`
            (McCandlish et al. 2018) from the micro-batch gradients of each measured step (needs
            ``accumulate_grad_batches >= 2`` or ``>= 2`` devices); see :mod:`lightning_lrbs.noise`. Read it as
            :attr:`noise_scale`; logged as ``lrbs/noise_scale``, ``lrbs/grad_sq_norm``, ``lrbs/grad_var``.
        noise_every_n_steps: Measure on every n-th optimizer step.
        noise_smoothing: :math:`\beta` of the moving averages of :math:`|G|^2` and :math:`\operatorname{tr}\Sigma`,
            per measured step.
        scale_invariant: With ``rule="adascale"``: AdaScale's scale-invariant iterations (Johnson et al. 2020). A
            step at gain :math:`r_t` counts as :math:`r_t / S` of a step planned at :math:`S` times the base batch:
            the schedulers advance by that (whole steps, :class:`~lightning_lrbs.adascale.ScaleInvariantSchedule`),
            and training ends when the Trainer's planned steps (``max_steps``/``max_epochs``) are done in that count,
            after up to :math:`S` times as many optimizer steps. Refused with ``ReduceLROnPlateau``, a scheduler
            ``frequency`` other than 1, an overridden ``lr_scheduler_step``, ``StochasticWeightAveraging`` or a
            ``GradientAccumulationScheduler``. Logs :math:`\tau` as ``lrbs/scale_invariant_progress``.

    Raises:
        ValueError: If an argument is invalid (named in the message; NumPy numbers count as Python ones, flags must
            be bools), and, when training starts, if the module has no optimizer, a param group that is not opted
            out has no numeric ``lr`` (``Adafactor(relative_step=True)``), a scheduler is of a class whose stored
            LRs are not known (neither torch's nor timm's, and no ``lrbs_lr_attributes``), the per-device batch size
            cannot be found, or a callable rule returns a non-finite or non-positive factor. Nothing is changed
            before such an error.

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
        accumulation: int | None = None,
        scale_weight_decay: bool = True,
        scale_ema: bool = True,
        noise_scale: bool = False,
        noise_every_n_steps: int = 10,
        noise_smoothing: float = 0.95,
        scale_invariant: bool = False,
    ) -> None:
        super().__init__()
        self.base_batch_size = (
            None if base_batch_size is None else check_positive_int(base_batch_size, "base_batch_size")
        )
        self.rule: Rule = validate_rule(rule)
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.warmup_steps = check_warmup_steps(warmup_steps)
        self.warmup_epochs = check_warmup_epochs(warmup_epochs, warmup_steps)
        self.warmup_start_factor = (
            None if warmup_start_factor is None else check_start_factor(warmup_start_factor, "warmup_start_factor")
        )
        if self.warmup_start_factor is not None and not (self.warmup_steps or self.warmup_epochs):
            self._pl.utilities.rank_zero.rank_zero_warn(
                f"`warmup_start_factor={warmup_start_factor!r}` has no effect without `warmup_steps` or "
                "`warmup_epochs`",
                category=RuntimeWarning,
            )
        self.log_lr = check_bool(log_lr, "log_lr")
        self.accumulation = None if accumulation is None else check_positive_int(accumulation, "accumulation")
        self.scale_weight_decay = check_bool(scale_weight_decay, "scale_weight_decay")
        self.scale_ema = check_bool(scale_ema, "scale_ema")
        self._tuned: tuple[float, int] | None = None  # (suggestion, accumulation) of a `Tuner.lr_find` fit
        self._swa_originals: dict[int, Any] = {}  # id(StochasticWeightAveraging) -> its swa_lrs as the user gave them
        self._setup_accumulation = 1
        self._channel = ResultChannel()  # brings the workers' results back under `ddp_spawn`
        self.measure_noise = check_bool(noise_scale, "noise_scale")
        self.noise_every_n_steps = check_positive_int(noise_every_n_steps, "noise_every_n_steps")
        self.noise_smoothing = check_smoothing(noise_smoothing, "noise_smoothing")
        if self.rule == "adascale":  # the gain needs the noise statistics of every step (lightning_lrbs.adascale)
            self.measure_noise, self.noise_every_n_steps = True, 1
        self.scale_invariant = check_bool(scale_invariant, "scale_invariant")
        if self.scale_invariant and self.rule != "adascale":
            raise ValueError(
                f"`scale_invariant=True` counts AdaScale's scale-invariant iterations and needs rule='adascale', got "
                f"rule={rule!r}"
            )
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
        self._time_constants: TimeConstantPlan | None = None  # betas, eps, weight decay, EMA (lightning_lrbs.sde)
        self._time_constant_state: dict[str, Any] | None = None  # their originals, from a checkpoint
        self._log_handles: list[torch.utils.hooks.RemovableHandle] = []
        self._finder_base: int | None = None  # the batch an LR finder swept at, when the module's LR comes from it
        self._steps_check: tuple[int, int] | None = None  # (expected steps of the first epoch, global_step at start)
        self.summary = ""
        self._scaling_summary = ""
        self._noise: GradientNoiseScale | None = None
        self._noise_state: dict[str, Any] | None = None  # restored from a checkpoint, applied at train start
        self._noise_warned: set[str] = set()
        self._adascale: AdaScaleLR | None = None
        self._adascale_state: dict[str, Any] | None = None  # restored from a checkpoint
        self._invariant: ScaleInvariantSchedule | None = None  # scale_invariant=True
        self._invariant_state: dict[str, Any] | None = None
        self._invariant_scale = 1.0  # S when the count started (checkpointed: a resume must keep it)
        self._planned_steps: int | None = None  # the Trainer's planned optimizer steps, before the limits are lifted
        self._lifted: tuple[Any, Any, list[int]] | None = None  # the limits and frequencies to restore

    # ------------------------------------------------------------------ read-only results
    _REPORTED: ClassVar[tuple[str, ...]] = (
        *("_per_rank", "_accumulation", "_effective", "_base", "_factors"),
        *("_resolved_warmup", "_start_factors", "_finder_base", "_summary"),
    )

    def _received(self) -> BatchScalingCallback:
        """Self, updated with what the spawned workers applied (``ddp_spawn``), if they sent anything."""
        report = self._channel.receive()
        if report is not None:
            self.__dict__.update(report)
        return self

    @property
    def summary(self) -> str:
        """The summary line of the last change of scale (``""`` before training starts)."""
        return self._received()._summary

    @summary.setter
    def summary(self, value: str) -> None:
        self._summary = value

    @property
    def effective_batch_size(self) -> int | None:
        """The effective batch size now in force (``None`` before training starts)."""
        return self._received()._effective

    @property
    def per_device_batch_size(self) -> int | None:
        """The batch size rank zero feeds (``None`` before training starts)."""
        per_rank = self._received()._per_rank
        return None if per_rank is None else per_rank[0]

    @property
    def scale_factors(self) -> tuple[float, ...]:
        """The LR factor now applied to each optimizer, relative to the module's own LRs."""
        if self._adascale is not None:
            return (self._adascale.factor,)
        return tuple(self._received()._factors or ())

    @property
    def scale_factor(self) -> float | tuple[float, ...] | None:
        """The LR factor now applied; a tuple (one per optimizer) when ``rule="auto"`` gives them different ones."""
        factors = self.scale_factors
        if not factors:
            return None
        if all(f == factors[0] for f in factors):
            return factors[0]
        return factors

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
            self._received()  # drop an unread report of an earlier `ddp_spawn` fit
            self._remove_warmup()
            self._reset()
            self._setup_accumulation = int(trainer.accumulate_grad_batches)  # what an LR finder sweep runs with

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _trainer.check_fit(
            self._pl, trainer, pl_module, type(self).__name__, self.rule, self.measure_noise, self.accumulation
        )
        if self.scale_invariant:  # the callback steps the schedulers and ends the run
            self._planned_steps = _trainer.check_scale_invariant(self._pl, trainer, pl_module)
            self._lifted = _trainer.lift_limits(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        per_rank = self._read_batch_sizes(trainer, batch=None)
        if self.scale_invariant:  # before anything changes (the lifted limits are put back on the exception)
            _trainer.check_scale_invariant_start(trainer, per_rank is not None, self._invariant_state is not None)
        if per_rank is None:
            self._pending_batch = True  # only the first batch tells; scale before its optimizer step
        else:
            self._apply(trainer, per_rank)
        if self.measure_noise:
            self._noise = _trainer.noise_estimator(trainer, self.noise_smoothing, adascale=self.rule == "adascale")
            if self._noise_state is not None:
                self._noise.load_state_dict(self._noise_state)
            if self._adascale is not None:
                self._adascale.refresh()  # a resumed run continues from the checkpoint's statistics

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._noise is not None and _trainer.micro_batches(trainer, self._accumulation_now(trainer)) < 2:
            self._warn_noise_once(
                "single",
                "`noise_scale=True` needs two or more micro-batch gradients per optimizer step, and this run has one "
                "device without gradient accumulation: set `accumulate_grad_batches>=2` or train on 2 or more "
                "devices to get an estimate. `noise_scale` stays as it is; training is not affected",
            )
        if self._per_rank is None or _trainer.swa_bn_pass(self._pl, trainer):  # SWA's BatchNorm pass: no batch change
            return
        per_rank = self._per_rank
        reload = getattr(trainer, "reload_dataloaders_every_n_epochs", 0) > 0
        if reload and self.batch_size is None:  # the loader may be a new one, with another batch size
            read = self._read_batch_sizes(trainer, batch=None)
            if read is None:
                self._pending_batch = True  # read it from this epoch's first batch
            else:
                per_rank = read
        self._apply_if_changed(trainer, per_rank)
        finder = self._pl.callbacks.BatchSizeFinder
        if self.batch_size is None and any(isinstance(c, finder) for c in getattr(trainer, "callbacks", ())):
            self._pending_batch = True  # a BatchSizeFinder may rebuild the loader in its own epoch-start hook

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending_batch:
            self._pending_batch = False
            per_rank = self._read_batch_sizes(trainer, batch=batch)
            if per_rank is None:
                raise ValueError(
                    f"{type(self).__name__} could not find the per-device batch size in the train loader or the first "
                    "batch: pass `batch_size=` (the number of samples each device feeds per step)"
                )
            self._apply_if_changed(trainer, per_rank)
        if self._adascale is not None and trainer.loggers:
            self._log_scale(trainer, every_n_steps=True)
        if self._noise is not None and self._measuring_noise(trainer):
            size = _trainer.batch_len(self._pl, batch)
            if size is not None:  # fp16 AMP: the hooks see loss-scaled gradients
                self._noise.micro_batch(size, loss_scale=_trainer.micro_batch_loss_scale(trainer))
        if self._noise is not None and self._noise.measurements and trainer.loggers and _trainer.logs_now(trainer):
            _trainer.log_metrics(trainer, _trainer.noise_metrics(self._noise))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._invariant is not None and self._adascale is not None:
            self._invariant.advance(self._adascale.progress)
            if self._invariant.done(self._adascale.progress):
                self._stop_invariant(trainer)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # .grad: the mean over ranks and micro-batches, AMP-unscaled, not yet clipped; Lightning divided each loss by A
        if self._noise is not None and self._measuring_noise(trainer):  # on every rank alike: `step` all-reduces
            self._noise.step(grad_scale=_trainer.step_grad_scale(trainer, optimizer, self._noise.local_micro_batches))
            if _trainer.trainable_param_count(trainer) > len(self._noise.params):
                self._warn_noise_once(
                    "params",
                    "parameters were added to the optimizers or unfrozen after training started (BackboneFinetuning, "
                    "`optimizer.add_param_group`): the gradient noise scale is measured on the parameters trainable "
                    "when training started only"
                    + (
                        "; rule='adascale' applies their gain to the new ones too" if self._adascale is not None else ""
                    ),
                )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._invariant is not None and self._adascale is not None:  # the Trainer's limits are lifted
            late = self._adascale.progress >= self._invariant.total / 2
        else:
            steps = trainer.estimated_stepping_batches
            late = math.isfinite(steps) and trainer.global_step >= steps / 2
        self._report_noise(trainer, late=late)
        if self._steps_check is None:
            return
        (expected, start), self._steps_check = self._steps_check, None
        name, epochs = type(self).__name__, self.warmup_epochs
        message = _trainer.first_epoch_mismatch(trainer, name, epochs, self._resolved_warmup, expected, start)
        if message is not None:
            self._pl.utilities.rank_zero.rank_zero_warn(message, category=RuntimeWarning)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_warmup()
        self._restore_limits(trainer)
        if self._noise is not None:
            self._noise.remove()
            self._warn_noise_far_beyond()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # A step that raised inside `optimizer.step` (training_step runs in its closure) left the warmed LR in place.
        self._remove_warmup()
        self._restore_limits(trainer)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Saved from inside a step (`OnExceptionCheckpoint` before this callback, a SLURM signal): write scheduled LRs.
        states = checkpoint.get("optimizer_states")
        if not isinstance(states, list):
            return
        if self._warmup is not None and self._warmup.pending:  # its pre-hook runs first: it saved the scheduled LRs
            for index, state in enumerate(states[: len(self._warmup.optimizers)]):
                if isinstance(state, dict):
                    self._warmup.unwarm_state_dict(index, state)
        elif self._adascale is not None and self._adascale.pending and states and isinstance(states[0], dict):
            self._adascale.unscaled_state_dict(states[0])  # adascale takes one optimizer

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_warmup()
        self._restore_limits(trainer)
        tuned = _trainer.tuned_suggestion(self._pl, trainer)  # `Tuner.lr_find`: keep it for the next fit
        if tuned is not None:
            self._tuned = tuned
        if stage == "fit" and trainer.global_rank == 0:  # a `ddp_spawn` worker reports to the launching process
            self._channel.send({key: self.__dict__[key] for key in self._REPORTED})
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
            "time_constants": self._time_constant_state,
            "lr_finder_base": self._finder_base,
            "noise": self._noise.state_dict() if self._noise is not None else self._noise_state,
            "adascale": self._adascale.state_dict() if self._adascale is not None else self._adascale_state,
            "scale_invariant": (
                {**self._invariant.state_dict(), "scale": self._invariant_scale}
                if self._invariant is not None
                else self._invariant_state
            ),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        factors = state_dict.get("scale_factors")
        self._factors = None if factors is None else [float(f) for f in factors]
        self._effective = state_dict.get("effective_batch_size")
        self._resolved_warmup = state_dict.get("warmup_steps")
        starts = state_dict.get("warmup_start_factors")
        self._start_factors = None if starts is None else [float(s) for s in starts]
        self._time_constant_state = state_dict.get("time_constants")
        self._finder_base = state_dict.get("lr_finder_base")
        self._noise_state = state_dict.get("noise")
        self._adascale_state = state_dict.get("adascale")
        self._invariant_state = state_dict.get("scale_invariant")

    # ------------------------------------------------------------------ internals
    def _accumulation_now(self, trainer: Any) -> int:
        """Accumulation for the current epoch (:func:`lightning_lrbs._trainer.accumulation_now`)."""
        return _trainer.accumulation_now(self._pl, trainer, self.accumulation)

    def _read_batch_sizes(self, trainer: Any, batch: Any) -> list[int] | None:
        """Every rank's per-step batch size (the override, the loaders' or the batch's), ``None`` if not found here."""
        local = _trainer.local_batch_size(self._pl, trainer, batch, self.batch_size)
        return None if local is None else _trainer.gather(trainer, local)

    def _apply_if_changed(self, trainer: Any, per_rank: list[int]) -> None:
        if per_rank != self._per_rank or self._accumulation_now(trainer) != self._accumulation:
            self._apply(trainer, per_rank)

    def _apply(self, trainer: Any, per_rank: list[int]) -> None:
        """Compute the target factors, then rescale by target / applied. Everything that can fail runs first.

        ``per_rank`` holds every rank's batch size (:meth:`_read_batch_sizes`); it is re-read when the train loader is
        reloaded.
        """
        accumulation = self._accumulation_now(trainer)
        effective = sum(per_rank) * accumulation
        nominal = self.base_batch_size if self.base_batch_size is not None else per_rank[0]
        first = self._per_rank is None
        found = None
        if first and self._factors is None:  # an LR finder's suggestion counts once, for the fit that follows it
            tuned, self._tuned = self._tuned, None
            found = _trainer.found_lr(self._pl, trainer, tuned, self._setup_accumulation)
        if found is not None:  # the LR finder swept at this run's batch: its suggestion is the LR at that batch
            self._finder_base = sum(per_rank) * found[1]
        base = self._finder_base if self._finder_base is not None else nominal
        optimizers = list(trainer.optimizers)
        ratio = effective / base
        if first and self.scale_invariant and self._invariant_state is not None:  # before anything changes
            _trainer.check_invariant_scale(self._invariant_state, ratio)
        targets = [scale_factor(ratio, self.rule, opt) for opt in optimizers]
        # The warmup starts from the LR the rule would have scaled from, also when a finder gave the LR.
        starts = targets
        if self._finder_base is not None:
            starts = [scale_factor(effective / nominal, self.rule, opt) for opt in optimizers]
        previous = self._factors
        if previous is not None and len(previous) != len(optimizers):
            raise ValueError(
                f"the checkpoint's {type(self).__name__} state holds {len(previous)} scale factors, but the module "
                f"has {len(optimizers)} optimizers"
            )
        applied = previous if previous is not None else [1.0] * len(optimizers)
        schedulers = flatten_schedulers(config.scheduler for config in trainer.lr_scheduler_configs)
        relative = [t / a for t, a in zip(targets, applied)]
        warmup_steps = self._warmup_length(trainer) if first else 0  # can fail: before anything changes
        plan = self._plan_time_constants(trainer, optimizers, schedulers, ratio, targets)  # can fail too

        rescale_(optimizers, schedulers, relative)  # checks everything before it changes anything
        if first and previous is not None:  # resumed: schedulers that save no LRs were rebuilt at the module's LRs
            rescale_(optimizers, unsaved_schedulers(schedulers), applied, param_groups=False)
        plan.apply()
        self._time_constants, self._time_constant_state = plan, plan.state_dict()
        swa_text = _trainer.scale_swa(self._pl, trainer, targets, self._swa_originals)

        self._per_rank, self._accumulation, self._effective, self._base = per_rank, accumulation, effective, base
        self._factors = targets
        if first:
            self._start_warmup(trainer, optimizers, starts, warmup_steps)
            self._lr_names = self._make_lr_names(optimizers)
        if self.rule == "adascale":
            self._start_adascale(optimizers[0], base, effective)  # its hooks nest inside the warmup's
            if first and self.scale_invariant:
                self._start_invariant(trainer, ratio, accumulation)
        if first and self.log_lr:  # registered after the warmup's and the gain's pre-hooks: the LR the step uses
            for index, optimizer in enumerate(optimizers):
                self._log_handles.append(optimizer.register_step_pre_hook(_trainer.lr_log_hook(trainer, self, index)))
        warmup = (self._resolved_warmup or 0, self._start_factors or ())
        text, hparams = _trainer.scaling_report(
            trainer, self.rule, effective, per_rank, accumulation, base, targets, *warmup, plan
        )
        text += scaling_notes(
            targets,
            resumed_from=previous if first else None,  # resumed from a checkpoint that holds scaled LRs
            adascale_ratio=effective / base if self.rule == "adascale" else None,
            finder_base=self._finder_base,
            nominal_base=nominal,
        )
        if self._invariant is not None:
            total = self._invariant.total
            text += (
                f"; scale-invariant iterations: schedulers advance by r_t/{ratio:.4g} per step, training ends after "
                f"Σ r_t = {total:.6g} base-batch steps (at most {math.ceil(total / min(ratio, 1.0)):.0f} optimizer "
                "steps)"
            )
        self.summary = self._scaling_summary = text + swa_text
        self._pl.utilities.rank_zero.rank_zero_info(self.summary)
        self._log_scale(trainer)
        hparams.update(self.time_constant_hyperparameters())
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
        if first and self._finder_base is None:
            self._warn(optimizers, targets)

    def _plan_time_constants(
        self,
        trainer: Any,
        optimizers: list[torch.optim.Optimizer],
        schedulers: list[Any],
        ratio: float,
        factors: list[float],
    ) -> TimeConstantPlan:
        """Betas, eps, weight decay and EMA decay from their originals at this κ (:mod:`lightning_lrbs.sde`)."""
        previous = self._time_constants
        return plan_time_constants(
            optimizers,
            factors,
            kappa=ratio,
            rule=self.rule,
            schedulers=schedulers,
            averaged_models=_trainer.averaged_models(self._pl, trainer),
            weight_decay=self.scale_weight_decay,
            ema=self.scale_ema,
            state=self._time_constant_state,
            ema_originals=previous.ema_originals() if previous is not None else None,
        )

    def time_constant_hyperparameters(self) -> dict[str, float]:
        """The betas, eps, weight decays and EMA decays the callback changed, as now in force, for a logger's
        ``log_hyperparams``: ``lrbs/beta1-Adam``, ``lrbs/eps-Adam``, ``lrbs/weight_decay-AdamW``, ``lrbs/ema_decay``."""
        plan = self._time_constants
        return {} if plan is None else plan.hyperparameters(self._lr_names)

    def _warmup_length(self, trainer: Any) -> int:
        """The warmup length in optimizer steps: restored from a checkpoint (never recomputed), or resolved now."""
        if self._resolved_warmup is not None:
            return self._resolved_warmup
        if not self.warmup_epochs:
            return self.warmup_steps
        per_epoch = _trainer.first_epoch_steps(trainer, self.warmup_epochs, self._accumulation_now(trainer))
        if trainer.ckpt_path is None:  # a whole first epoch: checked when it ends
            self._steps_check = (per_epoch, trainer.global_step)
        return int(math.ceil(self.warmup_epochs * per_epoch - 1e-9))

    def _start_warmup(
        self, trainer: Any, optimizers: list[torch.optim.Optimizer], starts: list[float], warmup_steps: int
    ) -> None:
        """Start the warmup (``starts``: the factors whose inverse is the default start factor)."""
        self._resolved_warmup = warmup_steps
        if self._start_factors is None or len(self._start_factors) != len(optimizers):
            if self.warmup_start_factor is not None:
                self._start_factors = [self.warmup_start_factor] * len(optimizers)
            else:
                # adascale: from the unscaled LR as for linear, s = 1/S (its static factor is 1)
                ratio = (self._effective or 1) / (self._base or 1)
                self._start_factors = [default_start_factor(ratio if self.rule == "adascale" else f) for f in starts]
        if self._resolved_warmup > 0:
            self._warmup = LinearWarmup(
                optimizers, self._resolved_warmup, self._start_factors, step_fn=lambda: self._warmup_step(trainer)
            )

    def _warmup_step(self, trainer: Any) -> int:
        """``trainer.global_step``; past the warmup's end (no warming) while an LR finder sweeps in the middle of
        training: its fit loop runs with its own callbacks only, and its sweep must use the LRs it sets."""
        return trainer.global_step if self in trainer.callbacks else sys.maxsize

    def _remove_warmup(self) -> None:
        if self._adascale is not None:  # first: its hooks nest inside the warmup's; its last gain stays readable
            self._adascale.remove()
        if self._warmup is not None:
            self._warmup.remove()
            self._warmup = None
        for handle in self._log_handles:
            handle.remove()
        self._log_handles.clear()

    @staticmethod
    def _make_lr_names(optimizers: list[torch.optim.Optimizer]) -> list[list[str]]:
        """``LearningRateMonitor``'s names under ``lrbs/`` (without schedulers), e.g. ``lrbs/lr-SGD/pg1``."""
        return _trainer.lr_names(optimizers)

    def _log_scale(self, trainer: Any, every_n_steps: bool = False) -> None:
        if every_n_steps and not _trainer.logs_now(trainer):
            return
        metrics = _trainer.scale_metrics(self._effective or 0, self._lr_names, self.scale_factors)
        if self._invariant is not None and self._adascale is not None:  # AdaScale's tau, in base-batch steps
            metrics["lrbs/scale_invariant_progress"] = self._adascale.progress
        _trainer.log_metrics(trainer, metrics)

    def _warn(self, optimizers: list[torch.optim.Optimizer], targets: list[float]) -> None:
        effective, base = self._effective or 0, self._base or 0
        for message in scaling_warnings(self.rule, optimizers, targets, effective, base, type(self).__name__):
            self._pl.utilities.rank_zero.rank_zero_warn(message, category=RuntimeWarning)

    # ------------------------------------------------------------------ gradient noise scale (lightning_lrbs.noise)
    #: Warn when the effective batch is more than this many times the noise scale, late in training.
    NOISE_WARN_RATIO: ClassVar[float] = 10.0

    def _measuring_noise(self, trainer: Any) -> bool:
        return (
            self._noise is not None
            and trainer.global_step % self.noise_every_n_steps == 0
            and _trainer.micro_batches(trainer, trainer.accumulate_grad_batches) >= 2
            and (self._adascale is None or preconditioner_ready(self._adascale.optimizer))
        )

    def _report_noise(self, trainer: Any, late: bool) -> None:
        """The epoch's info line (also appended to ``summary``), and the far-beyond warning late in training."""
        if self._noise is None or not self._noise.measurements or self._effective is None:
            return
        line = _trainer.noise_line(self._noise, self._effective, trainer.current_epoch)
        self.summary = f"{self._scaling_summary}\n{line}" if self._scaling_summary else line
        self._pl.utilities.rank_zero.rank_zero_info(f"{type(self).__name__}: {line}")
        if late:
            self._warn_noise_far_beyond()

    def _warn_noise_far_beyond(self) -> None:
        """Warn once when B_eff > NOISE_WARN_RATIO × B_noise, from enough measurements to average over."""
        if self._noise is not None and self._effective is not None:
            message = _trainer.noise_far_beyond(self._noise, self._effective, self.NOISE_WARN_RATIO)
            if message is not None:
                self._warn_noise_once("beyond", message)

    def _warn_noise_once(self, key: str, message: str) -> None:
        if key not in self._noise_warned:
            self._noise_warned.add(key)
            self._pl.utilities.rank_zero.rank_zero_warn(f"{type(self).__name__}: {message}", category=RuntimeWarning)

    # ------------------------------------------------------------------ rule="adascale" (lightning_lrbs.adascale)
    def _noise_statistics(self) -> Statistics:
        return (None, None) if self._noise is None else (self._noise.grad_sq_norm, self._noise.grad_var)

    def _start_adascale(self, optimizer: torch.optim.Optimizer, base: int, effective: int) -> None:
        """Start the gain's hooks after the warmup's (they nest inside them), or follow a new effective batch."""
        if self._adascale is None:
            self._adascale = AdaScaleLR(optimizer, self._noise_statistics, base, effective)
            if self._adascale_state is not None:  # resumed: the progress so far
                self._adascale.load_state_dict(self._adascale_state)
        else:
            self._adascale.set_batch_sizes(base, effective)

    def _start_invariant(self, trainer: Any, ratio: float, accumulation: int) -> None:
        """Count scale-invariant iterations to the work the Trainer plans now (its steps × S, so a resume with a larger
        ``max_epochs`` trains on, as Lightning would), with the schedulers' periods and steps taken and the progress
        from a checkpoint; stop before the first batch when that work is done already."""
        assert self._adascale is not None
        assert self._planned_steps is not None
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        periods = _trainer.scheduler_periods(trainer, ratio, accumulation)
        self._invariant = ScaleInvariantSchedule(schedulers, periods, total=self._planned_steps * ratio)
        self._invariant_scale = ratio
        if self._invariant_state is not None:
            self._invariant.load_state_dict({**self._invariant_state, "total": self._invariant.total})
        self._invariant.advance(self._adascale.progress)
        if self._invariant.done(self._adascale.progress):
            self._stop_invariant(trainer)

    def _stop_invariant(self, trainer: Any) -> None:
        """End the fit now that the planned work is done, and say so (Lightning reports it as `max_steps` reached)."""
        assert self._adascale is not None
        assert self._invariant is not None
        _trainer.stop_after_this_step(trainer)
        self._pl.utilities.rank_zero.rank_zero_info(
            f"{type(self).__name__}: the planned work is done: Σ r_t = {self._adascale.progress:.6g} ≥ "
            f"{self._invariant.total:.6g} base-batch steps after {trainer.global_step} optimizer steps; training ends "
            f"(Lightning reports `max_steps={trainer.global_step}`, set for this; the Trainer's own limits come back "
            "when the fit ends)"
        )

    def _restore_limits(self, trainer: Any) -> None:
        if self._lifted is not None:
            _trainer.restore_limits(trainer, self._lifted)
            self._lifted = None
