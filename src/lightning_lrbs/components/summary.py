"""The one line that says what a change of scale did (rank zero), the numbers it logs, the hyperparameters it gives
the loggers, and the warnings it deserves; and every component's numbers at each step the Trainer logs. Acts last, once
every other component committed a change of scale or started a batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_lrbs._lightning import fit_loop, strategy
from lightning_lrbs.components.base import Component, Fit, Scale
from lightning_lrbs.components.scaling import LRScaling
from lightning_lrbs.components.time_constants import TimeConstants
from lightning_lrbs.components.warmup import Warmup
from lightning_lrbs.summary import (
    describe_scaling,
    lrbs_lr_names,
    optimizer_names,
    scale_metrics,
    scaling_hparams,
    scaling_warnings,
)

__all__ = ["Summary"]


class Summary(Component):
    """Say what a change of scale did.

    Args:
        scaling: The rescaling. warmup: The warmup. time_constants: The time constants.
        parts: The components whose :meth:`~lightning_lrbs.components.base.Component.describe` follows the line
            (and whose :meth:`~lightning_lrbs.components.base.Component.metrics` are logged with it), in order.
    """

    def __init__(
        self, scaling: LRScaling, warmup: Warmup, time_constants: TimeConstants, parts: Sequence[Component]
    ) -> None:
        self.scaling, self.warmup, self.time_constants, self.parts = scaling, warmup, time_constants, list(parts)
        self.components: list[Component] = []  # every component (the callback sets it): their metrics are logged
        self.note = ""  # what ends the line, e.g. where the settings came from
        self.text = ""

    def setup(self, fit: Fit | None) -> None:
        self.text = ""

    def on_train_batch_start(self, fit: Fit, batch: Any) -> None:
        """Log every component's :meth:`~lightning_lrbs.components.base.Component.metrics` when the Trainer logs."""
        trainer = fit.trainer
        if trainer.loggers and fit_loop.logs_now(trainer):
            metrics: dict[str, float] = {}
            for component in self.components:
                metrics.update(component.metrics(fit))
            if metrics:
                fit_loop.log_metrics(trainer, metrics)

    def commit(self, fit: Fit, scale: Scale) -> None:
        trainer, rule = fit.trainer, self.scaling.rule
        optimizers, factors = list(scale.optimizers), list(scale.targets)
        names = [n.label for n in optimizer_names(optimizers, fit_loop.scheduled(trainer))]
        plan = self.time_constants.plan_in_force
        warmup_steps, starts = self.warmup.length or 0, self.warmup.start_factors or ()
        devices, nodes = trainer.num_devices, trainer.num_nodes
        text = describe_scaling(
            scale.effective,
            scale.per_rank,
            scale.accumulation,
            scale.base,
            rule,
            optimizers,
            factors,
            devices=devices,
            nodes=nodes,
            warmup_steps=warmup_steps,
            start_factors=starts,
            names=names,
            details=[plan.describe(i) if plan else "" for i in range(len(optimizers))],
            tail=plan.describe_ema() if plan else "",
            parallel=strategy.describe(trainer),
        )
        text += self.scaling.describe(scale) + "".join(part.describe(scale) for part in self.parts)
        self.text = text + self.scaling.describe_last() + self.note
        fit.info(self.text)
        lr_names = lrbs_lr_names(optimizers)
        metrics = scale_metrics(scale.effective, lr_names, fit.callback.scale_factors)
        for part in self.parts:
            metrics.update(part.metrics(fit))
        fit_loop.log_metrics(trainer, metrics)
        hparams: dict[str, Any] = scaling_hparams(
            scale.effective,
            scale.per_rank[0],
            scale.accumulation,
            scale.base,
            rule,
            optimizers,
            factors,
            names=names,
            devices=devices,
            nodes=nodes,
            warmup_steps=warmup_steps,
            start_factors=starts,
        )
        hparams.update(self.time_constants.hyperparameters())
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
        if scale.first and self.scaling.finder_base is None:
            for message in scaling_warnings(rule, optimizers, factors, scale.effective, scale.base, fit.who):
                fit.warn(message)
