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

The callback is wiring. Each feature is a component (:mod:`lightning_lrbs.components`) that owns its state and its
slice of the checkpoint; the callback builds the ones its arguments ask for and forwards every hook to all of them in
this order:

1. :class:`~lightning_lrbs.components.EffectiveBatch`: per-replica batch sizes and accumulation; says when they change.
2. :class:`~lightning_lrbs.components.BatchSchedule` (``batch_ramp``): grows the accumulation; schedules by samples.
3. :class:`~lightning_lrbs.components.LRScaling`: the factors; rescales optimizers, schedulers, other callbacks' LRs.
4. :class:`~lightning_lrbs.components.TimeConstants`: betas, eps, weight decay, EMA decay (``rule="sde"`` and others).
5. :class:`~lightning_lrbs.components.Warmup`: the linear warmup.
6. :class:`~lightning_lrbs.components.AdaScale` (``rule="adascale"``): the gain of each step.
7. :class:`~lightning_lrbs.components.NoiseScale` (``noise_scale=True`` or adascale): the gradient noise scale.
8. :class:`~lightning_lrbs.components.ScaleInvariant` (``scale_invariant=True``): schedulers by AdaScale's progress.
9. :class:`~lightning_lrbs.components.StepLR`: logs the LR each step uses; keeps it out of mid-step checkpoints.
10. :class:`~lightning_lrbs.components.Summary`: the summary line, logged numbers and hyperparameters, warnings.

