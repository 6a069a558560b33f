"""The other callbacks of the Trainer the scaling must follow: LR finders (their suggestion is an LR at the swept
batch), ``StochasticWeightAveraging`` (its ``swa_lrs``, its BatchNorm epoch), ``BackboneFinetuning`` (the backbone LRs
it keeps), ``WeightAveraging`` (the EMA decay) and
``BatchSizeFinder``/``GradientAccumulationScheduler`` (checked where they matter)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from lightning_lrbs.rescale import scalable_groups

__all__: list[str] = []


def finder_suggestion(finder: Any) -> float | None:
    """The LR a finished ``LearningRateFinder`` wrote into the module (``None`` if it did not)."""
    result = getattr(finder, "optimal_lr", None)
    if result is None or not getattr(finder, "_update_attr", True):
        return None
    lr = result.suggestion()
    return None if lr is None else float(lr)


def tuned_suggestion(pl: ModuleType, trainer: Any) -> tuple[float, int] | None:
    """``(suggestion, accumulation)`` of a ``Tuner.lr_find`` fit ending now (it ends its fit right after the finder),
    else ``None``."""
    tuned = None
    for callback in getattr(trainer, "callbacks", ()):
        if isinstance(callback, pl.callbacks.LearningRateFinder) and getattr(callback, "_early_exit", False):
            lr = finder_suggestion(callback)
            if lr is not None:
                tuned = (lr, int(trainer.accumulate_grad_batches))
    return tuned


def found_lr(
    pl: ModuleType, trainer: Any, tuned: tuple[float, int] | None, setup_accumulation: int
) -> tuple[float, int] | None:
    """``(suggestion, accumulation it was swept at)`` when an LR finder set the optimizers' LR, else ``None``.

    A ``LearningRateFinder`` in this fit (swept at ``setup_accumulation``), or a ``Tuner.lr_find`` fit before it
    (``tuned``), counts when one of the groups' ``lr`` or ``initial_lr`` equals its suggestion (``lr_find`` writes it
    into every group, or into the module's LR attribute that ``configure_optimizers`` reads).
    """
    found = tuned
    for callback in trainer.callbacks:
        if isinstance(callback, pl.callbacks.LearningRateFinder):
            lr = finder_suggestion(callback)
            if lr is not None:
                found = (lr, setup_accumulation)
    if found is None:
        return None
    for optimizer in trainer.optimizers:
        for group, active in zip(optimizer.param_groups, scalable_groups(optimizer)):
            values = [group["lr"], group.get("initial_lr", group["lr"])]
            if active and any(math.isclose(float(v), found[0], rel_tol=1e-12) for v in values):
                return found
    return None


def scale_swa(pl: ModuleType, trainer: Any, targets: Sequence[float], originals: dict[int, Any]) -> str:
    """Give each ``StochasticWeightAveraging`` its ``swa_lrs`` × the factor (SWA allows one optimizer), from the
    ``swa_lrs`` it had first (kept in ``originals`` by ``id``); the ``swa_lr`` its ``SWALR`` already put into the param
    groups is rescaled with the other LRs. Returns the text for the summary."""
    text = ""
    for callback in trainer.callbacks:
        if isinstance(callback, pl.callbacks.StochasticWeightAveraging) and targets:
            original = originals.setdefault(id(callback), callback._swa_lrs)
            f = targets[0]
            scaled = [lr * f for lr in original] if isinstance(original, list) else original * f
            callback._swa_lrs = scaled
            shown = ", ".join(f"{v:.4g}" for v in (original if isinstance(original, list) else [original]))
            after = ", ".join(f"{v:.4g}" for v in (scaled if isinstance(scaled, list) else [scaled]))
            text += f"; StochasticWeightAveraging swa_lrs {shown} → {after}"
    return text


def swa_bn_pass(pl: ModuleType, trainer: Any) -> bool:
    """Whether this is the extra epoch in which ``StochasticWeightAveraging`` recomputes BatchNorm statistics
    (it sets ``accumulate_grad_batches`` to the epoch's length and skips the backward: no batch change)."""
    return any(
        isinstance(callback, pl.callbacks.StochasticWeightAveraging)
        and getattr(callback, "_model_contains_batch_norm", False)
        and getattr(callback, "_max_epochs", -1) != -1
        and trainer.current_epoch == callback.swa_end + 1
        for callback in trainer.callbacks
    )


def averaged_models(pl: ModuleType, trainer: Any) -> list[Any]:
    """The averaged models of the Trainer's ``WeightAveraging`` callbacks (Lightning >= 2.5) that have one."""
    averaging = getattr(pl.callbacks, "WeightAveraging", None)
    callbacks = [cb for cb in trainer.callbacks if averaging and isinstance(cb, averaging)]
    models = [getattr(cb, "_average_model", None) for cb in callbacks]
    return [m for m in models if m is not None]


def scale_backbone_finetuning(
    pl: ModuleType, trainer: Any, targets: Sequence[float], relative: Sequence[float], originals: dict[int, Any]
) -> None:
    """Let each ``BackboneFinetuning`` follow the scale: it sets the backbone group's LR itself at every epoch start,
    from LRs it keeps (``previous_backbone_lr``, which it multiplies each epoch: rescaled by ``relative`` like the
    param groups; ``backbone_initial_lr``, an LR for the base batch: the original × the factor, kept in
    ``originals`` by ``id``). Without it, its next epoch would put back an unscaled backbone LR."""
    finetuning = getattr(pl.callbacks, "BackboneFinetuning", None)
    for callback in trainer.callbacks:
        if finetuning is None or not isinstance(callback, finetuning) or not targets:
            continue
        original = originals.setdefault(id(callback), callback.backbone_initial_lr)
        if original is not None:
            callback.backbone_initial_lr = original * targets[0]
        if callback.previous_backbone_lr is not None:
            callback.previous_backbone_lr *= relative[0]
