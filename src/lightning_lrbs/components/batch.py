r"""The effective batch size: what every data-parallel replica feeds and how many micro-batches a step averages.

.. math::

    B_\text{eff} = A \sum_{\text{replicas } r} b_r

with :math:`b_r` the batch size data-parallel replica :math:`r` actually feeds (each rank under DDP; the ranks of one
tensor-parallel group feed the same samples and count once, :mod:`lightning_lrbs._lightning.strategy`), read from the
train loaders Lightning built or from the first batch, and :math:`A` the accumulation now (``accumulate_grad_batches``,
a ``GradientAccumulationScheduler``, or the ``accumulation`` given for manual optimization). It is read when training
starts and again when it may have changed: at an epoch start (a reloaded loader, a new accumulation) or a batch start
(a loader that only its first batch tells, a ``BatchSizeFinder``); :meth:`EffectiveBatch.changed` tells the callback
when the scale must follow.
"""

from __future__ import annotations

from typing import Any

from lightning_lrbs._lightning import callbacks, loaders, strategy
from lightning_lrbs.components.base import Component, Fit, Scale

__all__ = ["EffectiveBatch"]


class EffectiveBatch(Component):
    """Read the per-rank batch sizes and the accumulation, and say when they differ from those in force.

    Args:
        batch_size: The per-device batch size to use instead of reading it.
        accumulation: The accumulation to count instead of the Trainer's (manual optimization).
    """

    def __init__(self, batch_size: int | None, accumulation: int | None) -> None:
        self.batch_size = batch_size
        self.accumulation_override = accumulation
        self.setup(None)

    def setup(self, fit: Fit | None) -> None:
        self.per_rank: list[int] | None = None  # in force (committed)
        self.accumulation: int | None = None  # in force (committed)
        self._read: list[int] | None = None  # read, not yet in force
        self._pending = False  # only the next batch tells the size

    def accumulation_now(self, fit: Fit) -> int:
        """The accumulation of the current epoch (:func:`lightning_lrbs._lightning.loaders.accumulation_now`)."""
        return loaders.accumulation_now(fit.pl, fit.trainer, self.accumulation_override)

    def read(self, fit: Fit, batch: Any) -> list[int] | None:
        """Every data-parallel replica's per-step batch size (the override, the loaders' or the batch's); ``None`` if
        not found here."""
        local = loaders.local_batch_size(fit.pl, fit.trainer, batch, self.batch_size)
        return None if local is None else strategy.replica_sizes(fit.trainer, local)

    @property
    def effective(self) -> int | None:
        """The effective batch in force (``None`` before the first change of scale)."""
        if self.per_rank is None or self.accumulation is None:
            return None
        return sum(self.per_rank) * self.accumulation

    @property
    def read_sizes(self) -> list[int] | None:
        """The sizes read and not yet in force, else those in force (``None`` before they are known)."""
        return self._read if self._read is not None else self.per_rank

    def request(self) -> None:
        """Have the callback compare the accumulation now with the one in force (a batch schedule changed it)."""
        if self._read is None:
            self._read = self.per_rank

    @property
    def known(self) -> bool:
        """Whether the sizes are known now (else the first batch will tell)."""
        return not self._pending

    def changed(self, fit: Fit) -> list[int] | None:
        """The per-rank sizes to scale to, when they or the accumulation differ from those in force, else ``None``."""
        sizes = self._read
        if sizes is None:
            return None
        self._read = None
        if sizes != self.per_rank or self.accumulation_now(fit) != self.accumulation:
            return sizes
        return None

    def on_fit_start(self, fit: Fit) -> None:
        scheduler_cls = fit.pl.callbacks.GradientAccumulationScheduler
        accumulation, trainer = self.accumulation_override, fit.trainer
        if accumulation is not None and (
            trainer.accumulate_grad_batches != 1
            or any(isinstance(c, scheduler_cls) for c in getattr(trainer, "callbacks", []))
        ):
            raise ValueError(
                f"`accumulation={accumulation}` is for accumulation by hand under manual optimization, but the "
                f"Trainer accumulates itself (accumulate_grad_batches={trainer.accumulate_grad_batches} or a "
                "GradientAccumulationScheduler): leave `accumulation` unset"
            )

    def on_train_start(self, fit: Fit) -> None:
        self._read = self.read(fit, batch=None)
        self._pending = self._read is None  # only the first batch tells; scaled before its optimizer step

    def on_train_epoch_start(self, fit: Fit) -> None:
        if self.per_rank is None or callbacks.swa_bn_pass(fit.pl, fit.trainer):  # SWA's BatchNorm pass: no change
            return
        self._read = self.per_rank
        reload = getattr(fit.trainer, "reload_dataloaders_every_n_epochs", 0) > 0
        if reload and self.batch_size is None:  # the loader may be a new one, with another batch size
            read = self.read(fit, batch=None)
            if read is None:
                self._pending = True  # read it from this epoch's first batch
            else:
                self._read = read
        finder = fit.pl.callbacks.BatchSizeFinder
        if self.batch_size is None and any(isinstance(c, finder) for c in getattr(fit.trainer, "callbacks", ())):
            self._pending = True  # a BatchSizeFinder may rebuild the loader in its own epoch-start hook

    def read_batch(self, fit: Fit, batch: Any) -> None:
        """At a batch start: read the size from the batch if only it can tell."""
        if not self._pending:
            return
        self._pending = False
        self._read = self.read(fit, batch=batch)
        if self._read is None:
            raise ValueError(
                f"{fit.who} could not find the per-device batch size in the train loader or the first batch: pass "
                "`batch_size=` (the number of samples each device feeds per step)"
            )

    def commit(self, fit: Fit, scale: Scale) -> None:
        self.per_rank, self.accumulation = list(scale.per_rank), scale.accumulation
