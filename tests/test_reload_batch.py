"""The batch size changes after training started (issue 9, point 4): with ``reload_dataloaders_every_n_epochs`` a
new loader may feed another batch size. The callback follows it like a change of accumulation: from that epoch the
LRs are rescaled by the ratio, a new summary line says so, ``effective_batch_size`` is the current one.

LRs are recorded by the module's ``on_before_optimizer_step`` (inside ``optimizer.step``, after the step pre-hooks).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.demos.boring_classes import RandomDataset
from lrbs_testing import LRModel, quiet_trainer
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
    assert "LR ×4.00: SGD 0.1, 0.05 → 0.4, 0.2" in summaries[1]


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
    script = Path(__file__).resolve().parent / "scripts" / "ddp_reload_fit.py"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, check=True, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank["effective"] == 12
        assert rank["lrs"] == [pytest.approx([0.1 * f, 0.05 * f], rel=REL) for f in (2.0, 2.0, 1.5, 1.5)]
    assert ranks[0]["summary"].startswith("effective batch 12 = (8 + 4) over ranks; base 8; rule linear → LR ×1.50")
