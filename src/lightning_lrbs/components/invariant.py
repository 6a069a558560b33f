r"""AdaScale's scale-invariant iterations (``scale_invariant=True``): a step at gain :math:`r_t` does the work of
:math:`r_t` base-batch steps. The schedulers advance by :math:`\tau = \sum_t r_t` in whole steps
(:class:`~lightning_lrbs.adascale.ScaleInvariantSchedule`), and the fit ends, as ``max_steps`` would, once
:math:`\tau` reaches :math:`S` times the optimizer steps the Trainer planned. Meanwhile the Trainer's limits are
lifted and its scheduler configs held (Lightning must neither stop the fit nor step the schedulers); they come back
when the fit ends or raises."""

from __future__ import annotations

import math
from typing import Any

from lightning_lrbs._coerce import check_bool
from lightning_lrbs._lightning import fit_loop
from lightning_lrbs.adascale import ScaleInvariantSchedule
from lightning_lrbs.components.adascale import AdaScale
from lightning_lrbs.components.base import Component, Fit, Scale
from lightning_lrbs.components.batch import EffectiveBatch
from lightning_lrbs.warmup import steps_per_epoch

__all__ = ["ScaleInvariant"]

_WHO = "`scale_invariant=True` (rule='adascale')"


class ScaleInvariant(Component):
    """Step the schedulers by AdaScale's progress and end the fit when the planned work is done.

    Args:
        adascale: The component whose gain counts the progress.
        batch: The effective batch (its size must be known when training starts).
    """

    def __init__(self, adascale: AdaScale, batch: EffectiveBatch) -> None:
        self.adascale, self.batch = adascale, batch
        self.setup(None)

    @staticmethod
    def check_argument(scale_invariant: object, rule: object) -> bool:
        """Validate the callback's ``scale_invariant`` (a bool, ``True`` only with ``rule="adascale"``)."""
        flag = check_bool(scale_invariant, "scale_invariant")
        if flag and rule != "adascale":
            raise ValueError(
                f"`scale_invariant=True` counts AdaScale's scale-invariant iterations and needs rule='adascale', got "
                f"rule={rule!r}"
            )
        return flag

    def setup(self, fit: Fit | None) -> None:
        self.schedule: ScaleInvariantSchedule | None = None
        self.scale = 1.0  # S when the count started (checkpointed: a resume must keep it)
        self._state: dict[str, Any] | None = None  # from a checkpoint
        self._planned: int | None = None  # the Trainer's planned optimizer steps, before the limits are lifted
        self._lifted: tuple[Any, Any, list[int]] | None = None  # the limits and frequencies to restore

    def on_fit_start(self, fit: Fit) -> None:
        """Refuse what cannot be followed exactly, then lift the Trainer's limits (the callback ends the fit)."""
        trainer, pl = fit.trainer, fit.pl
        for callback in trainer.callbacks:
            if isinstance(callback, pl.callbacks.StochasticWeightAveraging):
                raise ValueError(
                    f"{_WHO} lets the run go past `max_epochs` until the planned work is done, and "
                    "StochasticWeightAveraging starts and anneals by epoch number: use `scale_invariant=False`"
                )
            if isinstance(callback, pl.callbacks.GradientAccumulationScheduler):
                raise ValueError(
                    f"{_WHO} counts the planned work from `estimated_stepping_batches`, which a "
                    "GradientAccumulationScheduler changes while training: use `scale_invariant=False`"
                )
        for config in trainer.lr_scheduler_configs:
            if config.reduce_on_plateau:
                raise ValueError(
                    f"{_WHO} advances the schedulers by AdaScale's scale-invariant iterations, and ReduceLROnPlateau "
                    "follows a metric, not a step count: use another scheduler or `scale_invariant=False`"
                )
            if config.frequency != 1:
                raise ValueError(
                    f"{_WHO} steps each scheduler once per scale-invariant step (or epoch) and supports `frequency=1`, "
                    f"got frequency={config.frequency} for {type(config.scheduler).__name__}"
                )
        overridden = type(fit.module).lr_scheduler_step is not pl.LightningModule.lr_scheduler_step
        if trainer.lr_scheduler_configs and overridden:
            raise ValueError(
                f"{_WHO} steps the schedulers itself with `scheduler.step()`, but {type(fit.module).__name__} "
                "overrides `lr_scheduler_step` (timm schedulers need it, with Lightning's step or epoch count, which "
                "is not the scale-invariant one): use `scale_invariant=False`"
            )
        planned = trainer.estimated_stepping_batches
        if not math.isfinite(planned) or planned <= 0:
            raise ValueError(
                f"{_WHO} trains until the planned work is done and needs `max_steps`, or `max_epochs` with a train "
                f"loader of known length (the Trainer plans {planned} optimizer steps)"
            )
        self._planned = int(planned)
        self._lifted = fit_loop.lift_limits(trainer)

    def on_train_start(self, fit: Fit) -> None:
        """Refuse a fit that would count its progress wrongly (the lifted limits come back on the exception)."""
        trainer = fit.trainer
        if trainer.global_step > 0 and self._state is None:
            raise ValueError(
                f"{_WHO} counts AdaScale's progress from the first step, and this fit starts at global step "
                f"{trainer.global_step} without it (a checkpoint written without `scale_invariant=True`, or a second "
                "`fit` of the same Trainer): resume from a checkpoint written with it, or train with a new Trainer"
            )
        if not self.batch.known:
            raise ValueError(
                f"{_WHO} needs the per-device batch size when training starts, and the train loader does not expose "
                "it: pass `batch_size=` (the number of samples each device feeds per step)"
            )
        per_epoch = [config for config in trainer.lr_scheduler_configs if config.interval != "step"]
        if per_epoch and not math.isfinite(trainer.num_training_batches):
            raise ValueError(
                f"{_WHO} steps a per-epoch scheduler after each epoch's worth of optimizer steps and needs a train "
                f"loader with a length ({type(per_epoch[0].scheduler).__name__} is per epoch)"
            )

    def plan(self, fit: Fit, scale: Scale) -> None:
        """Refuse another :math:`S` than the one the schedulers' periods and the planned work were counted at: the
        checkpoint's on resume, the fit's own later (a reloaded loader with another batch size)."""
        if scale.first and self._state is not None:
            saved = float(self._state.get("scale", scale.ratio))
            if not math.isclose(saved, scale.ratio, rel_tol=1e-12):
                raise ValueError(
                    f"{_WHO} counts the schedulers' steps and the planned work at the scale S = B_eff / B_base of the "
                    f"run that wrote the checkpoint, S = {saved:.6g}, and this fit has S = {scale.ratio:.6g}: resume "
                    "with the same effective batch (devices × batch × accumulation), or without the flag"
                )
        elif not scale.first and not math.isclose(self.scale, scale.ratio, rel_tol=1e-12):
            raise ValueError(
                f"{_WHO} counts the schedulers' steps and the planned work at the scale S = B_eff / B_base this fit "
                f"started with, S = {self.scale:.6g}, and the effective batch is now {scale.effective} (S = "
                f"{scale.ratio:.6g}, epoch {fit.trainer.current_epoch}): keep the loader's batch size when it is "
                "reloaded, or train without the flag"
            )

    def commit(self, fit: Fit, scale: Scale) -> None:
        """Count to the work the Trainer plans now (its steps × S: a resume with a larger ``max_epochs`` trains on, as
        Lightning would), from a checkpoint's periods, steps taken and progress; stop before the first batch when that
        work is done already."""
        if not scale.first:
            return
        assert self._planned is not None  # on_fit_start
        trainer, ratio = fit.trainer, scale.ratio
        periods = [
            ratio
            if config.interval == "step"
            else ratio * steps_per_epoch(int(trainer.num_training_batches), scale.accumulation, 1)
            for config in trainer.lr_scheduler_configs
        ]  # a per-epoch scheduler has a loader with a length: on_train_start
        self.schedule = ScaleInvariantSchedule(
            [config.scheduler for config in trainer.lr_scheduler_configs], periods, total=self._planned * ratio
        )
        self.scale = ratio
        if self._state is not None:
            self.schedule.load_state_dict({**self._state, "total": self.schedule.total})
        self.schedule.advance(self.adascale.progress)
        if self.schedule.done(self.adascale.progress):
            self._stop(fit)

    def describe(self, scale: Scale) -> str:
        if self.schedule is None:
            return ""
        total = self.schedule.total
        return (
            f"; scale-invariant iterations: schedulers advance by r_t/{self.scale:.4g} per step, training ends after "
            f"Σ r_t = {total:.6g} base-batch steps (at most {math.ceil(total / min(self.scale, 1.0)):.0f} optimizer "
            "steps)"
        )

    def metrics(self, fit: Fit) -> dict[str, float]:
        return {} if self.schedule is None else {"lrbs/scale_invariant_progress": self.adascale.progress}

    def late(self, fit: Fit) -> bool:
        """Past half the planned work (the Trainer's own limits are lifted)."""
        return self.schedule is not None and self.adascale.progress >= self.schedule.total / 2

    def on_train_batch_end(self, fit: Fit) -> None:
        if self.schedule is not None:
            self.schedule.advance(self.adascale.progress)
            if self.schedule.done(self.adascale.progress):
                self._stop(fit)

    def _stop(self, fit: Fit) -> None:
        """End the fit now that the planned work is done, and say so (Lightning reports it as `max_steps` reached)."""
        assert self.schedule is not None
        fit_loop.stop_after_this_step(fit.trainer)
        fit.info(
            f"{fit.who}: the planned work is done: Σ r_t = {self.adascale.progress:.6g} ≥ {self.schedule.total:.6g} "
            f"base-batch steps after {fit.trainer.global_step} optimizer steps; training ends (Lightning reports "
            f"`max_steps={fit.trainer.global_step}`, set for this; the Trainer's own limits come back when the fit "
            "ends)"
        )

    def close(self, fit: Fit) -> None:
        if self._lifted is not None:
            fit_loop.restore_limits(fit.trainer, self._lifted)
            self._lifted = None

    def state_dict(self) -> dict[str, Any]:
        if self.schedule is None:
            return {"scale_invariant": self._state}
        return {"scale_invariant": {**self.schedule.state_dict(), "scale": self.scale}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = state.get("scale_invariant")
