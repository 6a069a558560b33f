r"""The gradient noise scale :math:`B_\text{noise} = \operatorname{tr}\Sigma / |G|^2` (McCandlish et al. 2018) of the
run, measured from the micro-batch gradients of every n-th optimizer step
(:class:`~lightning_lrbs.noise.GradientNoiseScale`), logged, reported once per epoch against the effective batch, and
checkpointed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer

from lightning_lrbs import sharding
from lightning_lrbs._lightning import precision, strategy
from lightning_lrbs._lightning.loaders import batch_len
from lightning_lrbs.adascale import preconditioner, preconditioner_ready
from lightning_lrbs.components.base import Component, Fit, Scale
from lightning_lrbs.components.batch import EffectiveBatch
from lightning_lrbs.noise import GradientNoiseScale, describe_noise_scale

__all__ = ["NoiseScale"]

#: Warn when the effective batch is more than this many times the noise scale, late in training.
FAR_BEYOND = 10.0


class NoiseScale(Component):
    """Feed the estimator at every measured step, log and report it.

    Args:
        every_n_steps: Measure on every n-th optimizer step.
        smoothing: :math:`\\beta` of the estimator's moving averages.
        adascale: ``rule="adascale"``: measure every step's noise in the first optimizer's preconditioned geometry
            (:func:`~lightning_lrbs.adascale.preconditioner`: an adaptive optimizer's, once it has state).
        batch: The effective batch.
        late: Whether the run is past half its planned work (the far-beyond warning waits for it).
    """

    def __init__(
        self,
        every_n_steps: int,
        smoothing: float,
        adascale: bool,
        batch: EffectiveBatch,
        late: Callable[[Fit], bool] | None = None,
    ) -> None:
        self.every_n_steps, self.smoothing, self.adascale = every_n_steps, smoothing, adascale
        self.batch = batch
        self.late = late or _past_half_of_the_planned_steps
        self._warned: set[str] = set()
        self.setup(None)

    def setup(self, fit: Fit | None) -> None:
        self.estimator: GradientNoiseScale | None = None
        self._replicas = 1  # data-parallel replicas: micro-batches per step = replicas × accumulation
        self._ready = False  # the preconditioner has the optimizer's state (it keeps it once it has)
        self._state: dict[str, Any] | None = None  # from a checkpoint, loaded into the estimator at train start
        self.line = ""  # the epoch's report line
        self._warned = set()

    def on_fit_start(self, fit: Fit) -> None:
        who = "rule='adascale'" if self.adascale else "`noise_scale=True`"
        if not fit.module.automatic_optimization:
            raise ValueError(
                f"`noise_scale=True` needs automatic optimization, but {type(fit.module).__name__} sets "
                "`automatic_optimization = False`: use `lightning_lrbs.noise.GradientNoiseScale` in `training_step`"
            )
        unverified = strategy.unverified_for_gradients(fit.pl, fit.trainer)
        if unverified is not None:
            raise ValueError(
                f"{who} reads each rank's micro-batch gradients, which is not verified under {unverified} (it keeps "
                "gradients in flat buffers of its own): train with ModelParallelStrategy (FSDP2) or DDP, or without "
                f"{who}; the LR scaling itself stays on under {unverified}"
            )
        sharding.fsdp_twins(fit.module.modules())  # FSDP2 is sharded by now: another torch's internals fail here

    def on_train_start(self, fit: Fit) -> None:
        optimizers = fit.trainer.optimizers
        params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
        transform = preconditioner(optimizers[0]) if self.adascale else None
        layout = strategy.parallelism(fit.trainer)  # the tensor-parallel ranks of a replica compute the same batches
        self._replicas = layout.replicas
        self.estimator = GradientNoiseScale(
            params, smoothing=self.smoothing, transform=transform, modules=[fit.module], group_size=layout.group_size
        )
        if self._state is not None:
            self.estimator.load_state_dict(self._state)

    def measuring(self, fit: Fit) -> bool:
        """Whether this optimizer step is measured (on every rank alike: the estimator's ``step`` all-reduces)."""
        trainer = fit.trainer
        if self.estimator is None or trainer.global_step % self.every_n_steps:
            return False
        if self._replicas * trainer.accumulate_grad_batches < 2:
            return False
        if self.adascale and not self._ready:
            self._ready = preconditioner_ready(trainer.optimizers[0])
        return not self.adascale or self._ready

    def _check_params(self, fit: Fit) -> None:
        """Warn once when parameters were added or unfrozen since training started (checked at epoch starts and at
        the end, not in every step: it reads every parameter)."""
        noise = self.estimator
        if noise is not None and noise.measurements and _trainable_param_count(fit.trainer) > len(noise.params):
            self._warn_once(
                fit,
                "params",
                "parameters were added to the optimizers or unfrozen after training started (BackboneFinetuning, "
                "`optimizer.add_param_group`): the gradient noise scale is measured on the parameters trainable "
                "when training started only"
                + ("; rule='adascale' applies their gain to the new ones too" if self.adascale else ""),
            )

    def on_train_epoch_start(self, fit: Fit) -> None:
        self._check_params(fit)
        accumulation = self.batch.accumulation_now(fit)
        if self.estimator is not None and strategy.micro_batches(fit.trainer, accumulation) < 2:
            self._warn_once(
                fit,
                "single",
                "`noise_scale=True` needs two or more micro-batch gradients per optimizer step, and this run has "
                f"{strategy.one_replica(fit.trainer)} without gradient accumulation: set `accumulate_grad_batches>=2` "
                "or train on 2 or more devices (data-parallel) to get an estimate. `noise_scale` stays as it is; "
                "training is not affected",
            )

    def on_train_batch_start(self, fit: Fit, batch: Any) -> None:
        if self.estimator is not None and self.measuring(fit):
            size = batch_len(fit.pl, batch)
            if size is not None:  # fp16 AMP: the hooks see loss-scaled gradients
                self.estimator.micro_batch(size, loss_scale=precision.micro_batch_loss_scale(fit.trainer))

    def metrics(self, fit: Fit) -> dict[str, float]:
        noise = self.estimator
        if noise is None or not noise.measurements:
            return {}
        values = {"noise_scale": noise.noise_scale, "grad_sq_norm": noise.grad_sq_norm, "grad_var": noise.grad_var}
        return {f"lrbs/{k}": float(v) for k, v in values.items() if v is not None}

    def on_before_optimizer_step(self, fit: Fit, optimizer: Optimizer) -> None:
        # .grad: the mean over ranks and micro-batches, AMP-unscaled, not yet clipped; Lightning divided each loss by A
        noise = self.estimator
        if noise is None or not self.measuring(fit):
            return
        grad_scale = precision.step_grad_scale(fit.trainer, optimizer, noise.local_micro_batches)
        noise.step(grad_scale=grad_scale, keep_hooks=self.every_n_steps == 1)  # measured every step: hooks stay

    def commit(self, fit: Fit, scale: Scale) -> None:
        self.line = ""  # it describes the effective batch, which just changed: rewritten at the epoch's end

    def on_train_epoch_end(self, fit: Fit) -> None:
        """The epoch's info line, and the far-beyond warning late in training."""
        noise, effective = self.estimator, self.batch.effective
        if noise is None or not noise.measurements or effective is None:
            return
        bound = None if noise.resolved else noise.noise_scale_lower_bound
        self.line = f"{describe_noise_scale(noise.noise_scale, effective, bound)} (epoch {fit.trainer.current_epoch})"
        fit.info(f"{fit.who}: {self.line}")
        if self.late(fit):
            self._warn_far_beyond(fit)

    def on_train_end(self, fit: Fit) -> None:
        self._check_params(fit)
        self.close(fit)
        self._warn_far_beyond(fit)

    def close(self, fit: Fit) -> None:
        if self.estimator is not None:
            self.estimator.remove()

    def _warn_far_beyond(self, fit: Fit) -> None:
        """Warn once when B_eff > FAR_BEYOND × B_noise, from enough measurements to average over."""
        noise, effective = self.estimator, self.batch.effective
        if noise is None or effective is None or noise.measurements < 1 / (1 - noise.smoothing):
            return
        value = noise.noise_scale
        # far beyond the noise scale, |G|^2 is measured precisely: unresolved means below it
        if not noise.resolved or value is None or not effective > FAR_BEYOND * value:
            return
        self._warn_once(
            fit,
            "beyond",
            f"the effective batch {effective} is far beyond the measured gradient noise scale "
            f"({describe_noise_scale(value, effective)}): most of each step's samples buy little progress "
            "(McCandlish et al. 2018); fewer devices or less accumulation would reach the same loss with fewer "
            "samples, and LR scaling rules stop holding there",
        )

    def _warn_once(self, fit: Fit, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            fit.warn(f"{fit.who}: {message}")

    def state_dict(self) -> dict[str, Any]:
        return {"noise": self.estimator.state_dict() if self.estimator is not None else self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = state.get("noise")


def _past_half_of_the_planned_steps(fit: Fit) -> bool:
    steps = fit.trainer.estimated_stepping_batches
    return math.isfinite(steps) and fit.trainer.global_step >= steps / 2


def _trainable_param_count(trainer: Any) -> int:
    """How many trainable parameter tensors the optimizers hold now (each counted once)."""
    return len(
        {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"] if p.requires_grad}
    )
