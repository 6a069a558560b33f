r"""Linear learning-rate warmup that composes with any scheduler.

Pure PyTorch, no Lightning import: usable from raw PyTorch and Lightning Fabric.

At optimizer step :math:`t` (0-based), with start factor :math:`s` and length :math:`W` optimizer steps, the LR the
optimizer uses is the scheduled LR times

.. math::

    w(t) = s + (1 - s)\,\min\!\left(1, \frac{t}{W}\right),

so :math:`w = 1` exactly from step :math:`W` on. This is the gradual warmup of Goyal et al. 2017 (*Accurate, Large
Minibatch SGD*, arXiv:1706.02677), which ramps from the single-worker LR :math:`\eta` (:math:`s = 1/k`) to
:math:`k\eta`, and of Horovod's ``LearningRateWarmupCallback``.

"Scheduled LR" is whatever sits in ``param_group["lr"]`` when ``optimizer.step()`` starts: the warmup multiplies it
in a step pre-hook and puts the scheduled value back in a step post-hook. The scheduler therefore never sees a
warmed value: chainable schedulers (``StepLR``, ``ExponentialLR``) do not compound the factor, closed-form ones
(cosine, ``OneCycleLR``, ``LambdaLR``) are unaffected. Applying is idempotent within a step (LBFGS calls its closure
several times), and a step that never runs (``GradScaler`` skipping it for inf/nan gradients) leaves nothing warmed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch  # noqa: F401 - the examples in the docstrings use it
from torch.optim import Optimizer

from lightning_lrbs._coerce import as_float, as_int, is_bool
from lightning_lrbs.multipliers import StepMultipliers, put_back_lrs
from lightning_lrbs.rescale import check_numeric_lrs

__all__ = [
    "put_back_lrs",
    "LinearWarmup",
    "check_start_factor",
    "check_warmup_epochs",
    "check_warmup_steps",
    "default_start_factor",
    "steps_per_epoch",
    "warmup_factor",
]


def check_warmup_steps(warmup_steps: object, name: str = "warmup_steps") -> int:
    """Validate a warmup length in optimizer steps: a non-negative int.

    Example::

        >>> check_warmup_steps(-1)
        Traceback (most recent call last):
        ...
        ValueError: `warmup_steps` must be a non-negative int, got -1
    """
    steps = as_int(warmup_steps)
    if steps is None or steps < 0:
        raise ValueError(f"`{name}` must be a non-negative int, got {warmup_steps!r}")
    return steps


def check_warmup_epochs(warmup_epochs: object, warmup_steps: object = 0) -> float:
    """Validate a warmup length in epochs: a non-negative finite number (fractions allowed), not together with a
    non-zero ``warmup_steps`` (validated with :func:`check_warmup_steps`).

    Example::

        >>> check_warmup_epochs(0.5), check_warmup_epochs(0, warmup_steps=100)
        (0.5, 0.0)
        >>> check_warmup_epochs(1, warmup_steps=100)
        Traceback (most recent call last):
        ...
        ValueError: give either `warmup_steps` or `warmup_epochs`, not both: got warmup_steps=100 and warmup_epochs=1
    """
    epochs = as_float(warmup_epochs)  # Python or NumPy number; not a bool
    if epochs is None or not math.isfinite(epochs) or epochs < 0:
        raise ValueError(f"`warmup_epochs` must be a non-negative finite number, got {warmup_epochs!r}")
    if check_warmup_steps(warmup_steps) and epochs:
        raise ValueError(
            f"give either `warmup_steps` or `warmup_epochs`, not both: got warmup_steps={warmup_steps!r} "
            f"and warmup_epochs={warmup_epochs!r}"
        )
    return epochs


def check_start_factor(start_factor: object, name: str = "warmup_start_factor") -> float:
    """Validate a warmup start factor: a number in [0, 1].

    Example::

        >>> check_start_factor(1.5)
        Traceback (most recent call last):
        ...
        ValueError: `warmup_start_factor` must be in [0, 1], got 1.5
    """
    value = as_float(start_factor)
    if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {start_factor!r}")
    return value


def default_start_factor(scale_factor: float) -> float:
    r"""The warmup start factor that starts from the unscaled LR: :math:`s = 1/f` (Goyal et al.; Horovod), or 0 when
    :math:`f \le 1` (no smaller LR to start from: a plain warmup from zero).

    Example::

        >>> default_start_factor(8.0), default_start_factor(1.0)
        (0.125, 0.0)
    """
    return 1.0 / scale_factor if scale_factor > 1.0 else 0.0


def steps_per_epoch(batches: int, accumulation: int = 1, steps_per_batch: int = 1) -> int:
    r"""Optimizer steps in one epoch of ``batches`` training batches, counted as ``trainer.global_step`` counts them.

    .. math::

        S = \left\lceil \frac{\text{batches}}{A} \right\rceil \times k

    Automatic optimization: :math:`k = 1`, and the last, incomplete accumulation window of :math:`A` batches steps
    too (Lightning's ``_accumulation_done`` or last batch). Manual optimization (no accumulation): :math:`A = 1`,
    :math:`k` = optimizer steps per batch; Lightning counts the step of every optimizer in ``global_step``, so two
    optimizers stepped once per batch give :math:`k = 2`.

    Example::

        >>> steps_per_epoch(10, accumulation=4), steps_per_epoch(10, steps_per_batch=2)
        (3, 20)
    """
    return math.ceil(batches / accumulation) * steps_per_batch


def warmup_factor(step: float, warmup_steps: int, start_factor: float) -> float:
    r"""The warmup multiplier :math:`w(t) = s + (1 - s) \min(1, t / W)`.

    Args:
        step: The 0-based optimizer step :math:`t`.
        warmup_steps: The warmup length :math:`W` in optimizer steps; ``0`` means no warmup.
        start_factor: :math:`s`, the multiplier at step 0.

    Example::

        >>> [warmup_factor(t, 4, 0.2) for t in range(6)]
        [0.2, 0.4, 0.6000000000000001, 0.8, 1.0, 1.0]
    """
    if step >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * (max(step, 0) / warmup_steps)


class LinearWarmup:
    r"""Warm the learning rates of one or more optimizers up over their first optimizer steps.

    The warmup lives in ``optimizer.register_step_pre_hook`` / ``register_step_post_hook``: it works with any
    scheduler, with closures (LBFGS), with manual optimization and with ``torch.amp.GradScaler``, whose skipped steps
    run neither hook.

    Args:
        optimizers: One optimizer or a sequence of them.
        warmup_steps: Length :math:`W` in optimizer steps (``0`` disables the warmup).
        start_factor: :math:`s` in [0, 1], one for all optimizers or one per optimizer.
        step_fn: Returns the current 0-based step :math:`t` (e.g. ``lambda: trainer.global_step``; fractions are
            allowed). Without it each
            optimizer counts its own completed steps; that count is saved by :meth:`state_dict`.

    Raises:
        ValueError: If ``warmup_steps`` is negative or a start factor is outside [0, 1].

    Example::

        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([w], lr=0.8)
        >>> warmup = LinearWarmup(opt, warmup_steps=4, start_factor=0.25)
        >>> seen = []
        >>> _ = opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
        >>> for _ in range(5):
        ...     opt.step()
        >>> seen, opt.param_groups[0]["lr"]
        ([0.2, 0.35000000000000003, 0.5, 0.65, 0.8], 0.8)
        >>> warmup.remove()
    """

    def __init__(
        self,
        optimizers: Optimizer | Sequence[Optimizer],
        warmup_steps: int,
        start_factor: float | Sequence[float] = 0.0,
        step_fn: Callable[[], float] | None = None,
    ) -> None:
        self.optimizers: list[Optimizer] = [optimizers] if isinstance(optimizers, Optimizer) else list(optimizers)
        self.warmup_steps = check_warmup_steps(warmup_steps)
        scalar = as_float(start_factor) is not None or is_bool(start_factor) or isinstance(start_factor, str)
        factors = [start_factor] * len(self.optimizers) if scalar else list(start_factor)  # type: ignore[arg-type]
        if len(factors) != len(self.optimizers):
            raise ValueError(f"`start_factor` has {len(factors)} values for {len(self.optimizers)} optimizers")
        self.start_factors = [check_start_factor(s, "start_factor") for s in factors]
        if self.warmup_steps:
            check_numeric_lrs(self.optimizers)
        self.step_fn = step_fn
        self.steps = [0] * len(self.optimizers)
        self._last_step: list[float | None] = [None] * len(self.optimizers)  # t of each optimizer's previous step
        self._warned_stuck = False
        self._indices = {id(optimizer): index for index, optimizer in enumerate(self.optimizers)}
        self._stacks = [StepMultipliers.of(optimizer) for optimizer in self.optimizers]
        for stack in self._stacks:
            stack.add(self)

    def step(self, index: int = 0) -> float:
        """The 0-based step :math:`t` the next ``optimizer.step()`` of optimizer ``index`` is."""
        return self.step_fn() if self.step_fn is not None else self.steps[index]

    def factor(self, index: int = 0, step: float | None = None) -> float:
        """:math:`w(t)` for optimizer ``index`` at ``step`` (default: its next step)."""
        t = self.step(index) if step is None else step
        return warmup_factor(t, self.warmup_steps, self.start_factors[index])

    def _index(self, optimizer: Optimizer) -> int:
        return self._indices[id(optimizer)]

    def begin_step(self, optimizer: Optimizer) -> float:
        """:math:`w(t)` of this step (:class:`~lightning_lrbs.multipliers.StepMultipliers` calls it)."""
        index = self._index(optimizer)
        t = self.step(index)
        w = self.factor(index, t)
        if w != 1.0 and t == self._last_step[index] and not self._warned_stuck:
            self._warned_stuck = True
            warnings.warn(
                f"LinearWarmup: optimizer {index} ({type(optimizer).__name__}) stepped twice at warmup step {t}: "
                "`step_fn` does not count its steps, so the warmup is stuck at the factor "
                f"{w:.4g}. In Lightning manual optimization, step through `self.optimizers()`, not the raw torch "
                "optimizer",
                RuntimeWarning,
                stacklevel=2,
            )
        self._last_step[index] = t
        return w

    def end_step(self, optimizer: Optimizer) -> None:
        """Count the finished step."""
        self.steps[self._index(optimizer)] += 1

    @property
    def pending(self) -> bool:
        """Whether a step started (its LR warmed) and has not finished: the optimizer holds warmed LRs now."""
        return any(stack.pending for stack in self._stacks)

    def restore(self) -> bool:
        """Put back the scheduled LR of a step that started but never finished, because it raised.

        In Lightning's automatic optimization the forward and backward pass run inside ``optimizer.step`` (as its
        closure), after the pre-hook warmed the LR; an exception there (an error, ``KeyboardInterrupt``) skips the
        post-hook that puts the scheduled LR back. Call this when catching such an exception, before saving a
        checkpoint or stepping the scheduler. The step does not count: the next ``optimizer.step()`` is warmed at the
        same step :math:`t` again. A no-op when no step is pending.

        Returns:
            Whether an LR was put back.

        Example::

            >>> w = torch.nn.Parameter(torch.zeros(1))
            >>> opt = torch.optim.SGD([w], lr=0.8)
            >>> warmup = LinearWarmup(opt, warmup_steps=4, start_factor=0.25)
            >>> def closure():
            ...     raise KeyboardInterrupt
            >>> try:
            ...     opt.step(closure)
            ... except KeyboardInterrupt:
            ...     warmup.restore()
            True
            >>> opt.param_groups[0]["lr"], warmup.steps
            (0.8, [0])
            >>> warmup.remove()
        """
        restored = False
        for index, stack in enumerate(self._stacks):
            if stack.started:
                self._last_step[index] = None  # the retried step is not a step twice at the same t
            restored = stack.restore() or restored
        return restored

    def unwarm_state_dict(self, index: int, state_dict: dict[str, Any]) -> None:
        """Replace, in a copy of ``optimizers[index].state_dict()`` taken while its step is pending, the warmed LRs by
        the scheduled ones, so that a checkpoint written from inside a step holds what a finished step would leave.

        The state dict is changed in place (its param-group dicts are copies, ``optimizer.state_dict()`` makes them);
        a tensor LR is replaced by a copy of the scheduled one, never written into. Nothing happens when no step is
        pending or the state dict has another layout (a sharded strategy's).

        Example::

            >>> w = torch.nn.Parameter(torch.zeros(1))
            >>> opt = torch.optim.SGD([w], lr=0.8)
            >>> warmup = LinearWarmup(opt, warmup_steps=4, start_factor=0.25)
            >>> saved = []
            >>> def closure():
            ...     state = opt.state_dict()
            ...     warmup.unwarm_state_dict(0, state)
            ...     saved.append((opt.param_groups[0]["lr"], state["param_groups"][0]["lr"]))
            >>> opt.step(closure)
            >>> saved
            [(0.2, 0.8)]
            >>> warmup.remove()
        """
        self._stacks[index].unscaled_state_dict(state_dict)

    def remove(self) -> None:
        """Stop warming, putting back any LR still warmed."""
        for stack in self._stacks:
            stack.discard(self)

    def state_dict(self) -> dict[str, Any]:
        """The per-optimizer step counts (used when no ``step_fn`` is given)."""
        return {"steps": list(self.steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`, to resume mid-warmup."""
        steps = state_dict.get("steps", self.steps)
        if len(steps) == len(self.steps):
            self.steps = [int(s) for s in steps]
