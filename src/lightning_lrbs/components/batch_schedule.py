r"""A batch that grows during training (``batch_ramp=(start, increment, samples)``,
:class:`~lightning_lrbs.batch_ramp.BatchRamp`), by gradient accumulation on the run's devices, with everything counted
in steps following the samples.

- The accumulation goes from :math:`B_0 / (b R)` to the Trainer's ``accumulate_grad_batches`` (the target,
  :math:`B = b R A`) as the samples consumed grow, changing only where Lightning's accumulation window aligns
  (:func:`~lightning_lrbs.batch_ramp.aligned`), on every rank alike (they all count the same samples).
- Each change is a change of scale: the LRs, Adam's time constants, weight decay, the EMA decay and AdaScale's
  :math:`S` follow from the module's own values by the rule (never compounded), and the summary line says it.
- Per-step schedulers advance by the samples a step consumed: one ``step()`` per :math:`B` samples (whole steps,
  :class:`~lightning_lrbs.adascale.ScaleInvariantSchedule`), so they keep the shape planned at the target batch; the
  warmup counts target-batch steps too. Per-epoch schedulers and ``max_epochs`` need nothing: an epoch is the same data.
- ``max_steps`` counts steps at the target batch: the fit ends once :math:`B \times` ``max_steps`` samples are
  consumed (Lightning's own ``max_steps`` is lifted meanwhile).
"""

from __future__ import annotations

import math
from typing import Any

from lightning_lrbs._lightning import fit_loop
from lightning_lrbs.adascale import ScaleInvariantSchedule
from lightning_lrbs.batch_ramp import BatchRamp, aligned
from lightning_lrbs.components.base import Component, Fit, Scale
from lightning_lrbs.components.batch import EffectiveBatch

__all__ = ["BatchSchedule"]

_WHO = "`batch_ramp`"


