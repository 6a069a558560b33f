"""The batch size changes after training started (issue 9, point 4): with ``reload_dataloaders_every_n_epochs`` a
new loader may feed another batch size. The callback follows it like a change of accumulation: from that epoch the
LRs are rescaled by the ratio, a new summary line says so, ``effective_batch_size`` is the current one.

LRs are recorded by the module's ``on_before_optimizer_step`` (inside ``optimizer.step``, after the step pre-hooks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import BatchSizeFinder
from lightning.pytorch.demos.boring_classes import RandomDataset
from lrbs_testing import LRModel, quiet_trainer, run_script
from torch.utils.data import DataLoader, Sampler

from lightning_lrbs import BatchScalingCallback

REL = 1e-9
SIZES = {0: 4, 1: 8, 2: 2}  # per-device batch size of each epoch's loader


class Batches(Sampler[list[int]]):
    """A batch sampler without a ``batch_size`` attribute: only the batches tell their size."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, self.n, self.size):
            yield list(range(start, min(start + self.size, self.n)))

    def __len__(self) -> int:
        return -(-self.n // self.size)


class GrowingBatchModel(LRModel):
    """A new loader each epoch, with the batch size of ``SIZES``; ``sampler=True`` hides it in a custom sampler."""

    def __init__(self, hidden: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden = hidden

    def train_dataloader(self) -> DataLoader[Any]:
        size = SIZES[self.trainer.current_epoch]
        data = RandomDataset(32, 64)
        if not self.hidden:
            return DataLoader(data, batch_size=size)

        return DataLoader(data, batch_sampler=Batches(len(data), size))


@pytest.mark.parametrize("hidden", [False, True], ids=["loader_says", "first_batch_says"])
def test_reloaded_loader_with_another_batch_size_rescales_from_its_epoch(
    tmp_path: Path, hidden: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Base 2: ×2 at batch 4, ×4 at batch 8, ×1 at batch 2; with a 6-step warmup from ×1/2 that is not restarted."""
    model = GrowingBatchModel(hidden=hidden)
    callback = BatchScalingCallback(base_batch_size=2, warmup_steps=6)
    trainer = quiet_trainer(tmp_path, max_epochs=3, reload_dataloaders_every_n_epochs=1, callbacks=[callback])
    with caplog.at_level(logging.INFO):
        trainer.fit(model)
    assert len(model.lrs) == 12
    for t, got in enumerate(model.lrs):
        factor = {0: 2.0, 1: 4.0, 2: 1.0}[t // 4]
        w = 0.5 + 0.5 * min(1.0, t / 6)
        assert got == pytest.approx([0.1 * factor * w, 0.05 * factor * w], rel=REL), f"step {t}"
    assert callback.effective_batch_size == 2
    assert callback.per_device_batch_size == 2
    assert callback.scale_factor == 1.0
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("effective batch")]
    assert [s.split(";")[0] for s in summaries] == [
        "effective batch 4 = 4 per device",
        "effective batch 8 = 8 per device",
        "effective batch 2 = 2 per device",
    ]
    assert "LR ×4: SGD 0.1, 0.05 → 0.4, 0.2" in summaries[1]


def test_reload_with_the_same_batch_size_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = LRModel(batch_size=8)
    callback = BatchScalingCallback(base_batch_size=4)
    with caplog.at_level(logging.INFO):
        quiet_trainer(tmp_path, max_epochs=3, reload_dataloaders_every_n_epochs=1, callbacks=[callback]).fit(model)
    assert model.lrs == [pytest.approx([0.2, 0.1], rel=REL)] * 12
    assert sum(r.getMessage().startswith("effective batch") for r in caplog.records) == 1


@pytest.mark.slow
def test_ddp_ranks_regather_their_sizes_at_each_reload(tmp_path: Path) -> None:
    """2 ranks (gloo): epoch 0 feeds 8 + 8 = 16 (×2 at base 8), epoch 1 feeds 8 + 4 = 12 (×1.5) after the reload; both
    ranks apply the same LRs at every step."""
    ranks = run_script("ddp_reload_fit.py", tmp_path)
    for rank in ranks:
        assert rank["effective"] == 12
        assert rank["lrs"] == [pytest.approx([0.1 * f, 0.05 * f], rel=REL) for f in (2.0, 2.0, 1.5, 1.5)]
    assert ranks[0]["summary"].startswith("effective batch 12 = (8 + 4) over ranks; base 8; rule linear → LR ×1.5")


class SizeRecordingModel(LRModel):
    """Records the size of every training batch next to the LRs of every optimizer step (one step per batch), but not
    in the finder's trial runs (which run with the finder's callbacks only, and restore the weights after)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes: list[int] = []

    def _training(self) -> bool:
        return any(isinstance(c, BatchScalingCallback) for c in self.trainer.callbacks)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self._training():
            self.sizes.append(len(batch))
        return super().training_step(batch, batch_idx)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self._training():
            super().on_before_optimizer_step(optimizer)


class EpochStartBatchSizeFinder(BatchSizeFinder):
    """Lightning's documented fine-tuning pattern: scale the batch size when an epoch starts (here epoch 1)."""

    def on_fit_start(self, *args: Any) -> None:
        return

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            self.scale_batch_size(trainer, pl_module)


@pytest.mark.parametrize("when", ["fit_start", "epoch_start"])
@pytest.mark.parametrize("finder_first", [True, False])
def test_batch_size_finder_batch_is_the_one_scaled_for(tmp_path: Path, when: str, finder_first: bool) -> None:
    """A ``BatchSizeFinder`` rebuilds the loader with the batch it found, before training (``on_fit_start``) or in the
    middle of it (``on_train_epoch_start``, with no reload configured): every step's LR is 0.1 × its batch / 2."""
    model = SizeRecordingModel(batch_size=4)
    kind = BatchSizeFinder if when == "fit_start" else EpochStartBatchSizeFinder
    finder = kind(mode="power", steps_per_trial=1, init_val=4, max_trials=2)
    callback = BatchScalingCallback(base_batch_size=2)
    callbacks = [finder, callback] if finder_first else [callback, finder]
    quiet_trainer(tmp_path, max_epochs=2, callbacks=callbacks).fit(model)
    found = model.batch_size
    assert found > 4  # 8 (Lightning 2.6) or 16 (2.1 counts its trials differently)
    assert len(model.lrs) == len(model.sizes)
    if when == "epoch_start":
        assert model.sizes[:4] == [4] * 4
    assert model.sizes[-1] == found
    for t, (size, lrs) in enumerate(zip(model.sizes, model.lrs)):
        assert lrs == pytest.approx([0.1 * size / 2, 0.05 * size / 2], rel=REL), f"step {t}"
    assert callback.effective_batch_size == found
