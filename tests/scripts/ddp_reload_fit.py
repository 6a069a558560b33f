"""A real 2-process DDP fit (gloo) whose reloaded loaders change the batch size, for tests/test_reload_batch.py.

Epoch 0: both ranks feed 8; epoch 1: rank 0 feeds 8, rank 1 feeds 4 (``reload_dataloaders_every_n_epochs=1``). Each
rank writes the LR of every optimizer step and what its callback says to ``<out>/rank<k>.json``.

Usage: ``python ddp_reload_fit.py OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning.pytorch.demos.boring_classes import RandomDataset  # noqa: E402
from lrbs_testing import LRModel, finish_distributed, quiet_trainer  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_lrbs import BatchScalingCallback  # noqa: E402


class ReloadModel(LRModel):
    def train_dataloader(self) -> DataLoader[Any]:
        uneven = self.trainer.current_epoch >= 1 and self.trainer.global_rank == 1
        return DataLoader(RandomDataset(32, 64), batch_size=4 if uneven else 8)


def main() -> None:
    out = Path(sys.argv[1])
    model = ReloadModel()
    callback = BatchScalingCallback(base_batch_size=8)
    trainer = quiet_trainer(
        out,
        devices=2,
        strategy="ddp",
        max_epochs=2,
        limit_train_batches=2,
        reload_dataloaders_every_n_epochs=1,
        callbacks=[callback],
    )
    trainer.fit(model)
    result = {"effective": callback.effective_batch_size, "summary": callback.summary, "lrs": model.lrs}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    finish_distributed()
