"""A real ``ddp_spawn`` fit (2 processes, gloo) for tests/test_ddp_spawn.py.

Each worker writes the LR of every optimizer step to ``<out>/rank<k>.json``; the launching process writes what the
callback instance it holds reports after ``trainer.fit`` to ``<out>/main.json``.

Usage: ``python ddp_spawn_fit.py OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lrbs_testing import LRModel, quiet_trainer  # noqa: E402

from lightning_lrbs import BatchScalingCallback  # noqa: E402


class SpawnModel(LRModel):
    """LRModel with a picklable optimizer factory (spawn pickles the module): SGD, momentum 0.9."""

    def __init__(self) -> None:
        super().__init__()
        del self.make_optimizer  # the lambda; the method below takes over

    def make_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:  # type: ignore[override]
        return torch.optim.SGD(groups, lr=0.0, momentum=0.9)


class WriteLRs(pl.Callback):
    """In each worker: the LRs the module recorded at every optimizer step, and what the worker's callback says."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        scaling = next(c for c in trainer.callbacks if isinstance(c, BatchScalingCallback))
        result = {"lrs": pl_module.lrs, "world_size": trainer.world_size, "summary": scaling.summary}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


def main() -> None:
    out = Path(sys.argv[1])
    callback = BatchScalingCallback(base_batch_size=8, warmup_steps=3)
    trainer = quiet_trainer(
        out,
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        limit_train_batches=4,
        accumulate_grad_batches=2,
        callbacks=[callback, WriteLRs(out)],
    )
    trainer.fit(SpawnModel())
    result = {
        "effective": callback.effective_batch_size,
        "per_device": callback.per_device_batch_size,
        "factor": callback.scale_factor,
        "factors": list(callback.scale_factors),
        "summary": callback.summary,
    }
    (out / "main.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
