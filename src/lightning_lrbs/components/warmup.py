r"""The linear warmup: :math:`w(t) = s + (1 - s)\min(1, t/W)` on the scheduled LR of optimizer step :math:`t`
(:class:`~lightning_lrbs.warmup.LinearWarmup`), counted in ``trainer.global_step`` (under a batch ramp: in steps at the
target batch, from the samples so far). Its length is fixed at the fit's first change of scale (``warmup_epochs``
converted with the optimizer steps of the first epoch) and checkpointed with the start factors: a resumed or rescaled
run never restarts it."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

from lightning_lrbs.components.base import Component, Fit, Scale
from lightning_lrbs.components.batch_schedule import BatchSchedule
from lightning_lrbs.warmup import LinearWarmup, default_start_factor, steps_per_epoch

__all__ = ["Warmup"]


class Warmup(Component):
    """Resolve the warmup's length and start factors at the first change of scale, and run it.

    Args:
        steps: ``warmup_steps``. epochs: ``warmup_epochs``. start_factor: ``warmup_start_factor``.
        adascale: Whether the rule is ``"adascale"`` (its static factor is 1: start from :math:`1/S`).
    """

    def __init__(
        self, steps: int, epochs: float, start_factor: float | None, adascale: bool, schedule: BatchSchedule | None
    ) -> None:
        self.steps, self.epochs, self.start_factor, self.adascale = steps, epochs, start_factor, adascale
        self.schedule = schedule
        self.setup(None)

    def setup(self, fit: Fit | None) -> None:
        self.length: int | None = None  # in optimizer steps, fixed once (never restarted)
        self.start_factors: list[float] | None = None
        self.warmup: LinearWarmup | None = None
        self._steps_check: tuple[int, int] | None = None  # (expected steps of the first epoch, global_step at start)
        self._next: int | None = None

    def plan(self, fit: Fit, scale: Scale) -> None:
        if scale.first:
            self._next = self._resolve_length(fit, scale.accumulation)

    def _resolve_length(self, fit: Fit, accumulation: int) -> int:
        """The length in optimizer steps: restored from a checkpoint (never recomputed), or resolved now."""
        if self.length is not None:
            return self.length
        if not self.epochs:
            return self.steps
        if self.schedule is not None and self.schedule.target_accumulation is not None:  # steps at the target batch
            accumulation = self.schedule.target_accumulation
        per_epoch = _first_epoch_steps(fit.trainer, self.epochs, accumulation)
        if fit.trainer.ckpt_path is None and self.schedule is None:  # a whole first epoch: checked when it ends
            self._steps_check = (per_epoch, fit.trainer.global_step)
        return int(math.ceil(self.epochs * per_epoch - 1e-9))

    def commit(self, fit: Fit, scale: Scale) -> None:
        if not scale.first or self._next is None:
            return
        self.length, self._next = self._next, None
        n = len(scale.optimizers)
        if self.start_factors is None or len(self.start_factors) != n:
            if self.start_factor is not None:
                self.start_factors = [self.start_factor] * n
            else:  # adascale: from the unscaled LR as for linear, s = 1/S (its static factor is 1)
                self.start_factors = [default_start_factor(scale.ratio if self.adascale else f) for f in scale.starts]
        if self.length > 0:
            self.warmup = LinearWarmup(list(scale.optimizers), self.length, self.start_factors, step_fn=self._step(fit))

    def _step(self, fit: Fit) -> Callable[[], float]:
        """:math:`t`: ``trainer.global_step``, or the target-batch steps of the samples so far under a batch schedule;
        past the warmup's end (no warming) while an LR finder sweeps in the middle of training."""
        trainer, callback, schedule = fit.trainer, fit.callback, self.schedule

        def step() -> float:
            if callback not in trainer.callbacks:
                return sys.maxsize
            return trainer.global_step if schedule is None else schedule.progress

        return step

    def on_train_epoch_end(self, fit: Fit) -> None:
        if self._steps_check is None:
            return
        (expected, start), self._steps_check = self._steps_check, None
        trainer = fit.trainer
        made = trainer.global_step - start
        stopped = trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step
        if made != expected and not stopped:
            fit.warn(
                f"{fit.who}: `warmup_epochs={self.epochs}` was converted with {expected} optimizer steps per epoch, "
                f"but the first epoch made {made} (trainer.global_step): the warmup lasts {self.length} steps, not "
                f"{self.epochs} epoch(s). Give `warmup_steps=` instead"
            )

    def close(self, fit: Fit) -> None:
        if self.warmup is not None:
            self.warmup.remove()
            self.warmup = None

    def state_dict(self) -> dict[str, Any]:
        return {"warmup_steps": self.length, "warmup_start_factors": self.start_factors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.length = state.get("warmup_steps")
        starts = state.get("warmup_start_factors")
        self.start_factors = None if starts is None else [float(s) for s in starts]


def _first_epoch_steps(trainer: Any, warmup_epochs: float, accumulation: int) -> int:
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
