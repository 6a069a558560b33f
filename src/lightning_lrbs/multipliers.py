r"""Learning-rate multipliers that last one optimizer step: the warmup, the AdaScale gain, and what reads the result.

Pure PyTorch, no Lightning import.

A multiplier changes the LR an optimizer step *uses* without changing the LR a scheduler *sees*: the LR of every
scalable param group (:func:`~lightning_lrbs.rescale.scalable_groups`) is multiplied for the duration of
``optimizer.step()`` and put back right after it,

.. math::

    \eta_\text{used}(t) = \eta_\text{scheduled}(t) \prod_m f_m(t),

so chainable schedulers (``StepLR``, ``ExponentialLR``) never compound a factor and closed-form ones are unaffected.
Every optimizer has one :class:`StepMultipliers`: one step pre-hook multiplies by the product of its members'
factors, then tells its observers the LRs the step uses (e.g. a logger); one step post-hook puts the scheduled LRs
back, then tells each member the step finished. Members therefore nest by construction, whatever order they were
added in, and a checkpoint written from inside a step (:meth:`StepMultipliers.unscaled_state_dict`) or an exception
inside the step (:meth:`StepMultipliers.restore`) puts back the scheduled LRs once for all of them.

:class:`~lightning_lrbs.warmup.LinearWarmup` and :class:`~lightning_lrbs.adascale.AdaScaleLR` are members.
Torch runs no step hook for a step it skips (``GradScaler`` on inf/nan gradients), so nothing stays multiplied.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from lightning_lrbs.rescale import scalable_groups

__all__ = ["Multiplier", "StepMultipliers", "put_back_lrs"]

#: ``(param group, its LR before the step's multipliers)`` pairs.
Saved = list[tuple[dict[str, Any], Any]]


class Multiplier(Protocol):
    """What a member of :class:`StepMultipliers` provides."""

    def begin_step(self, optimizer: Optimizer) -> float:
        """The factor this step of ``optimizer`` uses (called once, in its step pre-hook)."""

    def end_step(self, optimizer: Optimizer) -> None:
        """The step finished (called in its step post-hook, after the scheduled LRs are back)."""


def put_back_lrs(optimizer: Optimizer, saved: Sequence[tuple[dict[str, Any], Any]], state_dict: dict[str, Any]) -> None:
    """Write the LRs ``saved`` before a step pre-hook changed them into ``state_dict`` (a copy of
    ``optimizer.state_dict()`` taken while that step is pending), so a checkpoint written from inside the step holds
    what a finished step leaves. ``saved`` holds ``(param_group, lr before the hook)`` pairs; a tensor LR is replaced
    by a copy, never written into. Nothing happens when the state dict has another layout (a sharded strategy's).
    """
    groups = state_dict.get("param_groups")
    optimizer_groups = optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(optimizer_groups):
        return
    position = {id(group): i for i, group in enumerate(optimizer_groups)}
    for group, lr in saved:
        i = position.get(id(group))
        if i is not None and isinstance(groups[i], dict) and "lr" in groups[i]:
            groups[i]["lr"] = lr.detach().clone() if isinstance(lr, torch.Tensor) else lr


class StepMultipliers:
    r"""The step hooks of one optimizer that apply every :class:`Multiplier` registered on it.

    Get it with :meth:`of` (one per optimizer, made on first use; its hooks go when its last member and observer are
    discarded). The pre-hook takes :math:`f = \prod_m f_m` from the members in the order they were added, multiplies
    every scalable group's LR by it (in place for a tensor LR) and calls the observers with the optimizer; the
    post-hook puts the scheduled LRs back and calls each member's ``end_step``. A second pre-hook call before the
    post-hook (a re-entrant step) changes nothing.

    Example::

        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([w], lr=0.1)
        >>> class Twice:
        ...     def begin_step(self, optimizer): return 2.0
        ...     def end_step(self, optimizer): pass
        >>> stack, twice, used = StepMultipliers.of(opt), Twice(), []
        >>> stack.add(twice)
        >>> stack.observe(lambda o: used.append(o.param_groups[0]["lr"]))
        >>> opt.step()
        >>> used, opt.param_groups[0]["lr"]
        ([0.2], 0.1)
        >>> stack.discard(twice); stack.discard_observers()
    """

    _stacks: weakref.WeakKeyDictionary[Optimizer, StepMultipliers] = weakref.WeakKeyDictionary()

    def __init__(self, optimizer: Optimizer) -> None:
        self._optimizer = weakref.ref(optimizer)
        self.members: list[Multiplier] = []
        self.observers: list[Callable[[Optimizer], None]] = []
        self._saved: Saved | None = None  # set between the pre- and the post-hook
        self._handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]

    @classmethod
    def of(cls, optimizer: Optimizer) -> StepMultipliers:
        """The optimizer's multipliers, made (and its hooks registered) on first use."""
        stack = cls._stacks.get(optimizer)
        if stack is None:
            stack = cls._stacks[optimizer] = cls(optimizer)
        return stack

    @classmethod
    def find(cls, optimizer: Optimizer) -> StepMultipliers | None:
        """The optimizer's multipliers if it has any (never makes them)."""
        return cls._stacks.get(optimizer)

    def add(self, member: Multiplier) -> None:
        """Apply ``member``'s factor from the next step on."""
        if all(m is not member for m in self.members):
            self.members.append(member)

    def observe(self, observer: Callable[[Optimizer], None]) -> None:
        """Call ``observer(optimizer)`` at each step, once the LRs the step uses are in place."""
        self.observers.append(observer)

    def discard(self, member: Multiplier) -> None:
        """Stop applying ``member`` (putting back any LR a pending step multiplied)."""
        self.restore()
        self.members = [m for m in self.members if m is not member]
        self._drop_if_unused()

    def discard_observers(self, observers: Sequence[Callable[[Optimizer], None]] | None = None) -> None:
        """Stop calling ``observers`` (all of them by default)."""
        kept = [] if observers is None else [o for o in self.observers if all(o is not x for x in observers)]
        self.observers = kept
        self._drop_if_unused()

    @property
    def pending(self) -> bool:
        """Whether a step started, multiplied some LR and has not finished: the optimizer holds multiplied LRs now."""
        return bool(self._saved)

    @property
    def started(self) -> bool:
        """Whether a step started and has not finished (multiplied or not)."""
        return self._saved is not None

    def restore(self) -> bool:
        """Put back the scheduled LRs of a step that started but never finished (it raised: in Lightning the forward
        and backward run inside ``optimizer.step`` as its closure). The step does not count for any member.

        Returns:
            Whether an LR was put back.
        """
        saved, self._saved = self._saved, None
        for group, lr in saved or ():
            if isinstance(group["lr"], torch.Tensor):
                with torch.no_grad():
                    group["lr"].copy_(lr)
            else:
                group["lr"] = lr
        return bool(saved)

    def unscaled_state_dict(self, state_dict: dict[str, Any]) -> None:
        """In ``state_dict``, a copy of ``optimizer.state_dict()`` taken while a step is pending (a checkpoint written
        from inside the step), put back the scheduled LRs: what a finished step leaves."""
        optimizer = self._optimizer()
        if self._saved and optimizer is not None:
            put_back_lrs(optimizer, self._saved, state_dict)

    def _pre_hook(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self._saved is not None:
            return
        factor = 1.0
        for member in list(self.members):
            factor *= member.begin_step(optimizer)
        saved: Saved = []
        if factor != 1.0:
            for group, active in zip(optimizer.param_groups, scalable_groups(optimizer)):
                if not active:
                    continue
                lr = group["lr"]
                if isinstance(lr, torch.Tensor):
                    saved.append((group, lr.detach().clone()))
                    with torch.no_grad():
                        lr.mul_(factor)
                else:
                    saved.append((group, lr))
                    group["lr"] = lr * factor
        self._saved = saved
        for observer in list(self.observers):
            observer(optimizer)

    def _post_hook(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self._saved is None:  # the step began before the hooks existed
            return
        self.restore()
        for member in list(self.members):
            member.end_step(optimizer)

    def _drop_if_unused(self) -> None:
        if self.members or self.observers:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        optimizer = self._optimizer()
        if optimizer is not None and StepMultipliers._stacks.get(optimizer) is self:
            del StepMultipliers._stacks[optimizer]