class BatchSchedule(Component):
    """Grow the accumulation by a :class:`~lightning_lrbs.batch_ramp.BatchRamp`, and step the schedulers by samples.

    Args:
        ramp: The ramp.
        batch: The effective batch (the per-replica sizes, and the change of scale the new accumulation starts).
    """

    def __init__(self, ramp: BatchRamp, batch: EffectiveBatch) -> None:
        self.ramp, self.batch = ramp, batch
        self.setup(None)

    @staticmethod
    def check_argument(batch_ramp: object, scale_invariant: bool) -> BatchRamp | None:
        """The callback's ``batch_ramp`` as a :class:`~lightning_lrbs.batch_ramp.BatchRamp` (``None`` for none)."""
        if batch_ramp is None:
            return None
        ramp = BatchRamp.from_argument(batch_ramp)
        if scale_invariant:
            raise ValueError(
                "`batch_ramp` counts the schedule in samples and `scale_invariant=True` in AdaScale's gains: give "
                "one of the two"
            )
        return ramp

    def setup(self, fit: Fit | None) -> None:
        self.consumed = 0.0  # samples of the finished optimizer steps, over all replicas
        self._window = 0  # samples of the step being accumulated
        self.target_accumulation: int | None = None  # the Trainer's accumulate_grad_batches
        self._round: int | None = None  # samples of one micro-batch on every replica
        self._planned: float | None = None  # target-batch steps of `max_steps`, if it is set
        self._held: tuple[Any, Any, list[int]] | None = None
        self._schedule: ScaleInvariantSchedule | None = None
        self._state: dict[str, Any] | None = None
        self._accumulation: int | None = None  # the accumulation in force (checkpointed: a change may be waiting)
        if fit is not None:  # Lightning runs a BatchSizeFinder's search in its `on_fit_start`, before ours
            self._refuse(fit, fit.pl.callbacks.BatchSizeFinder)

    @property
    def target(self) -> int | None:
        """:math:`B`, the target batch (``None`` before training starts)."""
        if self._round is None or self.target_accumulation is None:
            return None
        return self._round * self.target_accumulation

    @property
    def progress(self) -> float:
        """The samples of the finished optimizer steps, in steps at the target batch."""
        target = self.target
        return self.consumed / target if target else 0.0

    def on_fit_start(self, fit: Fit) -> None:
        """Refuse what cannot follow the ramp exactly, then take over the stepping of per-step schedulers (and
        ``max_steps``, which counts target-batch steps)."""
        trainer, pl, name = fit.trainer, fit.pl, type(fit.module).__name__
        if not fit.module.automatic_optimization:
            raise ValueError(
                f"{_WHO} grows the batch through Lightning's gradient accumulation, and {name} sets "
                "`automatic_optimization = False`: accumulate by hand, or train without a batch ramp"
            )
        self._refuse(fit, pl.callbacks.GradientAccumulationScheduler)
        if getattr(trainer.strategy, "handles_gradient_accumulation", False):
            raise ValueError(
                f"{_WHO} grows the batch through Lightning's gradient accumulation, and "
                f"{type(trainer.strategy).__name__} accumulates itself (DeepSpeed): train without a batch ramp"
            )
        per_step = [c for c in trainer.lr_scheduler_configs if c.interval == "step"]
        for config in trainer.lr_scheduler_configs:
            scheduler = type(config.scheduler).__name__
            if config.reduce_on_plateau:
                raise ValueError(
                    f"{_WHO} counts the schedule in samples, and {scheduler} follows a metric whose steps change "
                    "meaning as the batch grows: use another scheduler"
                )
            if config.interval == "step" and config.frequency != 1:
                raise ValueError(
                    f"{_WHO} steps each per-step scheduler once per target batch of samples and supports "
                    f"`frequency=1`, got frequency={config.frequency} for {scheduler}"
                )
        if per_step and type(fit.module).lr_scheduler_step is not pl.LightningModule.lr_scheduler_step:
            raise ValueError(
                f"{_WHO} steps the per-step schedulers itself with `scheduler.step()`, but {name} overrides "
                "`lr_scheduler_step` (timm schedulers need it): use per-epoch scheduling or no batch ramp"
            )
        self.target_accumulation = int(trainer.accumulate_grad_batches)
        self._planned = float(trainer.max_steps) if trainer.max_steps != -1 else None
        self._held = fit_loop.lift_limits(trainer, epochs=False, intervals=("step",))

    @staticmethod
    def _refuse(fit: Fit, cls: type) -> None:
        """Refuse a callback of class ``cls`` in the Trainer: it changes what the ramp sets."""
        if any(isinstance(c, cls) for c in fit.trainer.callbacks):
            raise ValueError(
                f"{_WHO} sets the accumulation (and reads the per-device batch) itself, and a {cls.__name__} in the "
                "same Trainer changes it: use one of the two"
            )

    def on_train_start(self, fit: Fit) -> None:
        if not self.batch.known:
            raise ValueError(
                f"{_WHO} needs the per-device batch size when training starts, and the train loader does not expose "
                "it: pass `batch_size=` (the number of samples each device feeds per step)"
            )
        self._round = sum(self.batch.read_sizes or ())
        target = self.target
        assert target is not None
        self.ramp.check(target, self._round)  # before anything changes
        schedulers = [c.scheduler for c in fit.trainer.lr_scheduler_configs if c.interval == "step"]
        self._schedule = ScaleInvariantSchedule(schedulers, [1.0] * len(schedulers), total=self._planned or math.inf)
        batches = 0
        if self._state is not None:  # resumed: the samples so far and the schedulers' steps taken
            self.consumed = float(self._state["consumed"])
            self._schedule.stepped = [int(n) for n in self._state["stepped"]]
            batches = self._resume_accumulation(fit, self._state)
        self._follow(fit, batches=batches)
        if self._planned is not None and self._schedule.done(self.progress):
            fit_loop.stop_after_this_step(fit.trainer)

    def on_train_epoch_start(self, fit: Fit) -> None:
        self._follow(fit, batches=0)

    def on_train_batch_end(self, fit: Fit) -> None:
        """Count the batch's samples; after an optimizer step, step the schedulers the samples call for, stop when
        ``max_steps`` target-batch steps are done, and grow the accumulation where the next window aligns."""
        trainer = fit.trainer
        self._window += self._round or 0
        batches = fit_loop.batches_this_epoch(trainer)
        if batches % trainer.accumulate_grad_batches and batches != trainer.num_training_batches:
            return  # still accumulating: Lightning steps when the batches divide by it, or at the epoch's last batch
        self.consumed, self._window = self.consumed + self._window, 0
        assert self._schedule is not None
        self._schedule.advance(self.progress)
        if self._planned is not None and self._schedule.done(self.progress):
            fit_loop.stop_after_this_step(trainer)
        self._follow(fit, batches=batches)

    def _resume_accumulation(self, fit: Fit, state: dict[str, Any]) -> int:
        """Put back the accumulation in force when the checkpoint was saved (a change the ramp asked for may still
        wait for its window to align) and the samples of the step being accumulated; return the batches of the epoch
        done, where the next change may take over. A checkpoint without them (an older release) or saved with another
        micro-batch round takes the ramp's accumulation now, at once, as before."""
        accumulation = state.get("accumulation")
        if accumulation is None or state.get("round") != self._round:
            return 0
        trainer = fit.trainer  # it holds its own accumulation, the target, until the ramp sets one
        trainer.accumulate_grad_batches = min(int(accumulation), int(trainer.accumulate_grad_batches))
        done = fit_loop.batches_done_on_resume(trainer)
        # the batches of the step being accumulated: changes happen only where a window starts
        self._window = done % trainer.accumulate_grad_batches * self._round
        return done

    def _follow(self, fit: Fit, batches: int) -> None:
        """Set the accumulation the ramp asks for after ``batches`` batches of this epoch, if the window aligns."""
        target = self.target
        if target is None or self._round is None:
            return
        wanted = self.ramp.accumulation(self.consumed, target, self._round)
        if wanted != fit.trainer.accumulate_grad_batches and aligned(batches, wanted):
            fit.trainer.accumulate_grad_batches = wanted
            self.batch.request()  # a change of scale before the next batch
        self._accumulation = int(fit.trainer.accumulate_grad_batches)

    def describe(self, scale: Scale) -> str:
        target = self.target
        if target is None:
            return ""
        return f"; {self.ramp.describe(target)}, {self.consumed:.0f} consumed"

    def metrics(self, fit: Fit) -> dict[str, float]:
        effective = self.batch.effective
        return {} if effective is None else {"lrbs/effective_batch_size": float(effective)}

    def close(self, fit: Fit) -> None:
        if self._held is not None:
            fit_loop.restore_limits(fit.trainer, self._held)
            self._held = None
        if self.target_accumulation is not None:  # the Trainer's own accumulation back
            fit.trainer.accumulate_grad_batches = self.target_accumulation

    def state_dict(self) -> dict[str, Any]:
        if self._schedule is None:
            return {"batch_schedule": self._state}
        return {
            "batch_schedule": {
                "consumed": self.consumed,
                "stepped": list(self._schedule.stepped),
                "accumulation": self._accumulation,
                "round": self._round,
            }
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = state.get("batch_schedule")
