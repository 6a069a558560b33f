"""Small real models and trainers shared by the tests (no mocks: real Trainer, real optimizers and schedulers)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torch.utils.data import DataLoader

LR = 0.1

#: The scripts that tests run as their own processes (Lightning's ``ddp`` would re-launch pytest itself).
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def script_env(**extra: str) -> dict[str, str]:
    """The environment to launch a ``tests/scripts`` DDP fit in, as from a shell: a free ``MASTER_PORT`` on
    localhost and no rank variables inherited, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONWARNINGS="ignore", **extra)
    return env


def run_script(name: str, out: Path, *args: object, timeout: int = 300) -> list[dict[str, Any]]:
    """Run ``tests/scripts/<name> OUT ARGS...`` (2 ranks) and return what each rank wrote to ``OUT/rank<k>.json``."""
    command = [sys.executable, str(SCRIPTS / name), str(out), *map(str, args)]
    subprocess.run(command, env=script_env(), check=True, timeout=timeout)
    return rank_results(out)


def rank_results(out: Path, ranks: int = 2) -> list[dict[str, Any]]:
    """What each rank of a script wrote to ``out/rank<k>.json``."""
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def finish_distributed() -> None:
    """End a script's process group, if any: one still alive at interpreter exit sometimes aborts the process under
    gloo ("terminate called without an active exception") once its peer has gone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def quiet_trainer(tmp_path: Path, namespace: ModuleType = pl, **kwargs: Any) -> pl.Trainer:
    """A CPU Trainer with no logger, progress bar, checkpointing or validation unless asked for; ``namespace``:
    ``lightning.pytorch`` or ``pytorch_lightning``, whose ``Trainer`` it is."""
    defaults: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "limit_train_batches": 4,
        "limit_val_batches": 0,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "logger": False,
    }
    defaults.update(kwargs)
    trainer: pl.Trainer = namespace.Trainer(**defaults)
    return trainer


class LRModel(BoringModel):
    """BoringModel with SGD over two param groups (LRs ``lr`` and ``lr / 2``) and an optional scheduler.

    Records the LR of every group at each optimizer step in ``self.lrs`` (a list of lists).

    Args:
        lr: LR of the first group; the second gets half.
        scheduler: ``(optimizer) -> scheduler`` or ``None``.
        interval: Lightning scheduler interval, ``"step"`` or ``"epoch"``.
        batch_size: Train loader batch size.
        optimizer: ``(param_groups) -> optimizer``; default SGD with momentum 0.9.
        extra: Extra scheduler-config keys (e.g. ``{"monitor": "plateau"}``).
    """

    def __init__(
        self,
        lr: float | torch.Tensor = LR,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        interval: str = "step",
        batch_size: int = 8,
        optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
        extra: dict[str, Any] | None = None,
        group_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.lr, self.scheduler, self.interval, self.batch_size = lr, scheduler, interval, batch_size
        self.make_optimizer = optimizer or (lambda groups: torch.optim.SGD(groups, lr=0.0, momentum=0.9))
        self.extra = extra or {}
        self.group_options = group_options or {}
        self.lrs: list[list[float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        self.log("plateau", 1.0, on_step=True, on_epoch=True)
        return out

    def configure_optimizers(self) -> Any:
        second = self.lr / 2 if not isinstance(self.lr, torch.Tensor) else (self.lr / 2).clone()
        groups = [
            {"params": [self.layer.weight], "lr": self.lr},
            {"params": [self.layer.bias], "lr": second, **self.group_options},
        ]
        optimizer = self.make_optimizer(groups)
        if self.scheduler is None:
            return optimizer
        config = {"scheduler": self.scheduler(optimizer), "interval": self.interval, **self.extra}
        return {"optimizer": optimizer, "lr_scheduler": config}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lrs.append([float(group["lr"]) for group in optimizer.param_groups])

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 64), batch_size=self.batch_size)


def flat(lrs: list[list[float]]) -> list[float]:
    """Step-major, group-minor flattening of recorded LRs, for ``pytest.approx``."""
    return [lr for step in lrs for lr in step]
