"""What the train loaders feed: the per-device batch size (loaders, ``CombinedLoader``, the first batch) and the
accumulation now."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from lightning_lrbs.batch import loader_batch_size

__all__: list[str] = []


def accumulation_now(pl: ModuleType, trainer: Any, override: int | None = None) -> int:
    """Accumulation for the current epoch: ``override`` (manual accumulation) if given, else read from a
    ``GradientAccumulationScheduler`` directly, so that the result does not depend on whether it ran its
    ``on_train_epoch_start`` before the caller, else ``trainer.accumulate_grad_batches``."""
    if override is not None:
        return override
    for callback in trainer.callbacks:
        if isinstance(callback, pl.callbacks.GradientAccumulationScheduler):
            return int(callback.get_accumulate_grad_batches(trainer.current_epoch))
    return int(trainer.accumulate_grad_batches)


def local_batch_size(pl: ModuleType, trainer: Any, batch: Any, override: int | None = None) -> int | None:
    """This rank's per-step batch size: ``override``, the train loaders' sizes (summed), or the batch's (``None``:
    not found, or only a batch tells and none is given)."""
    if override is not None:
        return override
    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    if getattr(combined, "_mode", None) == "sequential":
        return None if batch is None else batch_len(pl, batch)
    return tree_batch_size(pl, trainer.train_dataloader, batch)


def tree_batch_size(pl: ModuleType, loaders: Any, batch: Any) -> int | None:
    """The summed batch size of a loader, a ``CombinedLoader`` or a mapping or sequence of them, reading the matching
    part of ``batch`` for a loader that does not expose its batch size."""
    if isinstance(loaders, pl.utilities.combined_loader.CombinedLoader):
        return tree_batch_size(pl, loaders.iterables, batch)
    if isinstance(loaders, Mapping):
        sizes = [tree_batch_size(pl, v, None if batch is None else batch[k]) for k, v in loaders.items()]
    elif isinstance(loaders, Sequence) and not isinstance(loaders, (str, bytes)):
        parts: list[Any] = list(batch) if isinstance(batch, (list, tuple)) else [None] * len(loaders)
        if len(parts) != len(loaders):
            parts = [None] * len(loaders)
        sizes = [tree_batch_size(pl, v, b) for v, b in zip(loaders, parts)]
    else:
        size = loader_batch_size(loaders)
        if size is None and batch is not None:
            size = batch_len(pl, batch)
        return size
    if not sizes or any(s is None for s in sizes):
        return None
    return sum(s for s in sizes if s is not None)


def batch_len(pl: ModuleType, batch: Any) -> int | None:
    """The batch size Lightning's ``extract_batch_size`` finds in ``batch`` (``None`` if none, or not positive)."""
    try:
        size = int(pl.utilities.data.extract_batch_size(batch))
    except Exception:
        return None
    return size if size > 0 else None
