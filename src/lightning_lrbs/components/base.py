"""The interface every feature of :class:`~lightning_lrbs.BatchScalingCallback` implements, and what they share.

A **component** is one feature (the effective batch, the rescaling, the warmup, the noise scale, ...). It owns its
state, including its slice of the callback's checkpoint state, and acts in the Lightning hooks it needs; every hook
it does not need is a no-op here. The callback builds the components its arguments ask for and forwards each hook to
all of them in one fixed order (see :mod:`lightning_lrbs.callback`).

A **change of scale** (the effective batch is known for the first time, or it changed: a reloaded loader, a
``GradientAccumulationScheduler``, a batch schedule) is the one event that touches several components at once. It
runs in two phases, so that a refusal never leaves a half-scaled run: :meth:`Component.plan` on every component
(checks, may raise, changes nothing), then :meth:`Component.commit` on every component (changes, never raises).
Both receive the same :class:`Scale`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch.optim import Optimizer

__all__ = ["Component", "Components", "Fit", "Scale"]


@dataclass(frozen=True)
class Fit:
    """What a hook works on: the Trainer, its module, the Lightning namespace, and the callback itself.

    Attributes:
        pl: ``lightning.pytorch`` or ``pytorch_lightning``: the namespace of the Trainer's classes.
        trainer: The Trainer.
        module: The ``LightningModule`` being fit.
        callback: The :class:`~lightning_lrbs.BatchScalingCallback` the components belong to.
    """

    pl: ModuleType
    trainer: Any
    module: Any
    callback: Any

    @property
    def who(self) -> str:
        """The callback's class name, which starts its messages."""
        return type(self.callback).__name__

    @property
    def active(self) -> bool:
        """Whether the callback is among the Trainer's callbacks: not while an LR finder sweeps in the middle of
        training (its fit loop runs with its own callbacks only, and its sweep must use the LRs it sets)."""
        return self.callback in self.trainer.callbacks

    def info(self, message: str) -> None:
        """Log ``message`` on rank zero."""
        self.pl.utilities.rank_zero.rank_zero_info(message)

    def warn(self, message: str) -> None:
        """Warn on rank zero (``RuntimeWarning``)."""
        self.pl.utilities.rank_zero.rank_zero_warn(message, category=RuntimeWarning)


@dataclass(frozen=True)
class Scale:
    r"""One change of scale: what the effective batch is made of, and the LR factors it gives.

    Attributes:
        per_rank: The batch size each data-parallel replica feeds per micro-batch.
        accumulation: The micro-batches per optimizer step, :math:`A`.
        base: :math:`B_\text{base}` in force: the batch the module's LRs are for (an LR finder's swept batch when
            its suggestion is the LR, else ``nominal``).
        nominal: The base batch size given to the callback (the per-device batch when none was).
        targets: The factor :math:`f` of each optimizer at this scale, relative to the module's own LRs.
        starts: The factor whose inverse is each optimizer's default warmup start (the rule's, also when an LR
            finder gave the LR).
        previous: The factors applied before this change (``None``: the optimizers hold the module's own LRs).
        first: Whether this is the fit's first change of scale.
        optimizers: The Trainer's optimizers.
        schedulers: Every scheduler on them, nested ones flattened.
    """

    per_rank: Sequence[int]
    accumulation: int
    base: int
    nominal: int
    targets: Sequence[float]
    starts: Sequence[float]
    previous: Sequence[float] | None
    first: bool
    optimizers: Sequence[Optimizer]
    schedulers: Sequence[Any]

    @property
    def effective(self) -> int:
        r""":math:`B_\text{eff} = A \sum_r b_r`."""
        return sum(self.per_rank) * self.accumulation

    @property
    def ratio(self) -> float:
        r""":math:`S = B_\text{eff} / B_\text{base}`."""
        return self.effective / self.base

    @property
    def applied(self) -> list[float]:
        """The factors the optimizers hold before this change (1 for a module's own LRs)."""
        return list(self.previous) if self.previous is not None else [1.0] * len(self.optimizers)

    @property
    def resumed(self) -> bool:
        """Whether the fit starts from a checkpoint whose LRs were scaled already."""
        return self.first and self.previous is not None


