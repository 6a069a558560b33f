"""A real multi-process fit for tests/test_ddp.py: each rank writes what the callback did to ``<out>/rank<k>.json``.

Usage: ``python ddp_fit.py OUT_DIR NUM_NODES DEVICES [uneven]``. Lightning's ``ddp`` strategy re-launches this script
for the other local ranks; for several "nodes" on one machine the test starts it once per node with ``NODE_RANK``.
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


class UnevenModel(LRModel):
    """Rank 0 feeds batches of 8, rank 1 batches of 4."""

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 64), batch_size=8 if self.trainer.global_rank == 0 else 4)


def main() -> None:
    out, num_nodes, devices = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    uneven = len(sys.argv) > 4 and sys.argv[4] == "uneven"
    model = UnevenModel() if uneven else LRModel()
    callback = BatchScalingCallback(base_batch_size=8 if not uneven else 6)
    trainer = quiet_trainer(
        out,
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=3,
        callbacks=[callback],
    )
    trainer.fit(model)
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "per_device": callback.per_device_batch_size,
        "effective": callback.effective_batch_size,
        "factor": callback.scale_factor,
        "summary": callback.summary,
        "lrs": model.lrs,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    finish_distributed()
