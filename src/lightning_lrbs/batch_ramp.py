r"""Batch-size warmup: the batch grows from a start size to the target over the first samples of training.

Pure Python, no Lightning import.

Megatron-LM's ``--rampup-batch-size <start> <increment> <samples>``: with :math:`B_0` the start, :math:`\Delta B` the
increment, :math:`B` the target and :math:`N` the ramp's samples, there are :math:`n = (B - B_0)/\Delta B` increments,
one every :math:`N/n` samples, so after :math:`c` samples

.. math::

    B(c) = \min\!\left(B,\; B_0 + \left\lfloor \frac{c}{N / n} \right\rfloor \Delta B\right).

Large recipes grow the batch this way (Megatron-LM, NeMo; DeepSeek-V2 2304 → 9216 over 225B tokens; OLMo-core's
``BatchSizeSchedulerCallback``, Merrill et al. 2025, arXiv:2505.23971, whose critical batch grows fast early in
training), and Smith et al. 2017 (arXiv:1711.00489) grow the batch instead of decaying the LR.

On a fixed set of devices the batch grows by gradient accumulation: :math:`B(c) = A(c)\, b\, R` with :math:`b` the
per-device micro-batch and :math:`R` the data-parallel replicas, so every batch of the ramp must be a whole number of
micro-batch *rounds* :math:`b R` (:meth:`BatchRamp.check`). Lightning steps when the batches of the epoch so far divide
by the accumulation and zeroes the gradients at a batch index that divides by it, so a new accumulation :math:`A'` may
take over only at a batch :math:`k` of the epoch with :math:`k \bmod A' = 0` (:func:`aligned`): elsewhere the first
window would be short and start from the previous step's gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_lrbs.batch import check_positive_int

__all__ = ["BatchRamp", "aligned"]


@dataclass(frozen=True)
class BatchRamp:
    """Megatron's batch ramp: ``start`` samples per optimizer step, ``increment`` more every ``samples / increments``
    samples, until the target.

    Args:
        start: :math:`B_0`, the batch of the first optimizer steps (all data-parallel replicas together).
        increment: :math:`\\Delta B`.
        samples: :math:`N`, the samples over which the batch reaches the target.

    Raises:
        ValueError: If a number is not a positive int.

    Example::

        >>> ramp = BatchRamp(start=32, increment=32, samples=3000)
        >>> [ramp.batch(c, target=128) for c in (0, 999, 1000, 2500, 3000, 10**6)]
        [32, 32, 64, 96, 128, 128]
        >>> ramp.accumulation(1000, target=128, round_size=32)
        2
    """

    start: int
    increment: int
    samples: int

    def __post_init__(self) -> None:
        for name in ("start", "increment", "samples"):
            object.__setattr__(self, name, check_positive_int(getattr(self, name), f"batch_ramp {name}"))

    @classmethod
    def from_argument(cls, value: object, name: str = "batch_ramp") -> BatchRamp:
        """A ramp from ``(start, increment, samples)``, as the callback's argument takes it.

        Raises:
            ValueError: If ``value`` is not three positive ints (named ``name`` in the message).

        Example::

            >>> BatchRamp.from_argument((32, 32, 3000))
            BatchRamp(start=32, increment=32, samples=3000)
            >>> BatchRamp.from_argument(32)
            Traceback (most recent call last):
            ...
            ValueError: `batch_ramp` must be (start, increment, samples), three positive ints, got 32
        """
        if not isinstance(value, (tuple, list)) or len(value) != 3:
            raise ValueError(f"`{name}` must be (start, increment, samples), three positive ints, got {value!r}")
        start, increment, samples = value
        return cls(start, increment, samples)

    def increments(self, target: int) -> int:
        """:math:`n = (B - B_0) / \\Delta B` (0 when the ramp starts at the target)."""
        return max(target - self.start, 0) // self.increment

    def batch(self, consumed: float, target: int) -> int:
        """:math:`B(c)`, the batch after ``consumed`` samples."""
        n = self.increments(target)
        if n == 0:
            return target
        done = math.floor(consumed * n / self.samples + 1e-9)  # c / (N / n), without the rounding of N / n
        return min(target, self.start + done * self.increment)

    def accumulation(self, consumed: float, target: int, round_size: int) -> int:
        """The accumulation that gives :math:`B(c)` with ``round_size`` samples per micro-batch round."""
        return self.batch(consumed, target) // round_size

    def check(self, target: int, round_size: int) -> None:
        """Refuse a ramp whose batches are not whole numbers of micro-batch rounds.

        Args:
            target: :math:`B`, per-device batch × data-parallel replicas × the Trainer's accumulation.
            round_size: :math:`b R`, the samples of one micro-batch on every replica.

        Raises:
            ValueError: Naming the numbers that do not divide.

        Example::

            >>> BatchRamp(48, 32, 1000).check(target=128, round_size=32)
            Traceback (most recent call last):
            ...
            ValueError: batch_ramp start 48 is not a multiple of the micro-batch round 32 (per-device batch × data-parallel replicas): every batch of the ramp must be a whole number of micro-batches per replica
        """  # noqa: E501
        why = "every batch of the ramp must be a whole number of micro-batches per replica"
        round_text = f"the micro-batch round {round_size} (per-device batch × data-parallel replicas)"
        if self.start > target:
            raise ValueError(
                f"batch_ramp start {self.start} is larger than the target batch {target} (per-device batch × "
                "data-parallel replicas × accumulate_grad_batches): the ramp grows the batch up to the Trainer's"
            )
        if self.start % round_size:
            raise ValueError(f"batch_ramp start {self.start} is not a multiple of {round_text}: {why}")
        if self.increment % round_size:
            raise ValueError(f"batch_ramp increment {self.increment} is not a multiple of {round_text}: {why}")
        if (target - self.start) % self.increment:
            raise ValueError(
                f"batch_ramp increment {self.increment} does not divide the way from the start {self.start} to the "
                f"target batch {target} ({target - self.start} samples): the ramp must end at the target"
            )

    def describe(self, target: int) -> str:
        """``batch ramp 32 → 128: +32 every 1000 samples (3000 samples)``."""
        n = self.increments(target)
        if n == 0:
            return f"batch ramp: starts at the target {target}"
        return (
            f"batch ramp {self.start} → {target}: +{self.increment} every {self.samples / n:.6g} samples "
            f"({self.samples} samples)"
        )


def aligned(batches_this_epoch: int, accumulation: int) -> bool:
    """Whether accumulation ``accumulation`` may take over after ``batches_this_epoch`` batches of the epoch (its first
    window then starts, as Lightning counts them, at a batch index that divides by it).

    Example::

        >>> aligned(6, 3), aligned(4, 3), aligned(0, 5)
        (True, False, True)
    """
    return batches_this_epoch % accumulation == 0
