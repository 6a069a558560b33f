r"""The time constants counted in steps follow the batch: Adam's betas and eps (``rule="sde"``), decoupled weight
decay, a model EMA's decay (:mod:`lightning_lrbs.sde`). They are recomputed from their originals at each change of
scale (never compounded); the originals are checkpointed."""

from __future__ import annotations

from typing import Any

from lightning_lrbs._lightning import callbacks
from lightning_lrbs.components.base import Component, Fit, Scale
from lightning_lrbs.rules import Rule
from lightning_lrbs.sde import TimeConstantPlan, plan_time_constants
from lightning_lrbs.summary import lrbs_lr_names

__all__ = ["TimeConstants"]


class TimeConstants(Component):
    """Plan the betas, eps, weight decays and EMA decays at each change of scale, and apply the plan.

    Args:
        rule: The rule (``"sde"`` changes betas and eps).
        weight_decay: Scale decoupled weight decay.
        ema: Scale the decay of a ``WeightAveraging`` EMA in the Trainer.
    """

    def __init__(self, rule: Rule, weight_decay: bool, ema: bool) -> None:
        self.rule, self.weight_decay, self.ema = rule, weight_decay, ema
        self.setup(None)

    def setup(self, fit: Fit | None) -> None:
        self.plan_in_force: TimeConstantPlan | None = None
        self._state: dict[str, Any] | None = None  # the originals and kappa (from a checkpoint until the first change)
        self._next: TimeConstantPlan | None = None
        self._scale: Scale | None = None  # the change of scale in force
        self._names: list[list[str]] = []

    def plan(self, fit: Fit, scale: Scale) -> None:
        self._next = self._plan(fit, scale)

    def _plan(self, fit: Fit, scale: Scale) -> TimeConstantPlan:
        previous = self.plan_in_force
        return plan_time_constants(
            scale.optimizers,
            scale.targets,
            kappa=scale.ratio,
            rule=self.rule,
            schedulers=scale.schedulers,
            averaged_models=callbacks.averaged_models(fit.pl, fit.trainer),
            weight_decay=self.weight_decay,
            ema=self.ema,
            state=self._state,
            ema_originals=previous.ema_originals() if previous is not None else None,
        )

    def commit(self, fit: Fit, scale: Scale) -> None:
        plan, self._next = self._next, None
        assert plan is not None  # planned by `plan`
        plan.apply()
        self.plan_in_force, self._state, self._scale = plan, plan.state_dict(), scale
        if scale.first:
            self._names = lrbs_lr_names(scale.optimizers)

    def on_train_batch_start(self, fit: Fit, batch: Any) -> None:
        """A param group added since the last change of scale (``BackboneFinetuning``, ``add_param_group``) gets the
        time constants of the scale in force, from the values it was added with."""
        plan, scale = self.plan_in_force, self._scale
        if plan is None or scale is None:
            return
        if all(len(o.param_groups) == len(g) for o, g in zip(plan.optimizers, plan.groups)):
            return
        self.plan(fit, scale)
        self.commit(fit, scale)

    def hyperparameters(self) -> dict[str, Any]:
        """The betas, eps, weight decays and EMA decays changed, as now in force (``lrbs/beta1-Adam``, ...)."""
        plan = self.plan_in_force
        return {} if plan is None else plan.hyperparameters(self._names)

    def state_dict(self) -> dict[str, Any]:
        return {"time_constants": self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = state.get("time_constants")
