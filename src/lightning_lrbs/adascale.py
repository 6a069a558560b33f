r"""AdaScale: a learning-rate factor that follows the measured gradient noise.

Pure PyTorch, no Lightning import: usable from raw PyTorch and Lightning Fabric loops.

AdaScale (Johnson et al. 2020, *AdaScale SGD: A User-Friendly Algorithm for Distributed Training*,
arXiv:2007.05105) trains at :math:`S` times the base batch with the LR multiplied, at every step, by the *gain ratio*

.. math::

    r = \frac{\sigma^2 + \mu^2}{\sigma^2 / S + \mu^2}, \qquad
    \sigma^2 = \frac{\operatorname{tr}\Sigma}{B_\text{base}}, \quad \mu^2 = |G|^2, \quad
    S = \frac{B_\text{eff}}{B_\text{base}},

(:math:`G` the true gradient, :math:`\Sigma` the per-example gradient covariance, both estimated and smoothed by
:class:`lightning_lrbs.noise.GradientNoiseScale`). With the simple noise scale
:math:`B_\text{noise} = \operatorname{tr}\Sigma / |G|^2` this is McCandlish et al. 2018's (*An Empirical Model of
Large-Batch Training*, arXiv:1812.06162, eq. 2.7) ratio of the best SGD learning rates
:math:`\epsilon_\text{opt}(B) = \epsilon_\max / (1 + B_\text{noise}/B)` at the two batch sizes:

.. math::

    r = \frac{1 + B_\text{noise}/B_\text{base}}{1 + B_\text{noise}/B_\text{eff}}
      = \frac{\epsilon_\text{opt}(B_\text{eff})}{\epsilon_\text{opt}(B_\text{base})}.

It is :math:`\approx S` (the linear rule) while :math:`B_\text{eff} \ll B_\text{noise}`, levels off at
:math:`1 + B_\text{noise}/B_\text{base}` beyond it, and starts near 1 early in training, when the noise scale is
small. It always lies between 1 and :math:`S`.

For adaptive optimizers (Adam and its family) AdaptDL's ``AdamScale`` (Qiao et al. 2021, *Pollux*, OSDI) uses
:math:`r^{1/2}`, with the noise measured on the preconditioned gradients :math:`g / (\sqrt{\hat v} + \epsilon)`:
:func:`preconditioner` builds that transform from the optimizer's own state. This is implemented as AdaptDL
intends it, but it is *not* validated here the way the SGD gain is.

:class:`AdaScaleLR` applies the gain: it multiplies the scheduled LR in an optimizer step pre-hook and puts it back
in a step post-hook, like :class:`lightning_lrbs.warmup.LinearWarmup` (schedulers never see it); both are members of
the optimizer's :class:`~lightning_lrbs.multipliers.StepMultipliers`, so with a warmup the step uses the scheduled LR
:math:`\times w(t) \times r_t`. **Step** :math:`t` **uses the statistics of steps** :math:`0 \dots t-1` (factor 1 at the
first step): the gain is refreshed in the post-hook, once the step's measurement is in. Lightning evaluates the last
backward of a step inside ``optimizer.step(closure)``, after the step pre-hook, so using step :math:`t`'s own
statistics would need the LR set from inside the closure; the one-step lag keeps one behaviour for Lightning, Fabric
and raw loops alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_lrbs.multipliers import StepMultipliers
from lightning_lrbs.rules import is_adaptive
from lightning_lrbs.sharding import is_dtensor

__all__ = [
    "AdaScaleLR",
    "ScaleInvariantSchedule",
    "adascale_gain",
    "check_adascale_optimizer",
    "gain_exponent",
    "gain_from_noise_scale",
    "Preconditioner",
    "preconditioner",
    "preconditioner_ready",
]

#: ``(|G|^2, tr Sigma)`` smoothed, or ``None`` each before the first measurement.
Statistics = tuple[float | None, float | None]

#: The adaptive optimizers whose preconditioner :func:`preconditioner` reproduces exactly.
_PRECONDITIONED = ("Adam", "AdamW", "NAdam", "Adamax", "RMSprop", "Adagrad")


def _check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite positive number for rule='adascale', got {value!r}")
    return float(value)


def adascale_gain(grad_sq_norm: float, grad_var: float, base_batch_size: float, scale: float) -> float:
    r"""The AdaScale gain ratio :math:`r = (\sigma^2 + \mu^2) / (\sigma^2/S + \mu^2)`.

    Johnson et al. 2020 (arXiv:2007.05105), eq. (3), with :math:`\sigma^2 = \operatorname{tr}\Sigma / B_\text{base}`
    (the variance of the gradient at the base batch) and :math:`\mu^2 = |G|^2`.

    The smoothed estimates are clamped at 0 (:math:`\mu^2 \le 0` means the noise dominates the measurement:
    :math:`r = S`; :math:`\sigma^2 \le 0` means no noise: :math:`r = 1`; both 0: :math:`r = 1`), so :math:`r` lies
    between 1 and :math:`S` (between :math:`S` and 1 when :math:`S < 1`). fairscale instead clamps each *step's*
    values before smoothing (:math:`|G|^2 \ge 0`, variance :math:`\ge 10^{-6}`); where those clamps do not act,
    both give the same gain.

    Args:
        grad_sq_norm: :math:`|G|^2`, the smoothed squared norm of the true gradient.
        grad_var: :math:`\operatorname{tr}\Sigma`, the smoothed per-example gradient variance (trace).
        base_batch_size: :math:`B_\text{base}`, the batch the LR was tuned for.
        scale: :math:`S = B_\text{eff} / B_\text{base}`.

    Example::

        >>> adascale_gain(grad_sq_norm=1.0, grad_var=32.0, base_batch_size=32, scale=8)  # B_noise = B_base
        1.7777777777777777
        >>> adascale_gain(1.0, 0.0, 32, 8), adascale_gain(0.0, 32.0, 32, 8)
        (1.0, 8.0)
    """
    base = _check_positive(base_batch_size, "base_batch_size")
    s = _check_positive(scale, "scale")
    if not (math.isfinite(grad_sq_norm) and math.isfinite(grad_var)):
        raise ValueError(f"the noise statistics must be finite, got |G|^2={grad_sq_norm!r}, tr Σ={grad_var!r}")
    mu2 = max(float(grad_sq_norm), 0.0)
    sigma2 = max(float(grad_var), 0.0) / base
    if sigma2 == 0.0:
        return 1.0
    if mu2 == 0.0:
        return s
    gain = (sigma2 + mu2) / (sigma2 / s + mu2)
    return min(max(gain, min(1.0, s)), max(1.0, s))  # rounding only: the formula lies between 1 and S


def gain_from_noise_scale(noise_scale: float, base_batch_size: float, effective_batch_size: float) -> float:
    r"""The same gain from the noise scale: :math:`r = (1 + B_\text{noise}/B_\text{base}) /
    (1 + B_\text{noise}/B_\text{eff})`, the ratio of McCandlish et al.'s best SGD learning rates
    :math:`\epsilon_\text{opt}(B) = \epsilon_\max/(1 + B_\text{noise}/B)` (arXiv:1812.06162, eq. 2.7).

    Example::

        >>> gain_from_noise_scale(noise_scale=32.0, base_batch_size=32, effective_batch_size=256)
        1.7777777777777777
        >>> gain_from_noise_scale(math.inf, 32, 256)
        8.0
    """
    base = _check_positive(base_batch_size, "base_batch_size")
    effective = _check_positive(effective_batch_size, "effective_batch_size")
    if math.isnan(noise_scale) or noise_scale < 0:
        raise ValueError(f"`noise_scale` must be >= 0 for rule='adascale', got {noise_scale!r}")
    if math.isinf(noise_scale):
        return effective / base
    return (1.0 + noise_scale / base) / (1.0 + noise_scale / effective)


def gain_exponent(optimizer: Optimizer) -> float:
    r"""The power of the gain applied to ``optimizer``'s LR: 1 for SGD-like optimizers, :math:`1/2` for adaptive ones
    (:func:`lightning_lrbs.rules.is_adaptive`; AdaptDL's ``AdamScale``).

    Example::

        >>> w = [torch.zeros(1, requires_grad=True)]
        >>> gain_exponent(torch.optim.SGD(w, lr=0.1)), gain_exponent(torch.optim.Adam(w))
        (1.0, 0.5)
    """
    return 0.5 if is_adaptive(optimizer) else 1.0


def check_adascale_optimizer(optimizer: Optimizer) -> None:
    """Refuse optimizers ``rule="adascale"`` cannot serve exactly.

    Raises:
        ValueError: For ``LBFGS`` (it reads its LR and evaluates its closure several times inside one step, before
            the step's gradients exist), and for adaptive optimizers whose preconditioner :func:`preconditioner` does
            not reproduce (everything adaptive but Adam, AdamW, NAdam, Adamax, RMSprop and Adagrad, and these
            with complex parameters).
    """
    name = type(optimizer).__name__
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError(
            "rule='adascale' cannot scale LBFGS: it evaluates its closure several times inside one step and reads "
            "its LR before the step's gradients exist; use another rule"
        )
    if not is_adaptive(optimizer):
        return
    if type(optimizer).__name__ not in _PRECONDITIONED or not isinstance(optimizer, getattr(torch.optim, name)):
        raise ValueError(
            f"rule='adascale' measures an adaptive optimizer's noise on its preconditioned gradients and supports "
            f"{', '.join(_PRECONDITIONED)}; got {name}: use rule='sqrt' or 'auto'"
        )
    for group in optimizer.param_groups:
        if any(p.is_complex() for p in group["params"]):
            raise ValueError(f"rule='adascale' does not support complex parameters in {name}")


def _step_count(state: dict[str, Tensor]) -> float:
    step = state["step"]
    if is_dtensor(step):  # replicated under FSDP2 / tensor parallelism
        step = step.to_local()  # type: ignore[attr-defined]
    return float(step.item() if isinstance(step, Tensor) else step)


def _denominator(optimizer: Optimizer, group: dict[str, Any], state: dict[str, Tensor]) -> Tensor:
    r"""The elementwise preconditioner :math:`P` (update :math:`\propto g / P`) the optimizer's next step would use
    if its state did not change, for the optimizers in ``_PRECONDITIONED`` (torch.optim's update rules)."""
    eps = float(group["eps"])
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam)):
        # Adam/AdamW/NAdam: sqrt(v_t / (1 - beta2^t)) + eps
        # (AMSGrad: the running maximum max_exp_avg_sq in place of v_t)
        beta2 = float(group["betas"][1])
        correction = 1.0 - beta2 ** _step_count(state)
        v: Tensor = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        return torch.sqrt(v / correction) + eps
    if isinstance(optimizer, torch.optim.Adamax):
        # Adamax: u_t = max(beta2 u_{t-1}, |g| + eps), no bias correction on u
        return state["exp_inf"]
    if isinstance(optimizer, torch.optim.RMSprop):
        # RMSprop: sqrt(v_t) + eps, no bias correction; centered: sqrt(v_t - m_t^2) + eps
        if group.get("centered"):
            return (state["square_avg"] - state["grad_avg"] ** 2).sqrt() + eps
        return state["square_avg"].sqrt() + eps
    if isinstance(optimizer, torch.optim.Adagrad):
        # Adagrad: sqrt(sum_t g^2) + eps
        return state["sum"].sqrt() + eps
    raise ValueError(f"rule='adascale' has no preconditioner for {type(optimizer).__name__}")  # pragma: no cover


def preconditioner_ready(optimizer: Optimizer) -> bool:
    """Whether every parameter of ``optimizer`` has the state :func:`preconditioner` reads (after its first step)."""
    if not is_adaptive(optimizer):
        return True
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if p.requires_grad and not state:
                return False
    return True


def preconditioner(optimizer: Optimizer) -> Callable[[Tensor, Tensor], Tensor] | None:
    r"""The ``transform(param, grad) -> grad / P`` that measures ``optimizer``'s noise on its preconditioned
    gradients, or ``None`` for a non-adaptive optimizer (measure the raw gradients).

    :math:`P` is read from the optimizer's state when the transform is called (linear in ``grad``): for Adam, AdamW
    and NAdam :math:`\sqrt{v_t/(1-\beta_2^t)} + \epsilon` (``exp_avg_sq``, ``step``, ``betas``, ``eps``), for Adamax
    ``exp_inf``, for RMSprop :math:`\sqrt{v_t} + \epsilon` (``square_avg``), for Adagrad :math:`\sqrt{\sum g^2} +
    \epsilon` (``sum``): the preconditioner of the previous step, as AdaptDL's ``AdamGradientNoiseScale`` uses it.
    Before the optimizer's first step there is no state: measure only once :func:`preconditioner_ready`.

    Raises:
        ValueError: If :func:`check_adascale_optimizer` refuses the optimizer.

    Example::

        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.Adam([w], betas=(0.9, 0.99), eps=0.0)
        >>> w.grad = torch.tensor([2.0, -4.0]); opt.step()
        >>> preconditioner(opt)(w, torch.tensor([2.0, -4.0]))  # |g| / sqrt(g^2) after one step
        tensor([ 1., -1.])
    """
    check_adascale_optimizer(optimizer)
    if not is_adaptive(optimizer):
        return None
    return Preconditioner(optimizer)


class Preconditioner:
    """``transform(param, grad) -> grad / P`` of :func:`preconditioner`, for plain, sharded and full gradients.

    A plain gradient of a plain parameter, or a sharded ``DTensor`` gradient (FSDP2's ``.grad``), is divided by
    :math:`P` of the same layout. A full gradient of a sharded parameter (FSDP2's unsharded twin, which the
    micro-batch hooks see) is divided by the full :math:`P`, which :meth:`prepare` gathers (all ranks alike, before
    the backward; it changes only when the optimizer steps) and :meth:`release` frees.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self._groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        self._full: dict[int, tuple[float, Tensor]] = {}  # id(sharded param) -> (its step, full P)

    def _state(self, param: Tensor) -> dict[str, Tensor]:
        state: dict[str, Tensor] | None = self.optimizer.state.get(param)
        if not state:
            raise RuntimeError(
                f"rule='adascale': {type(self.optimizer).__name__} has no state for a parameter yet (before its first "
                "step): measure only once `preconditioner_ready(optimizer)`"
            )
        return state

    def __call__(self, param: Tensor, grad: Tensor) -> Tensor:
        if is_dtensor(param) and not is_dtensor(grad):
            full = self._full.get(id(param))
            if full is None:
                raise RuntimeError("rule='adascale': call `prepare()` before the backward of a sharded model")
            return grad / full[1].to(grad.dtype)
        return grad / _denominator(self.optimizer, self._groups[id(param)], self._state(param)).to(grad.dtype)

    def prepare(self) -> None:
        """Gather :math:`P` of every sharded parameter whose optimizer stepped since (a collective: on all ranks)."""
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                state = self.optimizer.state.get(param)
                if not state or not is_dtensor(param):
                    continue
                step = float(_step_count(state))
                cached = self._full.get(id(param))
                if cached is None or cached[0] != step:
                    denominator = _denominator(self.optimizer, group, state)
                    self._full[id(param)] = (step, denominator.full_tensor())  # type: ignore[attr-defined]

    def release(self) -> None:
        """Free the gathered :math:`P` (the next :meth:`prepare` gathers again)."""
        self._full.clear()


class AdaScaleLR:
    r"""Multiply the scheduled LR of each optimizer step by the AdaScale gain :math:`r_t` (:math:`r_t^{1/2}` for
    adaptive optimizers), from the noise statistics of the steps before it.

    Step :math:`t` uses the gain of the statistics measured at steps :math:`0 \dots t-1`; the gain is refreshed in
    each step post-hook, after the step's measurement (take it before ``optimizer.step()``). The pre-hook multiplies
    every scalable group's LR (``"lrbs_scale": False`` groups are left alone) and the post-hook puts the scheduled
    value back, so schedulers never see the gain. With a :class:`~lightning_lrbs.warmup.LinearWarmup` on the same
    optimizer (both are :class:`~lightning_lrbs.multipliers.StepMultipliers` members) the LR used is the scheduled LR
    :math:`\times w(t) \times r_t`.

    :attr:`progress` counts AdaScale's *scale-invariant iterations* (Johnson et al. 2020, Algorithm 1): the sum
    :math:`\tau = \sum_t r_t` of the gains of the finished steps, in steps at the base batch (AdaptDL's
    ``progress``). A run that should do the work of :math:`T` base-batch steps ends when :math:`\tau \ge T`, and a
    schedule written for the base batch is evaluated at :math:`\tau`, not at the step count (the gain
    :math:`r_t`, not :math:`r_t^{1/2}`, for adaptive optimizers too). Save it with :meth:`state_dict`.

    Args:
        optimizer: The optimizer to scale (one: the gain is one number for all measured parameters).
        statistics: Returns the smoothed ``(|G|^2, tr Sigma)`` (e.g. ``lambda: (gns.grad_sq_norm, gns.grad_var)``),
            ``None`` each before the first measurement.
        base_batch_size: :math:`B_\text{base}`.
        effective_batch_size: :math:`B_\text{eff}`; change it with :meth:`set_batch_sizes`.

    Raises:
        ValueError: If the optimizer is refused (:func:`check_adascale_optimizer`) or a batch size is not positive.

    Example::

        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([w], lr=0.1)
        >>> stats = [None, None]
        >>> scaler = AdaScaleLR(opt, lambda: (stats[0], stats[1]), base_batch_size=32, effective_batch_size=256)
        >>> used = []
        >>> _ = opt.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))
        >>> w.grad = torch.zeros(1)
        >>> stats[:] = [1.0, 32.0]  # measured at step 0 (B_noise = 32), before its optimizer.step()
        >>> opt.step()  # step 0: no statistics before it, factor 1
        >>> opt.step()  # step 1: the gain of step 0's statistics
        >>> used, opt.param_groups[0]["lr"], scaler.gain, scaler.progress
        ([0.1, 0.17777777777777778], 0.1, 1.7777777777777777, 2.7777777777777777)
        >>> scaler.remove()
    """

    def __init__(
        self,
        optimizer: Optimizer,
        statistics: Callable[[], Statistics],
        base_batch_size: float,
        effective_batch_size: float,
    ) -> None:
        check_adascale_optimizer(optimizer)
        self.optimizer = optimizer
        self.statistics = statistics
        self.exponent = gain_exponent(optimizer)
        self.base_batch_size = _check_positive(base_batch_size, "base_batch_size")
        self.effective_batch_size = _check_positive(effective_batch_size, "effective_batch_size")
        self.gain = 1.0
        #: :math:`\tau = \sum_t r_t`, the base-batch steps done so far (scale-invariant iterations).
        self.progress = 0.0
        self._applied: float | None = None  # the gain of the step in progress
        self.refresh()
        self._stack = StepMultipliers.of(optimizer)
        self._stack.add(self)

    @property
    def scale(self) -> float:
        r""":math:`S = B_\text{eff} / B_\text{base}`."""
        return self.effective_batch_size / self.base_batch_size

    @property
    def factor(self) -> float:
        r"""The factor the next step applies: :math:`r` (SGD-like) or :math:`r^{1/2}` (adaptive)."""
        return float(self.gain**self.exponent)

    def set_batch_sizes(self, base_batch_size: float, effective_batch_size: float) -> None:
        """Change :math:`B_\\text{base}` or :math:`B_\\text{eff}` (e.g. a new accumulation) and refresh the gain."""
        self.base_batch_size = _check_positive(base_batch_size, "base_batch_size")
        self.effective_batch_size = _check_positive(effective_batch_size, "effective_batch_size")
        self.refresh()

    def refresh(self) -> float:
        """Recompute the gain from the statistics now (1 before the first measurement) and return it."""
        sq, var = self.statistics()
        if sq is None or var is None:
            self.gain = 1.0
        else:
            self.gain = adascale_gain(sq, var, self.base_batch_size, self.scale)
        return self.gain

    def begin_step(self, optimizer: Optimizer) -> float:
        """The factor of this step (:class:`~lightning_lrbs.multipliers.StepMultipliers` calls it)."""
        self._applied = self.gain
        return self.factor

    def end_step(self, optimizer: Optimizer) -> None:
        """Count the finished step's gain into :attr:`progress` and refresh the gain from the statistics now in."""
        if self._applied is not None:
            self.progress += self._applied
            self._applied = None
        self.refresh()

    @property
    def pending(self) -> bool:
        """Whether a step started (its LR multiplied by the gain) and has not finished."""
        return self._stack.pending

    def unscaled_state_dict(self, state_dict: dict[str, Any]) -> None:
        """In ``state_dict``, a copy of ``optimizer.state_dict()`` taken while a step is pending (a checkpoint written
        from inside the step), put back the LRs as they were before the gain: what a finished step leaves."""
        self._stack.unscaled_state_dict(state_dict)

    def state_dict(self) -> dict[str, float]:
        """``{"progress": ...}``; the gain itself follows from the noise statistics (save those separately)."""
        return {"progress": self.progress}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :attr:`progress` and refresh the gain from the statistics now in place."""
        self.progress = float(state_dict["progress"])
        self.refresh()

    def remove(self) -> None:
        """Stop applying the gain, putting back any LR still scaled."""
        self._stack.discard(self)
        self._applied = None


class ScaleInvariantSchedule:
    r"""Step schedulers by AdaScale's scale-invariant iterations, and say when the base run's work is done.

    AdaScale (Johnson et al. 2020, Algorithm 1) counts the progress of a run at :math:`S` times the base batch as
    :math:`\tau = \sum_t r_t` base-batch steps (:attr:`AdaScaleLR.progress`): a step at the gain :math:`r_t` does the
    work of :math:`r_t` base steps. A schedule planned in steps of some length :math:`p` base steps (a
    per-optimizer-step scheduler planned at :math:`S` times the base batch: :math:`p = S`; a per-epoch one:
    :math:`p = S \times` steps per epoch) has taken :math:`\lfloor \tau / p \rfloor` steps after progress
    :math:`\tau`, and the run ends once :math:`\tau \ge T_\text{base}`. :meth:`advance` calls each scheduler's
    ``step()`` as many times as it is behind: 0 or 1 after an optimizer step, since :math:`r_t \le S \le p`.
    While :math:`r_t = S` (the linear rule) this is exactly one scheduler step per :math:`p / S` optimizer steps.

    Stepping whole steps, never fractions, keeps every scheduler exact, chainable ones included: after any number of
    optimizer steps each one is in the state of its own :math:`\lfloor \tau / p \rfloor`-th step.

    Args:
        schedulers: Schedulers with a ``step()`` that takes no argument (not ``ReduceLROnPlateau``).
        periods: :math:`p` of each scheduler, in base-batch steps.
        total: :math:`T_\text{base}`, the base-batch steps the run should do the work of (``math.inf``: no end).

    Example::

        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([w], lr=1.0)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        >>> invariant = ScaleInvariantSchedule([sched], periods=[4.0], total=12.0)  # S = 4, 3 steps planned
        >>> opt.step()  # optimizer steps come before scheduler steps
        >>> for progress in (2.5, 5.0, 6.5, 12.0):  # after steps with gains 2.5, 2.5, 1.5, 5.5
        ...     invariant.advance(progress)
        ...     print(sched.last_epoch, invariant.done(progress))
        0 False
        1 False
        1 False
        3 True
    """

    def __init__(self, schedulers: list[Any], periods: list[float], total: float) -> None:
        if len(periods) != len(schedulers):
            raise ValueError(f"{len(schedulers)} schedulers but {len(periods)} periods")
        self.schedulers = schedulers
        self.periods = [_check_positive(p, "periods") for p in periods]
        self.total = math.inf if total == math.inf else _check_positive(total, "total")
        self.stepped = [0] * len(schedulers)

    def due(self, progress: float) -> list[int]:
        r"""Scheduler steps each one owes at progress :math:`\tau`: :math:`\lfloor \tau/p \rfloor` minus those taken."""
        # 1e-9: a sum of gains equal to S in floating point must count a whole period
        return [max(0, math.floor(progress / p + 1e-9) - n) for p, n in zip(self.periods, self.stepped)]

    def advance(self, progress: float) -> None:
        """Step every scheduler that is behind progress ``progress`` (base-batch steps)."""
        for index, owed in enumerate(self.due(progress)):
            for _ in range(owed):
                self.schedulers[index].step()
            self.stepped[index] += owed

    def done(self, progress: float) -> bool:
        r"""Whether the progress :math:`\tau` reached :math:`T_\text{base}`."""
        return progress >= self.total * (1 - 1e-12)

    def state_dict(self) -> dict[str, Any]:
        return {"periods": list(self.periods), "total": self.total, "stepped": list(self.stepped)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the periods, the total and the steps taken (the schedulers' own states are saved with them)."""
        if len(state_dict["stepped"]) != len(self.schedulers):
            raise ValueError(
                f"the checkpoint's scale-invariant state has {len(state_dict['stepped'])} schedulers, the run "
                f"{len(self.schedulers)}"
            )
        self.periods = [float(p) for p in state_dict["periods"]]
        self.total = float(state_dict["total"])
        self.stepped = [int(n) for n in state_dict["stepped"]]
