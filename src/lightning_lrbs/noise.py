r"""The gradient noise scale, measured from the micro-batch gradients a training step computes anyway.

Pure PyTorch, no Lightning import: usable from raw PyTorch and Lightning Fabric loops.

McCandlish et al. 2018 (*An Empirical Model of Large-Batch Training*, arXiv:1812.06162) show that the *simple noise
scale*

.. math::

    B_\text{noise} = \frac{\operatorname{tr}\Sigma}{|G|^2}

(:math:`G` the true gradient, :math:`\Sigma` the per-example gradient covariance) predicts the critical batch size:
at batch :math:`B` a run needs about :math:`S_\min(1 + B_\text{noise}/B)` steps and :math:`E_\min(1 + B/B_\text{noise})`
samples to reach a given loss. Batches well below :math:`B_\text{noise}` scale almost perfectly (the linear LR rule
holds); batches well beyond it buy few steps for many samples.

Both statistics come from gradients at two batch sizes on the same weights (their appendix A). An optimizer step that
averages :math:`k` micro-batch gradients :math:`g_j` of :math:`b` samples each (:math:`k = N A` with :math:`N` ranks
and :math:`A` accumulation steps; :math:`B = k b`) has :math:`E|g_j|^2 = |G|^2 + \operatorname{tr}\Sigma / b` and
:math:`E|\bar g|^2 = |G|^2 + \operatorname{tr}\Sigma / B`. With :math:`S = \frac1k\sum_j |g_j|^2` and
:math:`L = |\bar g|^2`, unbiased estimates are

.. math::

    |G|^2 \approx \frac{B L - b S}{B - b}, \qquad \operatorname{tr}\Sigma \approx \frac{S - L}{1/b - 1/B}.

Each step's ratio is heavy-tailed and biased, so numerator and denominator are smoothed separately (bias-corrected
exponential moving averages) and divided afterwards.

Example (a raw PyTorch loop with 4 accumulation steps; under DDP the per-rank sums are all-reduced)::

    >>> import torch
    >>> from lightning_lrbs.noise import GradientNoiseScale
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(10, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> gns = GradientNoiseScale(model.parameters(), smoothing=0.9)
    >>> accumulation, micro_batch = 4, 8
    >>> for step in range(20):
    ...     for _ in range(accumulation):
    ...         x = torch.randn(micro_batch, 10)
    ...         gns.micro_batch(micro_batch, loss_scale=1 / accumulation)  # before each backward of the step
    ...         loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean() / accumulation
    ...         loss.backward()
    ...     estimate = gns.step()  # reads the averaged .grad; before clipping and optimizer.step()
    ...     optimizer.step()
    ...     optimizer.zero_grad()
    >>> gns.measurements
    20
    >>> 0 < gns.noise_scale < 1000  # samples
    True
    >>> gns.remove()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_lrbs.sharding import hook_targets, is_dtensor, local_sq_norm

__all__ = [
    "BiasCorrectedEMA",
    "GradientNoiseScale",
    "NoiseEstimate",
    "describe_noise_scale",
    "grad_sq_norm_estimate",
    "grad_var_estimate",
    "harmonic_mean",
    "predicted_cost",
]

#: ``transform(param, grad) -> grad`` applied to every gradient before its squared norm (must be linear in ``grad``,
#: e.g. Adam's preconditioning ``grad / (sqrt(v_hat) + eps)``); ``None`` measures the raw gradients.
GradTransform = Callable[[Tensor, Tensor], Tensor]


def grad_sq_norm_estimate(small_sq: float, big_sq: float, small_batch: float, big_batch: float) -> float:
    r"""Unbiased estimate of the squared norm of the true gradient, :math:`|G|^2 \approx \frac{B L - b S}{B - b}`.

    McCandlish et al. 2018, appendix A, eq. (A.2): from :math:`E|g_b|^2 = |G|^2 + \operatorname{tr}\Sigma/b`
    at two batch sizes.

    Args:
        small_sq: :math:`S`, the mean squared norm of the gradients at the small batch size :math:`b`.
        big_sq: :math:`L`, the squared norm of the gradient at the big batch size :math:`B` (their mean).
        small_batch: :math:`b` (with micro-batches of different sizes: their harmonic mean, see :func:`harmonic_mean`).
        big_batch: :math:`B > b` (:math:`k b` for the mean of :math:`k` micro-batches).

    Example::

        >>> grad_sq_norm_estimate(small_sq=3.0, big_sq=1.5, small_batch=8, big_batch=32)
        1.0
    """
    if not big_batch > small_batch > 0:
        raise ValueError(f"`big_batch` must be > `small_batch` > 0: got {big_batch!r} and {small_batch!r}")
    return (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)


def grad_var_estimate(small_sq: float, big_sq: float, small_batch: float, big_batch: float) -> float:
    r"""Unbiased estimate of the trace of the per-example gradient covariance,
    :math:`\operatorname{tr}\Sigma \approx \frac{S - L}{1/b - 1/B}`.

    McCandlish et al. 2018, appendix A, eq. (A.3). Arguments as in :func:`grad_sq_norm_estimate`.

    Example::

        >>> grad_var_estimate(small_sq=3.0, big_sq=1.5, small_batch=8, big_batch=32)
        16.0
    """
    if not big_batch > small_batch > 0:
        raise ValueError(f"`big_batch` must be > `small_batch` > 0: got {big_batch!r} and {small_batch!r}")
    return (small_sq - big_sq) / (1.0 / small_batch - 1.0 / big_batch)


def _sum_of_squares(norms: Tensor | Sequence[Tensor]) -> Tensor:
    r""":math:`\sum_i n_i^2` of a 1-d tensor, or of 0-dim tensors (stacked first)."""
    stacked = norms if isinstance(norms, Tensor) else torch.stack(list(norms))
    return torch.dot(stacked, stacked)


def harmonic_mean(sizes: Sequence[float]) -> float:
    r"""The harmonic mean :math:`k / \sum_j 1/b_j` of micro-batch sizes.

    With micro-batches of different sizes :math:`b_j` averaged with equal weights (DDP averages ranks equally, each
    rank's loss being a mean over its own batch), :math:`E\,\frac1k\sum_j|g_j|^2 = |G|^2 + \operatorname{tr}\Sigma/b_h`
    and :math:`E|\bar g|^2 = |G|^2 + \operatorname{tr}\Sigma/(k b_h)` with :math:`b_h` this harmonic mean, so the
    two-batch estimates stay unbiased with :math:`b = b_h`, :math:`B = k b_h`.

    Example::

        >>> harmonic_mean([8, 8, 4, 4])
        5.333333333333333
    """
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"`sizes` must be a non-empty sequence of positive numbers: got {list(sizes)!r}")
    return len(sizes) / sum(1.0 / s for s in sizes)


def predicted_cost(noise_scale: float, batch_size: float) -> tuple[float, float]:
    r"""McCandlish et al. 2018 (eq. 2.11): the steps and samples a batch of :math:`B` needs relative to the ideal,
    :math:`S/S_\min = 1 + B_\text{noise}/B` and :math:`E/E_\min = 1 + B/B_\text{noise}`.

    Example::

        >>> predicted_cost(noise_scale=1000.0, batch_size=4000)
        (1.25, 5.0)
    """
    if not batch_size > 0 or not noise_scale > 0:
        raise ValueError(f"`noise_scale` and `batch_size` must be > 0: got {noise_scale!r} and {batch_size!r}")
    return 1.0 + noise_scale / batch_size, 1.0 + batch_size / noise_scale


def describe_noise_scale(noise_scale: float | None, batch_size: int, lower_bound: float | None = None) -> str:
    """One line saying what the measured noise scale means for an effective batch of ``batch_size``.

    Args:
        noise_scale: The smoothed noise scale (``None``: not measured yet).
        batch_size: The effective batch size.
        lower_bound: Give it (e.g. :attr:`GradientNoiseScale.noise_scale_lower_bound`) when the estimate is not
            resolved: the line then states the bound and the costs it implies.

    Example::

        >>> describe_noise_scale(820.0, 4096)
        'noise scale ≈ 820 samples; effective batch 4096 = 5.0× it: ≈1.2× the minimum steps, ≈6.0× the minimum samples'
        >>> describe_noise_scale(9000.0, 64, lower_bound=2500.0)
        'noise scale ≳ 2500 samples (|G|² not resolved at this batch); effective batch 64 ≤ 0.026× it: ≳40.1× the minimum steps, ≲1.0× the minimum samples'
    """  # noqa: E501
    if noise_scale is None:
        return "noise scale not measured yet"
    if lower_bound is not None:
        if not lower_bound > 0 or not math.isfinite(lower_bound):
            return f"noise scale not resolved (gradient noise dominates |G|²); effective batch {batch_size}"
        steps, samples = predicted_cost(lower_bound, batch_size)
        return (
            f"noise scale ≳ {_round(lower_bound)} samples (|G|² not resolved at this batch); effective batch "
            f"{batch_size} ≤ {_ratio(batch_size / lower_bound)}× it: ≳{steps:.1f}× the minimum steps, "
            f"≲{samples:.1f}× the minimum samples"
        )
    if not math.isfinite(noise_scale):
        return f"noise scale not resolved (gradient noise dominates |G|²); effective batch {batch_size}"
    if noise_scale <= 0:
        return f"noise scale ≈ 0 samples (no gradient noise measured); effective batch {batch_size}"
    steps, samples = predicted_cost(noise_scale, batch_size)
    return (
        f"noise scale ≈ {_round(noise_scale)} samples; effective batch {batch_size} = "
        f"{_ratio(batch_size / noise_scale)}× it: ≈{steps:.1f}× the minimum steps, ≈{samples:.1f}× the minimum samples"
    )


def _round(value: float) -> str:
    return f"{float(f'{value:.3g}'):.0f}" if value >= 100 else f"{value:.3g}"


def _ratio(value: float) -> str:
    return f"{value:.1f}" if value >= 0.95 else f"{value:.2g}"


class BiasCorrectedEMA:
    r"""Exponential moving average with Adam's bias correction (Kingma & Ba 2015):
    :math:`m_t = \beta m_{t-1} + (1-\beta) x_t`, reported as :math:`m_t / (1 - \beta^t)`, so the first value is
    :math:`x_1` and early values are not pulled toward 0.

    Args:
        smoothing: :math:`\beta \in [0, 1)`; ``0`` keeps only the latest value.

    Example::

        >>> ema = BiasCorrectedEMA(0.5)
        >>> ema.update(4.0); ema.update(1.0); ema.value
        2.0
    """

    def __init__(self, smoothing: float) -> None:
        self.smoothing = check_smoothing(smoothing)
        self.biased = 0.0
        self.weight = 0.0  # 1 - beta^t

    def update(self, value: float) -> None:
        """Fold in one value."""
        self.biased = self.smoothing * self.biased + (1.0 - self.smoothing) * value
        self.weight = self.smoothing * self.weight + (1.0 - self.smoothing)

    @property
    def value(self) -> float | None:
        """The bias-corrected average; ``None`` before the first value."""
        return self.biased / self.weight if self.weight > 0 else None


def check_smoothing(value: object, name: str = "smoothing") -> float:
    """Validate a smoothing factor in [0, 1), naming the argument in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class NoiseEstimate:
    """One optimizer step's two-batch statistics (unsmoothed).

    Attributes:
        grad_sq_norm: Estimate of :math:`|G|^2` (can be negative: it is unbiased, not clamped).
        grad_var: Estimate of :math:`\\operatorname{tr}\\Sigma` (per sample).
        small_batch: :math:`b`, the (harmonic mean) micro-batch size.
        micro_batches: :math:`k`, the number of micro-batch gradients, over all ranks.
        mean_sq: :math:`S`, mean squared norm of the micro-batch gradients.
        sq_of_mean: :math:`L`, squared norm of their mean.
    """

    grad_sq_norm: float
    grad_var: float
    small_batch: float
    micro_batches: int
    mean_sq: float
    sq_of_mean: float

    @property
    def big_batch(self) -> float:
        """:math:`B = k b`."""
        return self.micro_batches * self.small_batch


class GradientNoiseScale:
    r"""Measure :math:`B_\text{noise} = \operatorname{tr}\Sigma / |G|^2` from the micro-batch gradients of each step.

    Per-parameter hooks (``Tensor.register_hook``) add up :math:`|g_j|^2` of every micro-batch gradient as backward
    computes it: the local gradient, before DDP averages it over ranks and before it is added into ``.grad``. The
    hooks are registered by the first :meth:`micro_batch` of a step and removed by :meth:`step` (or kept for the
    next step with ``keep_hooks=True`` when every step is measured), so steps that are not measured cost nothing. A
    hook only writes its parameter's norm into a buffer allocated once (one kernel, no host sync); :meth:`step` sums
    their squares and reads every total in one host sync. Under FSDP2 the hooks sit on the unsharded parameters, and
    ``DTensor`` gradients count each piece once over the ranks (:mod:`lightning_lrbs.sharding`).
    :meth:`step` takes :math:`L = |\bar g|^2` from ``.grad`` (the mean over micro-batches and ranks), all-reduces the
    per-rank sums when ``torch.distributed`` is initialized, computes the two-batch estimates
    (:func:`grad_sq_norm_estimate`, :func:`grad_var_estimate`) and folds them into bias-corrected moving averages.

    Usage per measured optimizer step: call :meth:`micro_batch` before *every* backward of the step (on every rank),
    then :meth:`step` after the last backward and before gradient clipping or ``optimizer.step()`` (with AMP: after
    ``scaler.unscale_(optimizer)``). Steps without :meth:`micro_batch` calls are not measured. Under DDP call
    :meth:`step` on every rank on the same steps: it all-reduces.

    Args:
        params: The parameters whose gradients to measure (typically all trained ones).
        smoothing: :math:`\beta` of the moving averages, per measured step.
        transform: ``transform(param, grad) -> grad`` applied before every squared norm, in the hooks and to
            ``.grad`` alike; it must be linear in ``grad`` (e.g. a diagonal preconditioner). ``None``: raw gradients.
            If it has ``prepare()`` / ``release()`` methods they are called at each :meth:`micro_batch` and
            :meth:`step` (:class:`~lightning_lrbs.adascale.Preconditioner` gathers a sharded preconditioner there).
        sync: All-reduce the per-rank sums over the default process group; ``None`` (default): when
            ``torch.distributed`` is initialized with more than one rank. ``.grad`` must then hold the mean over ranks,
            as DDP leaves it (or, for ``DTensor`` gradients, its shards, as FSDP2 and tensor parallelism leave them).
        modules: The modules the parameters belong to (e.g. ``[model]``): needed under FSDP2, whose micro-batch
            gradients exist only on the unsharded twins of the parameters (:mod:`lightning_lrbs.sharding`).
        group_size: How many ranks compute each micro-batch (the tensor-parallel size; 1 under DDP and FSDP2): a
            plain-tensor gradient is then counted once per group, a ``DTensor`` one by its placements.

    Raises:
        ValueError: If ``smoothing`` is not in [0, 1) or ``params`` holds no tensor that requires a gradient.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        smoothing: float = 0.95,
        transform: GradTransform | None = None,
        sync: bool | None = None,
        modules: Sequence[torch.nn.Module] = (),
        group_size: int = 1,
    ) -> None:
        self.smoothing = check_smoothing(smoothing)
        self.params = [p for p in dict.fromkeys(params) if p.requires_grad]
        if not self.params:
            raise ValueError("`params` must hold at least one tensor that requires a gradient")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"`group_size` must be a positive int, got {group_size!r}")
        self.transform = transform
        self.sync = sync
        self.modules = list(modules)
        self.group_size = group_size
        self._targets: list[Tensor] | None = None
        self._sq_ema = BiasCorrectedEMA(self.smoothing)
        self._var_ema = BiasCorrectedEMA(self.smoothing)
        self._sq2_ema = BiasCorrectedEMA(self.smoothing)  # of |G|^2 estimates squared: their spread
        self.measurements = 0
        self.last: NoiseEstimate | None = None
        self._sizes: list[int] = []  # this rank's finished micro-batch sizes in the current step
        self._scales: list[float] = []  # their loss scales
        self._ends: list[int] = []  # where each one's norms end in `_norms`
        self._open: int | None = None  # size of the micro-batch whose backward is expected next
        self._loss_scale: float | None = None
        # the norms the hooks computed in the current step (loss-scaled), written into one preallocated buffer: new
        # tensors kept alive through the backward would move the step's large buffers in the heap (measured: ~1 % of
        # the MNIST CNN's step in wall time, docs/noise_scale.md)
        self._norms = torch.zeros(0, dtype=torch.float32)
        self._slots: list[Tensor] = []  # 0-dim views of `_norms`, made once
        self._used = 0
        self._handles: list[Any] = []  # hooks exist only during measured steps: other steps cost nothing

    # ------------------------------------------------------------------ results
    @property
    def grad_sq_norm(self) -> float | None:
        """The smoothed :math:`|G|^2` (``None`` before the first measurement)."""
        return self._sq_ema.value

    @property
    def grad_var(self) -> float | None:
        r"""The smoothed :math:`\operatorname{tr}\Sigma` (``None`` before the first measurement)."""
        return self._var_ema.value

    @property
    def noise_scale(self) -> float | None:
        r"""Smoothed :math:`B_\text{noise}` in samples: the ratio of the two averages. ``None`` before the first
        measurement; ``inf`` while the averaged :math:`|G|^2` is not positive (noise dominates the measurement)."""
        sq, var = self.grad_sq_norm, self.grad_var
        if sq is None or var is None:
            return None
        if sq <= 0:
            return math.inf
        return max(var, 0.0) / sq

    @property
    def noise_scale_lower_bound(self) -> float | None:
        r"""A rough 2-sigma lower bound on :math:`B_\text{noise}`,
        :math:`\operatorname{tr}\Sigma / (|G|^2 + 2\,\text{se})`, with se the standard error of the averaged
        :math:`|G|^2` (the spread of the per-step estimates over
        :math:`\sqrt{n}`, :math:`n = \min(\text{measurements}, (1+\beta)/(1-\beta))`). When the batch is far below
        the noise scale, each step's :math:`|G|^2` estimate is mostly noise: then only this bound is reliable."""
        sq, var, sq2 = self.grad_sq_norm, self.grad_var, self._sq2_ema.value
        if sq is None or var is None or sq2 is None:
            return None
        n = min(float(self.measurements), (1 + self.smoothing) / (1 - self.smoothing))
        stderr = math.sqrt(max(sq2 - sq * sq, 0.0) / max(n, 1.0))
        return max(var, 0.0) / (sq + 2 * stderr) if sq + 2 * stderr > 0 else math.inf

    @property
    def resolved(self) -> bool:
        """Whether the averaged :math:`|G|^2` is more than 2 standard errors above 0 (else :attr:`noise_scale` is
        dominated by noise and :attr:`noise_scale_lower_bound` is the number to read)."""
        low, value = self.noise_scale_lower_bound, self.noise_scale
        return low is not None and value is not None and math.isfinite(value) and low >= value / 2

    # ------------------------------------------------------------------ measuring
    def micro_batch(self, batch_size: int, loss_scale: float = 1.0) -> None:
        """Arm the hooks for the next backward pass.

        Args:
            batch_size: Samples in this micro-batch (on this rank).
            loss_scale: The factor the backward's loss carries relative to the mean loss over the micro-batch:
                ``1 / accumulation`` when the loss is divided for accumulation, times the AMP ``GradScaler`` scale.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
        if not (math.isfinite(loss_scale) and loss_scale > 0):
            raise ValueError(f"`loss_scale` must be a positive finite number, got {loss_scale!r}")
        self._close_micro_batch()
        if not self._handles:
            if self._targets is None:  # the tensors whose hooks see the micro-batch gradients (FSDP2: the twins)
                self._targets = hook_targets(self.params, [m for module in self.modules for m in module.modules()])
            device = self._targets[0].device  # the norms' buffer lives where the (first) gradients are
            if self._norms.device != device and not self._used:
                self._norms, self._slots = torch.zeros(0, dtype=torch.float32, device=device), []
            pairs = zip(self.params, self._targets)
            self._handles = [t.register_hook(self._make_hook(p, t)) for p, t in pairs]  # type: ignore[no-untyped-call]
        prepare = getattr(self.transform, "prepare", None)
        if prepare is not None:  # e.g. gather a sharded preconditioner for the full gradients the hooks see
            prepare()
        self._open = batch_size
        self._loss_scale = float(loss_scale)

    def discard(self, keep_hooks: bool = False) -> None:
        """Forget the current step's micro-batches (e.g. a step that is not taken) and remove the hooks (unless
        ``keep_hooks``: they then stay, idle, for the next :meth:`micro_batch`)."""
        self._sizes, self._scales, self._ends, self._used = [], [], [], 0
        self._loss_scale = self._open = None
        if not keep_hooks:
            self.remove()

    def step(self, grad_scale: float = 1.0, keep_hooks: bool = False) -> NoiseEstimate | None:
        """Finish a measured step: compute its estimates from the hooks' sums and ``.grad``, update the averages.

        Args:
            grad_scale: ``.grad`` holds ``grad_scale`` × the mean of the micro-batch gradients (``1`` when the loss
                of each of the ``A`` micro-batches was divided by ``A``; ``k / A`` for a step of only ``k < A``).
            keep_hooks: Keep the hooks for the next step, when it is measured too (they are registered once
                instead of at every step; idle, each costs one Python call per backward).

        Returns:
            The step's unsmoothed estimate, or ``None`` if the step was not measured (no :meth:`micro_batch` call on
            any rank), had a single micro-batch in all, or gave non-finite values (an AMP overflow); the averages are
            then left as they were.
        """
        self._close_micro_batch()
        sizes, local_sq = self._sizes, self._local_sum()
        plain_sq, sharded_sq = self._grad_sq_sums()
        self.discard(keep_hooks)
        release = getattr(self.transform, "release", None)
        if release is not None:
            release()
        share = 1.0 / self.group_size  # each micro-batch counts once over the ranks that compute it
        sum_sq, sq_sum, inv_sizes, count = self._totals(
            local_sq, plain_sq, sharded_sq, sum(share / b for b in sizes), share * len(sizes)
        )
        k = int(round(count))
        if k < 2:
            return None
        mean_sq = sum_sq / k
        sq_of_mean = sq_sum / grad_scale**2
        small = k / inv_sizes  # harmonic mean of the micro-batch sizes
        big = k * small
        estimate = NoiseEstimate(
            grad_sq_norm=grad_sq_norm_estimate(mean_sq, sq_of_mean, small, big),
            grad_var=grad_var_estimate(mean_sq, sq_of_mean, small, big),
            small_batch=small,
            micro_batches=k,
            mean_sq=mean_sq,
            sq_of_mean=sq_of_mean,
        )
        if not (math.isfinite(estimate.grad_sq_norm) and math.isfinite(estimate.grad_var)):
            return None
        self._sq_ema.update(estimate.grad_sq_norm)
        self._var_ema.update(estimate.grad_var)
        self._sq2_ema.update(estimate.grad_sq_norm**2)
        self.measurements += 1
        self.last = estimate
        return estimate

    def remove(self) -> None:
        """Remove the hooks now (the averages stay readable; the next :meth:`micro_batch` adds them again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The moving averages, so a resumed run continues them."""
        return {
            "smoothing": self.smoothing,
            "grad_sq_norm_biased": self._sq_ema.biased,
            "grad_var_biased": self._var_ema.biased,
            "grad_sq_norm_sq_biased": self._sq2_ema.biased,
            "weight": self._sq_ema.weight,
            "measurements": self.measurements,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s averages (missing keys leave the defaults). The saved averages are kept as
        they are even if this instance's ``smoothing`` differs; later updates use this instance's."""
        self._sq_ema.biased = float(state.get("grad_sq_norm_biased", 0.0))
        self._var_ema.biased = float(state.get("grad_var_biased", 0.0))
        self._sq2_ema.biased = float(state.get("grad_sq_norm_sq_biased", 0.0))
        self._sq_ema.weight = self._var_ema.weight = self._sq2_ema.weight = float(state.get("weight", 0.0))
        self.measurements = int(state.get("measurements", 0))

    # ------------------------------------------------------------------ internals
    def _make_hook(self, param: Tensor, target: Tensor) -> Callable[[Tensor], None]:
        """The hook on ``target`` (``param`` or its FSDP2 twin): it writes a norm whose square is this rank's share of
        the micro-batch gradient's :math:`|g|^2` into the next slot of the buffer (autograd calls it once per tensor and
        backward, so it does one tensor operation in the common case)."""
        transform, share = self.transform, 1.0 / self.group_size
        norm = torch.linalg.vector_norm
        plain = target.dtype == torch.float32 and target.device == self._norms.device and not is_dtensor(target)

        if transform is None and share == 1.0 and plain:

            def plain_hook(grad: Tensor) -> None:  # one process or DDP, float32: one kernel, no new tensor
                if self._loss_scale is not None:
                    norm(grad, out=self._next_slot())

            return plain_hook

        def hook(grad: Tensor) -> None:
            if self._loss_scale is None:
                return
            g = grad if transform is None else transform(param, grad)
            sq = local_sq_norm(g)  # a DTensor's share (sharded or tensor-parallel), or a plain tensor's whole
            if share != 1.0 and not is_dtensor(g):
                sq = sq * share  # a plain tensor counts once over the ranks that compute it
            self._next_slot().copy_(sq.sqrt())

        return hook

    def _next_slot(self) -> Tensor:
        """The next free element of the norms' buffer (as a 0-dim view), which doubles when full."""
        used, slots = self._used, self._slots
        if used == len(slots):
            grown = torch.zeros(max(2 * used, 4 * len(self.params)), dtype=torch.float32, device=self._norms.device)
            grown[:used].copy_(self._norms)
            self._norms, self._slots = grown, list(grown.unbind())
            slots = self._slots
        self._used = used + 1
        return slots[used]

    @property
    def local_micro_batches(self) -> int:
        """Micro-batches of the current step on this rank whose backward reached the hooks so far."""
        self._close_micro_batch()
        return len(self._sizes)

    def _close_micro_batch(self) -> None:
        """Fold the open micro-batch into the step's lists (no tensor work); one whose backward never ran (e.g.
        `training_step` returned None) is dropped."""
        start = self._ends[-1] if self._ends else 0
        if self._open is not None and self._used > start and self._loss_scale is not None:
            self._sizes.append(self._open)
            self._scales.append(self._loss_scale)
            self._ends.append(self._used)
        else:
            self._used = start
        self._open = None

    def _local_sum(self) -> Tensor | float:
        r""":math:`\sum_j |g_j|^2` of this rank's micro-batches from the hooks' norms, the loss scales divided out
        (one sum when they are equal, as within a step they are)."""
        norms, scales = self._norms[: self._used], self._scales
        if not self._used:
            return 0.0
        if all(scale == scales[0] for scale in scales):
            return _sum_of_squares(norms) / scales[0] ** 2
        starts = [0, *self._ends[:-1]]
        return sum(_sum_of_squares(norms[a:b]) / s**2 for a, b, s in zip(starts, self._ends, scales))

    def _grad_sq_sums(self) -> tuple[Tensor | float, Tensor | float]:
        """:math:`|\bar g|^2` from ``.grad``: the plain tensors' part (the same on every rank) and this rank's share of
        the ``DTensor``\\ s' part (:func:`~lightning_lrbs.sharding.local_sq_norm`, to be summed over ranks)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.transform is None and all(g.dtype == torch.float32 and not is_dtensor(g) for g in grads):
            return (_sum_of_squares(torch._foreach_norm(grads)) if grads else 0.0), 0.0  # one kernel per tensor
        plain: list[Tensor] = []
        sharded: list[Tensor] = []
        for p in self.params:
            if p.grad is None:
                continue
            g = p.grad.detach()
            if self.transform is not None:
                g = self.transform(p, g)
            (sharded if is_dtensor(g) else plain).append(local_sq_norm(g))
        return (torch.stack(plain).sum() if plain else 0.0), (torch.stack(sharded).sum() if sharded else 0.0)

    def _totals(
        self, local_sq: Tensor | float, plain_sq: Tensor | float, sharded_sq: Tensor | float, inv: float, count: float
    ) -> list[float]:
        """``[Σ_j |g_j|², |ḡ|², Σ 1/b_j, k]`` over all ranks, with one host sync: the per-rank sums, the sharded part of
        :math:`|\bar g|^2` and the counts are all-reduced (when distributed), its plain part, the same on every rank,
        is taken once."""
        dist = torch.distributed
        sync = self.sync
        if sync is None:
            sync = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        tensors = (local_sq, plain_sq, sharded_sq)
        device = next((v.device for v in tensors if isinstance(v, Tensor)), self.params[0].device)
        if sync and dist.get_backend() == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        sums = torch.stack([torch.as_tensor(v, dtype=dtype, device=device) for v in tensors])
        if not sync:
            local, plain, sharded = sums.tolist()
            return [local, plain + sharded, inv, count]
        counts = torch.tensor([inv, count], dtype=dtype, device=device)
        # the plain part from every rank: each gives a world-th of it
        tensor = torch.cat([sums[:1], sums[1:2] / dist.get_world_size() + sums[2:], counts])
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]
