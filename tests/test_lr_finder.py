"""LR finders (issue 9, point 3): ``LearningRateFinder`` and ``Tuner.lr_find`` sweep at the batch the run really uses,
so their suggestion is already the LR for that batch. The callback leaves the sweep alone, trains at the suggestion
(× rule(effective / swept batch) when the batch changes later) and keeps the warmup it was given.

Every run is a real fit; the LR of every optimizer step is recorded by the module's ``on_before_optimizer_step``, which
Lightning calls inside ``optimizer.step`` after the step pre-hooks (so after the warmup applied its factor).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import GradientAccumulationScheduler, LearningRateFinder
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.tuner import lr_finder as lightning_lr_finder
from lrbs_testing import LRModel, quiet_trainer

from lightning_lrbs import BatchScalingCallback

REL = 1e-9
# A `LearningRateFinder` in the fit writes its suggestion into the running optimizer only since Lightning PR #21068
# (issue #21030); before, the fit also stopped after the sweep's step count. Those Lightnings are skipped here: their
# run trains at the module's own LR, which the callback scales as usual.
IN_FIT_FINDER = 'pg["lr"] = lr' in inspect.getsource(lightning_lr_finder._lr_find)
in_fit_finder = pytest.mark.skipif(not IN_FIT_FINDER, reason="LearningRateFinder in the fit needs Lightning #21068")
SWEEP = 15  # optimizer steps of the finder's sweep
MIN_LR, MAX_LR = 1e-8, 1.0


def sweep_lrs(tmp_path: Path) -> list[list[float]]:
    """The LRs of the finder's sweep in a fit without the callback (a reference run)."""
    model = LRModel(batch_size=2)
    quiet_trainer(tmp_path / "reference", max_epochs=1, limit_train_batches=20, callbacks=[finder()]).fit(model)
    return model.lrs[:SWEEP]


def w(t: int, warmup: int, start: float) -> float:
    return start + (1.0 - start) * min(1.0, t / warmup)


def finder(**kwargs: Any) -> LearningRateFinder:
    return LearningRateFinder(
        min_lr=MIN_LR, max_lr=MAX_LR, num_training_steps=SWEEP, early_stop_threshold=None, **kwargs
    )


@in_fit_finder
@pytest.mark.parametrize("order", ["finder_first", "callback_first"])
def test_finder_in_the_same_fit_trains_at_its_suggestion(tmp_path: Path, order: str) -> None:
    """Batch 2 per device, base 1: the rule would scale ×2. The finder swept at batch 2, so the suggestion is used as
    is (×1) with the configured warmup (4 steps from ×1/2, the unscaled LR's share); from epoch 1 a
    GradientAccumulationScheduler doubles the batch: ×2 relative to the suggestion, from that epoch on."""
    model = LRModel(batch_size=2)
    callback = BatchScalingCallback(base_batch_size=1, warmup_steps=4)
    lr_finder = finder()
    accumulation = GradientAccumulationScheduler({1: 2})
    ordered = [lr_finder, callback] if order == "finder_first" else [callback, lr_finder]
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=20, callbacks=[*ordered, accumulation])
    trainer.fit(model)

    assert lr_finder.optimal_lr is not None
    suggestion = lr_finder.optimal_lr.suggestion()
    assert suggestion is not None
    # The sweep ran untouched: exactly the finder's own schedule, on both groups.
    assert model.lrs[:SWEEP] == sweep_lrs(tmp_path)
    training = model.lrs[SWEEP:]
    assert len(training) == 20 + 10
    expected = [
        [suggestion * (1.0 if t < 20 else 2.0) * w(t, 4, 0.5)] * 2 for t in range(len(training))
    ]  # the finder writes its suggestion into every group
    for t, (got, want) in enumerate(zip(training, expected)):
        assert got == pytest.approx(want, rel=REL), f"step {t}"
    assert callback.scale_factor == pytest.approx(2.0, rel=REL)
    assert callback.effective_batch_size == 4
    assert "LR finder, which swept at batch 2: base 2, not 1" in callback.summary
    assert "warmup 4 steps from ×0.5" in callback.summary