A change of scale (the effective batch known at train start or at the first batch, changed at an epoch start, or by
the batch schedule after an optimizer step)
runs :meth:`~lightning_lrbs.components.Component.plan` on every component (may raise, changes nothing), then
:meth:`~lightning_lrbs.components.Component.commit` on every component (never raises): a refusal never leaves a
half-scaled run. It comes after every component's ``on_train_start`` / ``on_train_epoch_start`` and before any of
their ``on_train_batch_start``, so the LRs are in place before anything measures. The math lives in pure modules
that import no Lightning (:mod:`lightning_lrbs.rules`, :mod:`lightning_lrbs.rescale`, :mod:`lightning_lrbs.warmup`,
:mod:`lightning_lrbs.noise`, :mod:`lightning_lrbs.adascale`, :mod:`lightning_lrbs.sde`); what is read from the Trainer
is in the adapters of :mod:`lightning_lrbs._lightning`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, ClassVar, cast

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_lrbs._coerce import check_bool, optional
from lightning_lrbs.adascale import AdaScaleLR
from lightning_lrbs.batch import check_positive_int
from lightning_lrbs.components import (
    AdaScale,
    BatchSchedule,
    Components,
    EffectiveBatch,
    Fit,
    LRScaling,
    NoiseScale,
    ScaleInvariant,
    StepLR,
    Summary,
    TimeConstants,
    Warmup,
)
from lightning_lrbs.noise import GradientNoiseScale, check_smoothing
from lightning_lrbs.rules import Rule, validate_rule
from lightning_lrbs.spawn import ResultChannel
from lightning_lrbs.warmup import LinearWarmup, check_start_factor, check_warmup_epochs, check_warmup_steps

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
            ``accumulate_grad_batches >= 2``, and measures the noise at every step), ``"capped"`` (linear or square
            root, saturating at a ceiling: :mod:`lightning_lrbs.capped`), or a callable ``f(r) -> float``.
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
        batch_ramp: ``(start, increment, samples)``: grow the batch during training, as Megatron-LM's
            ``--rampup-batch-size``: from ``start`` samples per optimizer step, ``increment`` more every
            ``samples / increments`` samples, up to the Trainer's batch (per-device × data-parallel replicas ×
            ``accumulate_grad_batches``), by gradient accumulation (:mod:`lightning_lrbs.batch_ramp`). The LR and
            everything else follow each change by the rule; per-step schedulers, the warmup and ``max_steps`` count
            steps at the target batch, from the samples.
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
        batch_ramp: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.base_batch_size = optional(check_positive_int, base_batch_size, "base_batch_size")
        self.rule: Rule = validate_rule(rule)
        self.batch_size = optional(check_positive_int, batch_size, "batch_size")
        self.warmup_steps = check_warmup_steps(warmup_steps)
        self.warmup_epochs = check_warmup_epochs(warmup_epochs, warmup_steps)
        self.warmup_start_factor = optional(check_start_factor, warmup_start_factor, "warmup_start_factor")
        if self.warmup_start_factor is not None and not (self.warmup_steps or self.warmup_epochs):
            message = f"`warmup_start_factor={warmup_start_factor!r}` has no effect without `warmup_steps` or "
            self._pl.utilities.rank_zero.rank_zero_warn(message + "`warmup_epochs`", category=RuntimeWarning)
        self.log_lr = check_bool(log_lr, "log_lr")
        self.accumulation = optional(check_positive_int, accumulation, "accumulation")
        self.scale_weight_decay = check_bool(scale_weight_decay, "scale_weight_decay")
        self.scale_ema = check_bool(scale_ema, "scale_ema")
        self.measure_noise = check_bool(noise_scale, "noise_scale")
        self.noise_every_n_steps = check_positive_int(noise_every_n_steps, "noise_every_n_steps")
        self.noise_smoothing = check_smoothing(noise_smoothing, "noise_smoothing")
        if self.rule == "adascale":  # the gain needs the noise statistics of every step (lightning_lrbs.adascale)
            self.measure_noise, self.noise_every_n_steps = True, 1
        self.scale_invariant = ScaleInvariant.check_argument(scale_invariant, self.rule)
        self.batch_ramp = BatchSchedule.check_argument(batch_ramp, self.scale_invariant)
        self._channel = ResultChannel()  # brings the workers' results back under `ddp_spawn`
        self._loaded: dict[str, Any] = {}  # the checkpoint's state, kept for the keys no component here owns
        self._build()

    def _build(self) -> None:
        """The components the arguments ask for, in the order every hook reaches them (the module docstring)."""
        adascale = self.rule == "adascale"
        self._batch = EffectiveBatch(self.batch_size, self.accumulation)
        self._scaling = LRScaling(self.rule, self.base_batch_size)
        self._time_constants = TimeConstants(self.rule, self.scale_weight_decay, self.scale_ema)
        ramp = None if self.batch_ramp is None else BatchSchedule(self.batch_ramp, self._batch)
        self._warmup = Warmup(self.warmup_steps, self.warmup_epochs, self.warmup_start_factor, adascale, ramp)
        noise = NoiseScale(self.noise_every_n_steps, self.noise_smoothing, adascale, self._batch)
        self._noise = noise if self.measure_noise else None
        self._adascale = AdaScale(noise, self.accumulation) if adascale else None
        self._invariant = (
            ScaleInvariant(self._adascale, self._batch) if self._adascale and self.scale_invariant else None
        )
        if self._invariant is not None:
            noise.late = self._invariant.late  # the far-beyond warning waits for half the planned work
        features = [c for c in (self._adascale, self._noise, self._invariant) if c is not None]
        parts = [c for c in (ramp, self._invariant) if c is not None]  # what the summary line ends with
        self._summary = Summary(self._scaling, self._warmup, self._time_constants, parts)
        common = [c for c in (self._batch, ramp, self._scaling, self._time_constants, self._warmup) if c is not None]
        self._components = Components([*common, *features, StepLR(self.log_lr), self._summary])
        self._summary.components = self._components.items

    # ------------------------------------------------------------------ read-only results (`ddp_spawn`: the workers')
    @property
    def summary(self) -> str:
        """The summary line of the last change of scale (``""`` before training starts), and the noise scale's last
        epoch line under it."""
        line = self._noise.line if self._noise is not None else ""
        text = "\n".join(part for part in (self._summary.text, line) if part)
        return str(self._channel.get("summary", text))

    @property
    def effective_batch_size(self) -> int | None:
        """The effective batch size now in force (``None`` before training starts)."""
        return cast("int | None", self._channel.get("effective_batch_size", self._scaling.effective))

    @property
    def per_device_batch_size(self) -> int | None:
        """The batch size rank zero feeds (``None`` before training starts)."""
        per_rank = self._batch.per_rank
        return cast("int | None", self._channel.get("per_device_batch_size", None if per_rank is None else per_rank[0]))

    @property
    def scale_factors(self) -> tuple[float, ...]:
        """The LR factor now applied to each optimizer, relative to the module's own LRs (under ``rule="adascale"``
        the gain factor of the next step)."""
        if self._adascale is not None and self._adascale.lr is not None:
            return self._adascale.factors
        return tuple(self._channel.get("scale_factors", self._scaling.factors or ()))

    @property
    def scale_factor(self) -> float | tuple[float, ...] | None:
        """The LR factor now applied; a tuple (one per optimizer) when ``rule="auto"`` gives them different ones."""
        factors = self.scale_factors
        return (factors[0] if all(f == factors[0] for f in factors) else factors) if factors else None

    @property
    def noise_scale(self) -> float | None:
        """The smoothed gradient noise scale in samples (``None`` before the first measurement or when not measured)."""
        return None if self.noise is None else self.noise.noise_scale

    @property
    def noise(self) -> GradientNoiseScale | None:
        """The estimator (``grad_sq_norm``, ``grad_var``, ``last``, ...) when ``noise_scale=True``."""
        return None if self._noise is None else self._noise.estimator

    @property
    def adascale(self) -> AdaScaleLR | None:
        """The gain (``gain``, ``factor``, ``progress``) under ``rule="adascale"``, once training started."""
        return None if self._adascale is None else self._adascale.lr

    @property
    def warmup(self) -> LinearWarmup | None:
        """The running warmup, if any."""
        return self._warmup.warmup

    def time_constant_hyperparameters(self) -> dict[str, float]:
        """The betas, eps, weight decays and EMA decays the callback changed, as now in force, for a logger's
        ``log_hyperparams``: ``lrbs/beta1-Adam``, ``lrbs/eps-Adam``, ``lrbs/weight_decay-AdamW``, ``lrbs/ema_decay``."""
        return self._time_constants.hyperparameters()

    # ------------------------------------------------------------------ hooks: forwarded to every component
    def _each(self, hook: str, trainer: Any, pl_module: Any, *args: Any) -> Fit:
        """Call ``hook`` of every component that acts in it, in order, with the fit and ``args``; return the fit."""
        fit = self._components.fit(self._pl, trainer, pl_module, self)
        for method in self._components.methods(hook):
            method(fit, *args)
        return fit

    def _rescale_if_changed(self, fit: Fit) -> None:
        """A change of scale when the effective batch changed: every component plans it, then every one commits."""
        per_rank = self._batch.changed(fit)
        if per_rank is None:
            return
        first = self._batch.per_rank is None
        scale = self._scaling.scale(fit, per_rank, self._batch.accumulation_now(fit), first)  # may raise
        self._each("plan", fit.trainer, fit.module, scale)  # may raise: nothing has changed yet
        self._each("commit", fit.trainer, fit.module, scale)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # a new fit starts from the module's own LRs; a resume restores state after this
            self._channel.forget()  # what the workers of an earlier `ddp_spawn` fit sent
            self._loaded = {}
            self._each("close", trainer, pl_module)
            self._each("setup", trainer, pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._each("on_fit_start", trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rescale_if_changed(self._each("on_train_start", trainer, pl_module))

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rescale_if_changed(self._each("on_train_epoch_start", trainer, pl_module))

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        fit = self._components.fit(self._pl, trainer, pl_module, self)
        self._batch.read_batch(fit, batch)
        self._rescale_if_changed(fit)  # before anything measures this step
        self._each("on_train_batch_start", trainer, pl_module, batch)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._each("on_before_optimizer_step", trainer, pl_module, optimizer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._each("on_train_batch_end", trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._each("on_train_epoch_end", trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._each("on_train_end", trainer, pl_module)
        self._each("close", trainer, pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # A step that raised inside `optimizer.step` (training_step runs in its closure) left multiplied LRs in place.
        self._each("close", trainer, pl_module)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._each("on_save_checkpoint", trainer, pl_module, checkpoint)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._each("close", trainer, pl_module)
        self._each("teardown", trainer, pl_module, stage)
        if stage == "fit" and trainer.global_rank == 0:  # a `ddp_spawn` worker reports to the launching process
            results = ("summary", "effective_batch_size", "per_device_batch_size", "scale_factors")
            self._channel.send({key: getattr(self, key) for key in results})

    @override
    def state_dict(self) -> dict[str, Any]:
        """Each component's keys, and the keys of a loaded checkpoint that no component here owns (kept as they were:
        a feature switched off for one fit finds its state again when switched back on)."""
        state = dict(self._loaded)
        for component in self._components.items:
            state.update(component.state_dict())
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict)
        for component in self._components.items:
            component.load_state_dict(state_dict)
