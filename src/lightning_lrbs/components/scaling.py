r"""The rescaling: every learning rate, and everything a scheduler derived from it, follows the effective batch.

At each change of scale the factor of each optimizer becomes :math:`f = \text{rule}(B_\text{eff} / B_\text{base})`
(:func:`~lightning_lrbs.rules.scale_factor`), applied as ``target / applied`` with
:func:`~lightning_lrbs.rescale.rescale_`, so the LRs are never scaled twice: the factor applied is checkpointed and a
resume on another number of devices rescales by new / applied. An LR finder's suggestion is an LR at the batch it swept
at, which then becomes :math:`B_\text{base}`; ``StochasticWeightAveraging``'s ``swa_lrs`` and the backbone LRs
``BackboneFinetuning`` keeps follow the factor too.
"""

from __future__ import annotations

from typing import Any

from lightning_lrbs._lightning import callbacks
from lightning_lrbs.components.base import Component, Fit, Scale
from lightning_lrbs.rescale import check_numeric_lrs, flatten_schedulers, rescale_, unsaved_schedulers
from lightning_lrbs.rules import Rule, scale_factor
from lightning_lrbs.summary import scaling_notes

__all__ = ["LRScaling"]


class LRScaling(Component):
    """Compute each change of scale and rescale the optimizers, the schedulers and SWA's ``swa_lrs`` to it.

    Args:
        rule: The rule (validated by the callback).
        base_batch_size: The base batch size given (``None``: the per-device batch).
    """

    def __init__(self, rule: Rule, base_batch_size: int | None) -> None:
        self.rule = rule
        self.base_batch_size = base_batch_size
        self.tuned: tuple[float, int] | None = None  # (suggestion, accumulation) of a `Tuner.lr_find` fit before this
        self._swa_originals: dict[int, Any] = {}  # id(StochasticWeightAveraging) -> its swa_lrs as the user gave them
        self._backbone_originals: dict[int, Any] = {}  # id(BackboneFinetuning) -> its backbone_initial_lr
        self._setup_accumulation = 1
        self.setup(None)

    def setup(self, fit: Fit | None) -> None:
        self.factors: list[float] | None = None  # applied now, relative to the module's own LRs
        self.base: int | None = None
        self.effective: int | None = None
        self.finder_base: int | None = None  # the batch an LR finder swept at, when the module's LR comes from it
        self._swa_text = ""
        if fit is not None:
            self._setup_accumulation = int(fit.trainer.accumulate_grad_batches)  # what an LR finder sweep runs with

    def on_fit_start(self, fit: Fit) -> None:
        # Lightning stands a `_MockOptimizer` without param groups in for a `configure_optimizers` returning None.
        if not any(opt.param_groups for opt in fit.trainer.optimizers):
            raise ValueError(
                f"{fit.who} scales optimizer learning rates, but `configure_optimizers` of "
                f"{type(fit.module).__name__} returned no optimizer"
            )
        check_numeric_lrs(fit.trainer.optimizers)  # `lr=None` (Adafactor) or no `lr` key: nothing to scale

    def scale(self, fit: Fit, per_rank: list[int], accumulation: int, first: bool) -> Scale:
        """The change of scale to ``per_rank`` × ``accumulation`` (may raise; changes nothing but the LR finder's base,
        which counts once, for the fit that follows it)."""
        nominal = self.base_batch_size if self.base_batch_size is not None else per_rank[0]
        if first and self.factors is None:
            tuned, self.tuned = self.tuned, None
            found = callbacks.found_lr(fit.pl, fit.trainer, tuned, self._setup_accumulation)
            if found is not None:  # the LR finder swept at this run's batch: its suggestion is the LR at that batch
                self.finder_base = sum(per_rank) * found[1]
        base = self.finder_base if self.finder_base is not None else nominal
        optimizers = list(fit.trainer.optimizers)
        effective = sum(per_rank) * accumulation
        targets = [scale_factor(effective / base, self.rule, opt) for opt in optimizers]
        # The warmup starts from the LR the rule would have scaled from, also when a finder gave the LR.
        starts = targets
        if self.finder_base is not None:
            starts = [scale_factor(effective / nominal, self.rule, opt) for opt in optimizers]
        if self.factors is not None and len(self.factors) != len(optimizers):
            raise ValueError(
                f"the checkpoint's {fit.who} state holds {len(self.factors)} scale factors, but the module has "
                f"{len(optimizers)} optimizers"
            )
        schedulers = flatten_schedulers(config.scheduler for config in fit.trainer.lr_scheduler_configs)
        return Scale(
            per_rank, accumulation, base, nominal, targets, starts, self.factors, first, optimizers, schedulers
        )

    def commit(self, fit: Fit, scale: Scale) -> None:
        relative = [t / a for t, a in zip(scale.targets, scale.applied)]
        rescale_(scale.optimizers, scale.schedulers, relative)  # checked everything before it changed anything
        if scale.resumed:  # schedulers that save no LRs were rebuilt at the module's LRs
            rescale_(scale.optimizers, unsaved_schedulers(scale.schedulers), scale.applied, param_groups=False)
        self._swa_text = callbacks.scale_swa(fit.pl, fit.trainer, scale.targets, self._swa_originals)
        callbacks.scale_backbone_finetuning(fit.pl, fit.trainer, scale.targets, relative, self._backbone_originals)
        self.factors, self.base, self.effective = list(scale.targets), scale.base, scale.effective

    def describe(self, scale: Scale) -> str:
        return scaling_notes(
            scale.targets,
            resumed_from=scale.previous if scale.first else None,  # resumed from a checkpoint that holds scaled LRs
            adascale_ratio=scale.ratio if self.rule == "adascale" else None,
            finder_base=self.finder_base,
            nominal_base=scale.nominal,
        )

    def describe_last(self) -> str:
        """The summary's last part: SWA's ``swa_lrs`` as scaled."""
        return self._swa_text

    def teardown(self, fit: Fit, stage: str) -> None:
        tuned = callbacks.tuned_suggestion(fit.pl, fit.trainer)  # `Tuner.lr_find`: keep it for the next fit
        if tuned is not None:
            self.tuned = tuned

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale_factors": list(self.factors) if self.factors is not None else None,
            "effective_batch_size": self.effective,
            "base_batch_size": self.base,
            "lr_finder_base": self.finder_base,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        factors = state.get("scale_factors")
        self.factors = None if factors is None else [float(f) for f in factors]
        self.effective = state.get("effective_batch_size")
        self.finder_base = state.get("lr_finder_base")
