"""A Lightning training script that knows nothing of lightning-lrbs, for tests/test_plugin.py: Lightning's own
``BoringModel`` (SGD at LR 0.1 with its ``StepLR``), batches of 8, 3 epochs of 4 batches. The tests launch it with and
without ``LRBS_*`` environment variables.

Usage: ``python plain_fit.py OUT_DIR DEVICES [STRATEGY [NUM_NODES]]``. Each process writes ``<OUT_DIR>/rank<k>.json``:
the LR of every param group at each optimizer step as the step uses it, the trained weights, and the Trainer's
callbacks. :func:`main` takes extra callbacks (tests/scripts/coded_fit.py adds one in code).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset  # noqa: E402
from lrbs_testing import finish_distributed  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402


class Record(pl.Callback):
    """The script's own instrumentation: the LRs each optimizer step uses (read in a step pre-hook registered at the
    first batch, after every callback's ``on_train_start``), and, when training ends, the weights."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lrs: list[list[float]] = []
        self.hooked = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self.hooked:
            self.hooked = True
            trainer.optimizers[0].register_step_pre_hook(
                lambda opt, args, kwargs: self.lrs.append([float(g["lr"]) for g in opt.param_groups])
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        result = {
            "world_size": trainer.world_size,
            "lrs": self.lrs,
            "weights": [p.detach().flatten().tolist() for p in pl_module.parameters()],
            "callbacks": [type(c).__name__ for c in trainer.callbacks],
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


def main(out: Path, devices: int, strategy: str, num_nodes: int, callbacks: Sequence[pl.Callback] = ()) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = BoringModel()
    trainer = pl.Trainer(
        default_root_dir=out,
        accelerator="cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, Record(out)],
    )
    trainer.fit(model, train_dataloaders=DataLoader(RandomDataset(32, 64), batch_size=8))


def arguments(argv: Sequence[str]) -> tuple[Path, int, str, int]:
    """``OUT_DIR DEVICES [STRATEGY [NUM_NODES]]``."""
    strategy = argv[3] if len(argv) > 3 else "auto"
    return Path(argv[1]), int(argv[2]), strategy, int(argv[4]) if len(argv) > 4 else 1


if __name__ == "__main__":
    main(*arguments(sys.argv))
    finish_distributed()
