"""The learning rate each optimizer step uses, once the warmup and the gain are applied
(:class:`~lightning_lrbs.multipliers.StepMultipliers`): logged as ``lrbs/lr-<Optimizer>[-<n>][/pg<i>]`` under the names
``LearningRateMonitor`` gives the groups (which logs the LR before them), and kept out of a checkpoint written from
inside a step (an ``OnExceptionCheckpoint``, a SLURM signal), which must hold what a finished step leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer

from lightning_lrbs._lightning import fit_loop
from lightning_lrbs.components.base import Component, Fit, Scale
from lightning_lrbs.multipliers import StepMultipliers
from lightning_lrbs.summary import lrbs_lr_names

__all__ = ["StepLR"]


class StepLR(Component):
    """Log the LR each step uses (``log_lr``) and write the scheduled LRs into checkpoints written mid-step.

    Args:
        log: Log the LRs.
    """

    def __init__(self, log: bool) -> None:
        self.log = log
        self._observing: list[tuple[StepMultipliers, Callable[[Optimizer], None]]] = []

    def setup(self, fit: Fit | None) -> None:
        self.close(fit)

    def commit(self, fit: Fit, scale: Scale) -> None:
        if scale.first and self.log:  # observers run once the step's multipliers are applied
            for index, optimizer in enumerate(scale.optimizers):
                stack, observer = StepMultipliers.of(optimizer), _lr_logger(fit, index)
                stack.observe(observer)
                self._observing.append((stack, observer))

    def on_save_checkpoint(self, fit: Fit, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("optimizer_states")
        if not isinstance(states, list):
            return
        for optimizer, state in zip(fit.trainer.optimizers, states):
            stack = StepMultipliers.find(optimizer)
            if stack is not None and stack.pending and isinstance(state, dict):
                stack.unscaled_state_dict(state)

    def close(self, fit: Fit | None) -> None:
        for stack, observer in self._observing:
            stack.discard_observers([observer])
        self._observing.clear()


def _lr_logger(fit: Fit, index: int) -> Callable[[Optimizer], None]:
    """Log the LR of each group of optimizer ``index`` at its step, under the name ``LearningRateMonitor`` gives that
    group now (groups added later and scheduler ``name`` included), while the callback is in the Trainer."""
    trainer = fit.trainer

    def log_lr(optimizer: Optimizer) -> None:
        if not trainer.loggers or not fit_loop.logs_now(trainer) or not fit.active:
            return
        names = lrbs_lr_names(trainer.optimizers, fit_loop.scheduled(trainer))[index]
        metrics = {
            name: float(group["lr"])
            for group, name in zip(optimizer.param_groups, names)
            if group.get("lr") is not None  # an opted-out group may have none (Adafactor's relative step)
        }
        fit_loop.log_metrics(trainer, metrics)

    return log_lr