class Component:
    """One feature of the callback: the hooks it acts in and the state it owns. Every method is a no-op here.

    Lightning's hooks come with a :class:`Fit`. ``close`` runs at train end, on an exception and in teardown (it must
    be safe to call more than once). :meth:`state_dict` returns the component's keys of the callback's checkpoint
    state (flat, as every release has written them); :meth:`load_state_dict` receives the whole saved state and reads
    its own keys with ``.get`` (older checkpoints lack newer keys), before the fit builds anything.
    """

    def setup(self, fit: Fit) -> None:
        """A new fit starts (``stage="fit"``): forget the previous fit's state."""

    def on_fit_start(self, fit: Fit) -> None:
        """Optimizers exist, the train loader does not: refuse what cannot be done exactly, before anything changes."""

    def on_train_start(self, fit: Fit) -> None:
        """The train loader exists and a checkpoint's state is in place; no optimizer step yet. Nothing is scaled yet:
        check and load, the change of scale comes after every component's ``on_train_start``."""

    def plan(self, fit: Fit, scale: Scale) -> None:
        """Check a change of scale and prepare it; may raise, must change nothing."""

    def commit(self, fit: Fit, scale: Scale) -> None:
        """Carry out a change of scale that every component planned; must not raise."""

    def describe(self, scale: Scale) -> str:
        """What to append to the summary line of a change of scale (``"; ..."``), or ``""``."""
        return ""

    def hyperparameters(self) -> dict[str, Any]:
        """Values to add to the loggers' hyperparameters at a change of scale."""
        return {}

    def metrics(self, fit: Fit) -> dict[str, float]:
        """Values to log at the start of each training batch, at the steps the Trainer logs at."""
        return {}

    def on_train_epoch_start(self, fit: Fit) -> None: ...

    def on_train_batch_start(self, fit: Fit, batch: Any) -> None: ...

    def on_before_optimizer_step(self, fit: Fit, optimizer: Optimizer) -> None: ...

    def on_train_batch_end(self, fit: Fit) -> None: ...

    def on_train_epoch_end(self, fit: Fit) -> None: ...

    def on_train_end(self, fit: Fit) -> None:
        """Training ended without an exception (``close`` follows)."""

    def close(self, fit: Fit) -> None:
        """Take away what the fit added (hooks, lifted limits); idempotent."""

    def on_save_checkpoint(self, fit: Fit, checkpoint: dict[str, Any]) -> None: ...

    def teardown(self, fit: Fit, stage: str) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Components:
    """The callback's components in their order, and for each hook the bound methods of those that act in it (the
    others' no-ops are never called: the per-step hooks run for every batch).

    Args:
        components: The components, in the order every hook reaches them.
    """

    def __init__(self, components: Sequence[Component]) -> None:
        self.items = list(components)
        self._methods: dict[str, list[Any]] = {}
        self._fit: Fit | None = None

    def __getstate__(self) -> dict[str, Any]:
        # pickled with the callback (ddp_spawn, a deepcopy): without the last fit's Trainer, and methods rebuilt
        return {"items": self.items, "_methods": {}, "_fit": None}

    def methods(self, hook: str) -> list[Any]:
        """The bound ``hook`` of each component that overrides it, in order."""
        methods = self._methods.get(hook)
        if methods is None:
            base = getattr(Component, hook)
            methods = self._methods[hook] = [getattr(c, hook) for c in self.items if getattr(type(c), hook) is not base]
        return methods

    def fit(self, pl: ModuleType, trainer: Any, module: Any, callback: Any) -> Fit:
        """The :class:`Fit` of this Trainer and module (made again only when they change)."""
        fit = self._fit
        if fit is None or fit.trainer is not trainer or fit.module is not module or fit.pl is not pl:
            fit = self._fit = Fit(pl, trainer, module, callback)
        return fit