def test_tuner_lr_find_then_fit_trains_at_the_suggestion(tmp_path: Path) -> None:
    """``Tuner(trainer).lr_find(model)`` sets ``model.lr``; ``configure_optimizers`` builds the groups from it (``lr``,
    ``lr / 2``). The following ``trainer.fit(model)`` trains at those LRs (×1), with the warmup."""
    model = LRModel(batch_size=2)
    callback = BatchScalingCallback(base_batch_size=1, warmup_steps=4)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=20, callbacks=[callback])
    result = Tuner(trainer).lr_find(model, min_lr=MIN_LR, max_lr=MAX_LR, num_training=SWEEP, early_stop_threshold=None)
    assert result is not None
    suggestion = result.suggestion()
    assert suggestion is not None
    assert model.lr == suggestion
    assert model.lrs == sweep_lrs(tmp_path)
    model.lrs.clear()

    trainer.fit(model)
    assert len(model.lrs) == 20
    for t, got in enumerate(model.lrs):
        assert got == pytest.approx([suggestion * w(t, 4, 0.5), suggestion / 2 * w(t, 4, 0.5)], rel=REL), f"step {t}"
    assert callback.scale_factor == 1.0
    assert "LR finder, which swept at batch 2: base 2, not 1" in callback.summary


@in_fit_finder
def test_lr_not_from_the_finder_is_scaled(tmp_path: Path) -> None:
    """A finder that keeps the module's LR (``update_attr=False``) leaves it to the rule: ×2."""
    model = LRModel(batch_size=2)
    callback = BatchScalingCallback(base_batch_size=1)
    callbacks = [finder(update_attr=False), callback]
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=20, callbacks=callbacks)
    trainer.fit(model)
    assert model.lrs[SWEEP:] == [pytest.approx([0.2, 0.1], rel=REL)] * 20
    assert "LR finder" not in callback.summary


class EpochStartFinder(LearningRateFinder):
    """Lightning's documented fine-tuning pattern: the finder sweeps when an epoch starts, after training started."""

    def on_fit_start(self, *args: Any) -> None:
        return

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 0:
            self.lr_find(trainer, pl_module)


@in_fit_finder
def test_sweep_in_the_middle_of_training_is_not_warmed(tmp_path: Path) -> None:
    """The callback's warmup hooks are on the optimizer when this finder sweeps: the sweep must still use exactly the
    finder's LRs. Afterwards the run trains at the suggestion, warmed from step 0."""
    model = LRModel(batch_size=2)
    callback = BatchScalingCallback(base_batch_size=1, warmup_steps=4)
    lr_finder = EpochStartFinder(min_lr=MIN_LR, max_lr=MAX_LR, num_training_steps=SWEEP, early_stop_threshold=None)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=20, callbacks=[callback, lr_finder])
    trainer.fit(model)
    assert model.lrs[:SWEEP] == sweep_lrs(tmp_path)
    assert lr_finder.optimal_lr is not None
    suggestion = lr_finder.optimal_lr.suggestion()
    assert suggestion is not None
    training = model.lrs[SWEEP:]
    assert len(training) == 20
    for t, got in enumerate(training):
        assert got == pytest.approx([suggestion * (0.5 + 0.5 * min(1.0, t / 4))] * 2, rel=REL), f"step {t}"


@in_fit_finder
def test_resume_keeps_the_batch_the_finder_swept_at(tmp_path: Path) -> None:
    """The swept batch is saved as the base: resumed with accumulation 2 (no finder), the LR is the suggestion × 2
    (rule(4 / 2)), not × rule(4 / base_batch_size) = 4."""
    model = LRModel(batch_size=2)
    lr_finder = finder()
    first = quiet_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=20,
        enable_checkpointing=True,
        callbacks=[lr_finder, BatchScalingCallback(base_batch_size=1)],
    )
    first.fit(model)
    assert lr_finder.optimal_lr is not None
    suggestion = lr_finder.optimal_lr.suggestion()
    assert suggestion is not None
    assert model.lrs[SWEEP:] == [pytest.approx([suggestion] * 2, rel=REL)] * 20
    checkpoint = first.checkpoint_callback.best_model_path  # type: ignore[union-attr]

    resumed = LRModel(batch_size=2)
    callback = BatchScalingCallback(base_batch_size=1)
    second = quiet_trainer(
        tmp_path, max_epochs=2, limit_train_batches=20, accumulate_grad_batches=2, callbacks=[callback]
    )
    second.fit(resumed, ckpt_path=checkpoint)
    assert resumed.lrs == [pytest.approx([2 * suggestion] * 2, rel=REL)] * 10
    assert callback.scale_factor == 2.0
    assert "swept at batch 2: base 2, not 1" in callback.summary
