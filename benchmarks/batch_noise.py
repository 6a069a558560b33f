r"""A batch that doubles when the measured gradient noise scale says a larger one pays: the ``noise`` schedule of
issue 20: the one candidate of the batch-ramp study that worked, on SGD under ``rule="sqrt"`` only. Study code, not
part of the package (``docs/ramp.md`` says why it does not ship).

Pure Python, no Lightning import.

McCandlish et al. 2018 (*An Empirical Model of Large-Batch Training*, arXiv:1812.06162): a batch well below the
noise scale :math:`B_\text{simple} = \operatorname{tr}\Sigma / |G|^2` scales almost perfectly, one well beyond it
spends samples for few steps. With :math:`\hat B_t` the smoothed estimate after measured step :math:`t`
(:class:`lightning_lrbs.noise.GradientNoiseScale`, :math:`\infty` while the averaged :math:`|G|^2` is not positive),
:math:`n_t` the measurements so far and :math:`B` the target batch, the batch doubles and never shrinks:

.. math::

    B_{t+1} = \begin{cases} \min(2 B_t,\ B) & \text{if } n_t \ge n_0 \text{ and } \hat B_t \ge k\, B_t, \\
    B_t & \text{otherwise,} \end{cases} \qquad B_0 = \text{start}.

The raw noise scale overstates the critical batch (2–10× on this package's batch-size study, ``docs/frontier.md``),
hence a large :math:`k`. The constants :math:`k = 8`, :math:`n_0 = 10` (smoothing 0.95 per measurement, every step
measured) come from ``docs/ramp.md`` (``benchmarks/ramp.py``): :math:`k` was the fewest-step choice within 1.1× the
base batch's samples among :math:`k \in \{2, 4, 8, 16, 32\}` on the MNIST MLP with plain SGD and ``rule="sqrt"``, and
was then checked on the other settings: with ``rule="sqrt"`` and SGD (the MLP and the CNN, two seeds each, and the MLP
with momentum) it reached the target loss in 0.37–0.40× the base's steps at 0.99–1.04× its samples; with Adam on the
CNN it needed 0.56× (``sqrt``) and 0.63× (``sde``) the steps; with ``rule="linear"`` no :math:`k` kept the MLP within
1.1× the samples. Batch 32 to 128 there, measured from two half-batch gradients per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_lrbs.batch import check_positive_int

__all__ = ["NoiseDoubling"]


@dataclass(frozen=True)
class NoiseDoubling:
    """Double the batch from ``start`` while the measured noise scale is at least ``k`` times it, up to the target.

    Args:
        start: :math:`B_0`, the batch of the first optimizer steps (all data-parallel replicas together).
        k: How many times the batch the smoothed noise scale must be for the batch to double.
        warm: :math:`n_0`, the measurements needed before the first decision.

    Raises:
        ValueError: If ``start`` or ``warm`` is not a positive int, or ``k`` not a finite positive number.

    Example::

        >>> rule = NoiseDoubling(start=32)
        >>> rule.batch(32, target=128, noise_scale=300.0, measurements=12)  # 300 >= 8 x 32
        64
        >>> rule.batch(64, target=128, noise_scale=300.0, measurements=40)  # 300 < 8 x 64
        64
        >>> rule.batch(64, target=128, noise_scale=float("inf"), measurements=40)  # |G|^2 not resolved above 0
        128
        >>> rule.batch(32, target=128, noise_scale=300.0, measurements=3)  # too few measurements yet
        32
    """

    start: int
    k: float = 8.0
    warm: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", check_positive_int(self.start, "batch_noise start"))
        object.__setattr__(self, "warm", check_positive_int(self.warm, "batch_noise warm"))
        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
            raise ValueError(f"`batch_noise k` must be a finite positive number, got {k!r}")
        object.__setattr__(self, "k", float(k))

    def batch(self, current: int, target: int, noise_scale: float | None, measurements: int) -> int:
        """The batch after a measured optimizer step: ``min(2 current, target)`` where the noise scale says so, else
        ``current`` (never smaller).

        Args:
            current: :math:`B_t`, the batch the schedule asks for now.
            target: :math:`B`, per-device batch × data-parallel replicas × the Trainer's accumulation.
            noise_scale: The smoothed :math:`B_\\text{simple}` (``GradientNoiseScale.noise_scale``), ``None`` before
                the first measurement.
            measurements: The measurements folded into it so far.
        """
        if current >= target or noise_scale is None or measurements < self.warm:
            return current
        return min(2 * current, target) if noise_scale >= self.k * current else current

    def check(self, target: int, round_size: int, replicas: int) -> None:
        """Refuse a schedule whose batches are not whole numbers of micro-batch rounds, or whose first batch gives the
        noise estimator fewer than two micro-batch gradients per step.

        Args:
            target: :math:`B`.
            round_size: :math:`b R`, the samples of one micro-batch on every replica.
            replicas: :math:`R`, the data-parallel replicas (each computes its own micro-batch gradients).

        Raises:
            ValueError: Naming the numbers that do not fit.

        Example::

            >>> NoiseDoubling(32).check(target=128, round_size=32, replicas=1)
            Traceback (most recent call last):
            ...
            ValueError: batch_noise start 32 is one micro-batch round (32 samples on 1 replica): the noise scale needs at least two micro-batch gradients per step; halve the per-device batch or start at 64
        """  # noqa: E501
        if self.start > target:
            raise ValueError(f"batch_noise start {self.start} is larger than the target batch {target}")
        if self.start % round_size or target % round_size:
            raise ValueError(
                f"batch_noise start {self.start} and the target {target} must be multiples of the micro-batch round "
                f"{round_size} (per-device batch × data-parallel replicas)"
            )
        if (self.start // round_size) * replicas < 2:
            raise ValueError(
                f"batch_noise start {self.start} is one micro-batch round ({round_size} samples on {replicas} "
                f"replica{'s' if replicas > 1 else ''}): the noise scale needs at least two micro-batch gradients per "
                f"step; halve the per-device batch or start at {2 * self.start}"
            )

    def describe(self, target: int) -> str:
        """``batch noise 32 → 128: doubles when B_simple ≥ 8 × the batch``."""
        return f"batch noise {self.start} → {target}: doubles when B_simple ≥ {self.k:g} × the batch"
