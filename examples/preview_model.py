"""A LightningModule with a typical large-batch recipe, for ``python -m lightning_lrbs preview``.

SGD with momentum over two param groups (weights with weight decay, biases without, as in Goyal et al. 2017) and a
per-step cosine schedule over ``total_steps``. The LR is the one tuned for the base batch; ``BatchScalingCallback``
(or the preview) scales it to the effective batch and warms it up::

    python -m lightning_lrbs preview examples.preview_model.CosineSGD --init-args '{"total_steps": 1000}' \\
        --batches-per-epoch 100 --max-epochs 10 --batch-size 32 --devices 8 --base-batch-size 64 \\
        --warmup-epochs 2 --plot docs/preview.png
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule


class CosineSGD(LightningModule):
    """A linear classifier trained with SGD and a per-step cosine schedule.

    Args:
        lr: The LR at the base batch size (the biases get half of it).
        total_steps: Length of the cosine schedule in optimizer steps.
        features: Input features. classes: Output classes.
    """

    def __init__(self, lr: float = 0.1, total_steps: int = 1000, features: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(features, classes)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        lr = self.hparams["lr"]
        groups = [
            {"params": [self.layer.weight], "lr": lr, "weight_decay": 1e-4, "name": "weights"},
            {"params": [self.layer.bias], "lr": lr / 2, "weight_decay": 0.0, "name": "biases"},
        ]
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.hparams["total_steps"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
