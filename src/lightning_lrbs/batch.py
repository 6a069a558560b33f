r"""The effective batch size, and the per-device batch size a data loader feeds.

Pure PyTorch, no Lightning import: usable from raw PyTorch and Lightning Fabric.

The effective batch size is the number of samples whose gradients one optimizer step averages:

.. math::

    B_\text{eff} = A \sum_{r=1}^{R} b_r \;=\; b \times \text{devices} \times \text{nodes} \times A
    \quad\text{when all } R \text{ ranks feed the same } b,

with :math:`b_r` the batch size rank :math:`r` feeds and :math:`A` the gradient-accumulation steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_lrbs._coerce import as_int

__all__ = ["check_positive_int", "effective_batch_size", "loader_batch_size"]


def check_positive_int(value: object, name: str) -> int:
    """Validate a positive int (not a bool; NumPy integers and 0-d integer arrays count), naming the argument in the
    error. Returns a Python ``int``.

    Example::

        >>> check_positive_int(0, "base_batch_size")
        Traceback (most recent call last):
        ...
        ValueError: `base_batch_size` must be a positive int, got 0
    """
    integer = as_int(value)
    if integer is None or integer < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return integer


def loader_batch_size(loader: Any) -> int | None:
    """The batch size a ``DataLoader`` (or any loader-like object) yields, or ``None`` if it does not say.

    Reads ``loader.batch_size``, then ``loader.batch_sampler.batch_size``. A custom batch sampler without a
    ``batch_size`` attribute, or an ``IterableDataset`` that batches itself, gives ``None``: only a batch tells.

    Example::

        >>> import torch
        >>> from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
        >>> data = torch.zeros(10, 1)
        >>> loader_batch_size(DataLoader(data, batch_size=4))
        4
        >>> loader_batch_size(DataLoader(data, batch_sampler=BatchSampler(SequentialSampler(data), 3, False)))
        3
    """
    for owner in (loader, getattr(loader, "batch_sampler", None)):
        size = getattr(owner, "batch_size", None)
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
    return None


def effective_batch_size(per_rank_batch_sizes: int | Sequence[int], accumulation: int = 1, world_size: int = 1) -> int:
    r"""The effective batch size :math:`B_\text{eff} = A \sum_r b_r`.

    Args:
        per_rank_batch_sizes: The batch size of every rank (a sequence), or one size shared by all
            ``world_size`` ranks.
        accumulation: Gradient-accumulation steps :math:`A`.
        world_size: Number of ranks when ``per_rank_batch_sizes`` is a single int (e.g. ``fabric.world_size``).

    Example::

        >>> effective_batch_size(32, accumulation=2, world_size=16)
        1024
        >>> effective_batch_size([32, 30], accumulation=4)
        248
    """
    accumulation = check_positive_int(accumulation, "accumulation")
    if as_int(per_rank_batch_sizes) is not None or not isinstance(per_rank_batch_sizes, Sequence):
        size = check_positive_int(per_rank_batch_sizes, "batch_size")
        return size * check_positive_int(world_size, "world_size") * accumulation
    sizes = [check_positive_int(b, "batch_size") for b in per_rank_batch_sizes]
    if not sizes:
        raise ValueError("`per_rank_batch_sizes` must not be empty")
    return sum(sizes) * accumulation
