"""Checkpoints written by the release before the component redesign, and how that release continued from them.

``PYTHONPATH=src python tests/release_checkpoints.py``, run from the root of a checkout of the release, fits each
case of :data:`CASES` for three epochs, keeps the checkpoint written at the end of epoch 0 as
``tests/data/release_checkpoints/<case>.ckpt``, and records in ``expected.json`` what the uninterrupted run did
after it: the LR each optimizer step used (warmup, rule and gain applied), Adam's betas and eps where ``rule="sde"``
changes them, and the noise statistics at the end. ``tests/test_release_checkpoints.py`` resumes each checkpoint with
the code under test and compares. The files in ``tests/data/release_checkpoints`` were written by the commit named in
``expected.json`` (the last one before the redesign); they are never rewritten by the tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torch.utils.data import DataLoader

DATA = Path(__file__).resolve().parent / "data" / "release_checkpoints"
EPOCHS = 3


class Recorded(BoringModel):
    """A BoringModel (a 32 → 2 linear layer on random data) whose ``configure_optimizers`` is given, recording at
    every optimizer step the LR, betas and eps of each param group as the step uses them (``on_before_optimizer_step``
    runs inside ``optimizer.step``, after its pre-hooks)."""

    def __init__(self, make: Callable[[torch.nn.Module], Any]) -> None:
        super().__init__()
        self.make = make
        self.lrs: list[list[float]] = []
        self.betas: list[list[list[float]]] = []
        self.eps: list[list[float]] = []

    def configure_optimizers(self) -> Any:
        return self.make(self)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        groups = optimizer.param_groups
        self.lrs.append([float(g["lr"]) for g in groups])
        self.betas.append([[float(b) for b in g["betas"]] for g in groups if "betas" in g])
        self.eps.append([float(g["eps"]) for g in groups if "eps" in g])

    def train_dataloader(self) -> DataLoader[Any]:
        torch.manual_seed(1)  # the same data in every run; no shuffling, so a resumed epoch sees the same batches
        return DataLoader(RandomDataset(32, 64), batch_size=4)


class SaveFirstEpoch(pl.Callback):
    """Writes ``<dirpath>/epoch=0.ckpt`` at the end of epoch 0, as a ``ModelCheckpoint`` would (whose own state would
    put a temporary path into the file)."""

    def __init__(self, dirpath: Path) -> None:
        self.dirpath = dirpath

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.dirpath / "epoch=0.ckpt")


def _sgd_step(module: torch.nn.Module) -> Any:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _adamw_onecycle(module: torch.nn.Module) -> Any:
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=EPOCHS * 8)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _sgd_cosine(module: torch.nn.Module) -> Any:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * 8, eta_min=0.001)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _sgd_two_schedulers(module: torch.nn.Module) -> Any:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    per_step = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    per_epoch = torch.optim.lr_scheduler.MultiplicativeLR(optimizer, lambda epoch: 0.5)
    return [optimizer], [{"scheduler": per_step, "interval": "step"}, {"scheduler": per_epoch, "interval": "epoch"}]


#: name -> (configure_optimizers, BatchScalingCallback kwargs, Trainer kwargs). 16 batches of 4 an epoch.
CASES: dict[str, tuple[Callable[[torch.nn.Module], Any], dict[str, Any], dict[str, Any]]] = {
    # linear ×4 with a warmup that is still running when the checkpoint is written (8 steps an epoch, 12 to warm)
    "linear_warmup": (
        _sgd_step,
        {"base_batch_size": 4, "rule": "linear", "warmup_steps": 12},
        {"accumulate_grad_batches": 2},
    ),
    # rule="sde": AdamW's betas, eps and weight decay from their originals, OneCycleLR's beta1 range, sqrt LR
    "sde_adamw": (_adamw_onecycle, {"base_batch_size": 2, "rule": "sde"}, {"accumulate_grad_batches": 2}),
    # the noise scale's moving averages continue
    "noise_scale": (
        _sgd_cosine,
        {"base_batch_size": 4, "noise_scale": True, "noise_every_n_steps": 1},
        {"accumulate_grad_batches": 2},
    ),
    # AdaScale's gain and scale-invariant progress, with a per-step and a per-epoch scheduler
    "adascale_invariant": (
        _sgd_two_schedulers,
        {"base_batch_size": 4, "rule": "adascale", "scale_invariant": True, "warmup_steps": 2},
        {"accumulate_grad_batches": 4},
    ),
}


def fit(name: str, root: Path, ckpt_path: str | None = None) -> tuple[Recorded, pl.Trainer, Any]:
    """Fit case ``name`` for :data:`EPOCHS` epochs (from ``ckpt_path`` if given), writing ``root/epoch=0.ckpt``;
    returns the model, the Trainer and the callback."""
    from lightning_lrbs import BatchScalingCallback

    make, callback_kwargs, trainer_kwargs = CASES[name]
    torch.manual_seed(0)
    model = Recorded(make)
    callback = BatchScalingCallback(**callback_kwargs)
    checkpoints = SaveFirstEpoch(root)
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        limit_val_batches=0,
        callbacks=[callback, checkpoints],
        enable_model_summary=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        logger=False,
        **trainer_kwargs,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return model, trainer, callback


def record(model: Recorded, callback: Any) -> dict[str, Any]:
    noise = callback.noise
    return {
        "lrs": model.lrs,
        "betas": model.betas,
        "eps": model.eps,
        "noise": None if noise is None else [noise.grad_sq_norm, noise.grad_var, noise.measurements],
    }


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    expected: dict[str, Any] = {"commit": commit, "lightning": pl.__version__, "torch": torch.__version__, "cases": {}}
    for name in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            model, trainer, callback = fit(name, Path(tmp))
            steps_per_epoch = trainer.global_step // EPOCHS if name != "adascale_invariant" else None
            first = Path(tmp) / "epoch=0.ckpt"
            checkpoint = torch.load(first, weights_only=False)
            (DATA / f"{name}.ckpt").write_bytes(first.read_bytes())
        expected["cases"][name] = {
            "global_step_at_checkpoint": int(checkpoint["global_step"]),
            "steps_per_epoch": steps_per_epoch,
            "callback_state": checkpoint["callbacks"]["BatchScalingCallback"],
            **record(model, callback),
        }
    (DATA / "expected.json").write_text(json.dumps(expected, indent=1, default=float) + "\n")


if __name__ == "__main__":
    sys.exit(main())
