"""A real 2-process DDP fit for tests/test_adascale.py: rule="adascale" on 2 devices without accumulation; each rank
writes the LR each optimizer step used and the smoothed noise statistics after it to ``<out>/rank<k>.json``.

Usage: ``python adascale_ddp.py OUT_DIR [si]``; ``si``: ``scale_invariant=True`` with a per-step ExponentialLR,
and the optimizer steps taken, the progress and the scheduler's step count written too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import torch
from lrbs_testing import finish_distributed, quiet_trainer  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset

from lightning_lrbs import BatchScalingCallback


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        x = torch.randn(256, 4)
        self.data = TensorDataset(x, x.sum(1, keepdim=True) + 0.5 * torch.randn(256, 1))
        self.used: list[float] = []
        self.stats: list[tuple[float | None, float | None]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def train_dataloader(self) -> Any:
        return DataLoader(self.data, batch_size=8)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        if len(sys.argv) < 3:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.used.append(float(optimizer.param_groups[0]["lr"]))
        noise = next(c for c in self.trainer.callbacks if isinstance(c, BatchScalingCallback)).noise
        assert noise is not None
        self.stats.append((noise.grad_sq_norm, noise.grad_var))


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    invariant = len(sys.argv) > 2 and sys.argv[2] == "si"
    callback = BatchScalingCallback(base_batch_size=8, rule="adascale", scale_invariant=invariant)
    trainer = quiet_trainer(
        out,
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=8,
        callbacks=[callback],
    )
    model = Regression()
    trainer.fit(model)
    result = {"used": model.used, "stats": model.stats, "effective": callback.effective_batch_size}
    if invariant:
        assert callback.adascale is not None
        result.update(
            steps=trainer.global_step,
            progress=callback.adascale.progress,
            scheduler_steps=trainer.lr_scheduler_configs[0].scheduler.last_epoch,
            max_epochs=trainer.max_epochs,
        )
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    finish_distributed()
