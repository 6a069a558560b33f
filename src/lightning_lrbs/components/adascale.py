r"""``rule="adascale"``: each optimizer step's LR times the AdaScale gain :math:`r_t \in [1, S]` of the gradient noise
measured at the steps before it (Johnson et al. 2020; :class:`~lightning_lrbs.adascale.AdaScaleLR`), over the
warmup. The noise comes from the :class:`~lightning_lrbs.components.noise.NoiseScale` component, which measures every
step under this rule."""

from __future__ import annotations

from typing import Any

from lightning_lrbs._lightning import loaders, strategy
from lightning_lrbs.adascale import AdaScaleLR, Statistics, check_adascale_optimizer
from lightning_lrbs.components.base import Component, Fit, Scale
from lightning_lrbs.components.noise import NoiseScale
from lightning_lrbs.rules import is_adaptive
from lightning_lrbs.summary import lrbs_lr_names, scale_metrics

__all__ = ["AdaScale"]


class AdaScale(Component):
    """Refuse what the gain cannot follow, and apply it (one optimizer).

    Args:
        noise: The component whose estimator gives the statistics.
        accumulation: The ``accumulation`` given for manual optimization, if any.
    """

    def __init__(self, noise: NoiseScale, accumulation: int | None) -> None:
        self.noise = noise
        self.accumulation = accumulation
        self.setup(None)

    def setup(self, fit: Fit | None) -> None:
        self.close(fit)
        self.lr: AdaScaleLR | None = None
        self._state: dict[str, Any] | None = None  # from a checkpoint
        self._metric_names: list[list[str]] = []
        self._effective = 0

    def statistics(self) -> Statistics:
        estimator = self.noise.estimator
        return (None, None) if estimator is None else (estimator.grad_sq_norm, estimator.grad_var)

    @property
    def progress(self) -> float:
        r""":math:`\tau = \sum_t r_t` of the finished steps (0 before the first change of scale)."""
        return self.lr.progress if self.lr is not None else 0.0

    def on_fit_start(self, fit: Fit) -> None:
        """Refuse, before anything changes, what rule="adascale" cannot do exactly."""
        trainer, name = fit.trainer, type(fit.module).__name__
        optimizers = list(trainer.optimizers)
        if len(optimizers) != 1:
            raise ValueError(
                f"rule='adascale' scales one optimizer (one gain from all measured gradients), but {name} has "
                f"{len(optimizers)}: use another rule"
            )
        check_adascale_optimizer(optimizers[0])
        if not fit.module.automatic_optimization:
            raise ValueError(
                f"rule='adascale' measures the gradient noise of each step and needs automatic optimization, but "
                f"{name} sets `automatic_optimization = False`: use `lightning_lrbs.adascale.AdaScaleLR` in your loop"
            )
        accumulations = [loaders.accumulation_now(fit.pl, trainer, self.accumulation)]
        for callback in trainer.callbacks:
            if isinstance(callback, fit.pl.callbacks.GradientAccumulationScheduler):
                accumulations += [callback.get_accumulate_grad_batches(e) for e in [0, *callback.scheduling]]
        if strategy.micro_batches(trainer, min(accumulations)) < 2:
            raise ValueError(
                "rule='adascale' needs the gradient noise of every optimizer step, measured from two or more "
                f"micro-batch gradients per step, and this run has {strategy.one_replica(trainer)} without gradient "
                "accumulation: set `accumulate_grad_batches>=2` (Trainer) or train on 2 or more devices (data-parallel)"
            )
        if is_adaptive(optimizers[0]) and strategy.parallelism(trainer).group_size > 1:
            raise ValueError(
                f"rule='adascale' measures {type(optimizers[0]).__name__}'s noise on its preconditioned gradients, "
                "which is not supported under tensor parallelism (tensor_parallel_size > 1): use SGD, or "
                "rule='sqrt' / rule='sde' for adaptive optimizers"
            )

    def commit(self, fit: Fit, scale: Scale) -> None:
        """Start the gain (after the warmup: the step uses scheduled × w(t) × r_t), or follow a new effective batch."""
        if self.lr is None:
            self.lr = AdaScaleLR(scale.optimizers[0], self.statistics, scale.base, scale.effective)
            if self._state is not None:  # resumed: the progress so far
                self.lr.load_state_dict(self._state)
        else:
            self.lr.set_batch_sizes(scale.base, scale.effective)
        self._effective = scale.effective
        if scale.first:
            self._metric_names = lrbs_lr_names(scale.optimizers)

    @property
    def factors(self) -> tuple[float, ...]:
        """The factor the next step applies (the gain, or its square root for adaptive optimizers)."""
        return (self.lr.factor,) if self.lr is not None else ()

    def metrics(self, fit: Fit) -> dict[str, float]:
        if self.lr is None:
            return {}
        return scale_metrics(self._effective, self._metric_names, self.factors)

    def close(self, fit: Fit | None) -> None:
        lr: AdaScaleLR | None = getattr(self, "lr", None)
        if lr is not None:  # its last gain stays readable
            lr.remove()

    def state_dict(self) -> dict[str, Any]:
        return {"adascale": self.lr.state_dict() if self.lr is not None else self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = state.get("adascale")
