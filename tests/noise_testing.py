"""Shared by tests/test_noise_scale.py and tests/scripts/noise_ddp.py: a frozen MLP on real MNIST, the exact noise
scale from per-example gradients, and loaders that feed every rank a fixed list of micro-batches."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LRBS_DATA_DIR", REPO.parent / "shared" / "data"))
IMAGES = "train-images-idx3-ubyte.gz"
LABELS = "train-labels-idx1-ubyte.gz"


def find_mnist() -> Path | None:
    """The folder holding the two MNIST training files (``MNIST/raw`` or the data folder itself)."""
    for folder in (DATA_DIR / "MNIST" / "raw", DATA_DIR):
        if (folder / IMAGES).is_file() and (folder / LABELS).is_file():
            return folder
    return None


def _idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


def mnist_subset(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training images (flattened, normalized) and labels, a fixed random draw."""
    folder = find_mnist()
    if folder is None:
        raise FileNotFoundError(f"real MNIST not found in {DATA_DIR}: set LRBS_DATA_DIR")
    images, labels = _idx(folder / IMAGES), _idx(folder / LABELS)
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    x = (images[pick].float().reshape(n, -1) / 255.0 - 0.1307) / 0.3081
    return x, labels[pick].long()


def mlp(seed: int = 0) -> nn.Sequential:
    """784-32-10 MLP, no dropout."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def exact_noise_scale(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """``(B_noise, |G|^2, tr Sigma)`` over the whole set from per-example gradients (``torch.func``), with ``Sigma``
    the covariance of one example drawn uniformly (what sampling with replacement gives)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g.reshape(len(y), -1) for g in per_example.values()], dim=1).double()
    mean = flat.mean(0)
    sq = float(mean @ mean)
    var = float(((flat - mean) ** 2).sum(1).mean())
    return var / sq, sq, var


def draw_micro_batches(n: int, steps: int, sizes: list[int], seed: int = 1) -> list[list[torch.Tensor]]:
    """``steps`` lists of micro-batch index tensors (``len(sizes)`` per step, of those sizes), drawn with
    replacement from ``range(n)``."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randint(0, n, (b,), generator=g) for b in sizes] for _ in range(steps)]


class MicroBatches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item ``t`` is micro-batch ``offset + t % per_step`` of step ``t // per_step`` (a whole batch: use
    ``DataLoader(batch_size=None)``). With ``offset = rank * A`` and ``per_step = A``, ranks share out each step's
    micro-batches in order."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, plan: list[list[torch.Tensor]], offset: int, per_step: int
    ) -> None:
        self.x, self.y, self.plan, self.offset, self.per_step = x, y, plan, offset, per_step

    def __len__(self) -> int:
        return len(self.plan) * self.per_step

    def __getitem__(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.plan[t // self.per_step][self.offset + t % self.per_step]
        return self.x[index], self.y[index]


class FrozenMLP(pl.LightningModule):
    """The MLP trained with SGD at LR 0 (weights frozen) on a fixed plan of micro-batches."""

    def __init__(self, data: Dataset[Any], seed: int = 0) -> None:
        super().__init__()
        self.net = mlp(seed)
        self.data = data

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.data, batch_size=None, shuffle=False)


class NoiseRecorder(pl.Callback):
    """Put after the BatchScalingCallback: records each measured step's unsmoothed estimate."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, float, int]] = []  # (global_step, |G|^2, tr Sigma, k)
        self._last: object = None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        callback = next(c for c in trainer.callbacks if hasattr(c, "noise"))  # type: ignore[attr-defined]
        last = None if callback.noise is None else callback.noise.last
        if last is not None and last is not self._last:
            self._last = last
            self.steps.append((trainer.global_step, last.grad_sq_norm, last.grad_var, last.micro_batches))
