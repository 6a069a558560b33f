"""MNIST with ``BatchScalingCallback``: a small CNN whose learning rate follows the batch size.

Run it::

    python examples/mnist.py --data-dir data                      # downloads MNIST into ./data on first use
    python examples/mnist.py --data-dir ../shared/data            # a read-only folder with the four .gz files
    python examples/mnist.py --batch-size 256 --rule sqrt --warmup-epochs 0.2

The learning rate given with ``--lr`` is the one tuned for ``--base-batch-size``; the callback rescales it to the
effective batch size (per-device batch x devices x nodes x gradient accumulation) with ``--rule`` when training starts.

Data: ``--data-dir`` may hold the four official MNIST files (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``) either directly or in
torchvision's layout ``<data-dir>/MNIST/raw/``. They are parsed in memory (IDX format) and never extracted, so the
folder may be read-only. When they are absent, torchvision downloads them into ``<data-dir>/MNIST/raw/``.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_lrbs import BatchScalingCallback

#: The four official MNIST files, in the order (train images, train labels, test images, test labels).
MNIST_FILES: tuple[str, str, str, str] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


class MNISTNotFoundError(FileNotFoundError):
    """MNIST is neither in the data folder nor downloadable there (offline, or the folder is not writable)."""

    def __init__(self, data_dir: str | Path, reason: str = "", option: str = "--data-dir") -> None:
        files = ", ".join(MNIST_FILES)
        because = f" ({reason})" if reason else ""
        super().__init__(
            f"MNIST was not found in '{data_dir}' and could not be downloaded there{because}. "
            f"Put the four official files {files} in '{Path(data_dir) / 'MNIST' / 'raw'}' (or directly in the folder "
            f"given as {option}), or run once with internet access and a writable {option} to download them."
        )


def read_idx(path: str | Path, expected_magic: int) -> torch.Tensor:
    """Read one IDX file (gzipped or not) into a ``uint8`` tensor.

    IDX: a big-endian ``uint32`` magic number (``0x0800 + number of dimensions`` for unsigned bytes), one big-endian
    ``uint32`` per dimension, then the data.

    Args:
        path: The file; ``.gz`` files are decompressed in memory.
        expected_magic: ``2051`` for an image file, ``2049`` for a label file.

    Returns:
        A tensor shaped ``(n, 28, 28)`` for images or ``(n,)`` for labels.

    Raises:
        ValueError: The file is not the expected IDX kind, or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise ValueError(f"'{path}' is not an IDX file with magic {expected_magic}: magic is {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    numel = 1
    for dim in shape:
        numel *= dim
    if len(data) - header != numel:
        raise ValueError(f"'{path}' holds {len(data) - header} bytes of data, its header {shape} says {numel}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def find_mnist_files(data_dir: str | Path) -> tuple[Path, Path, Path, Path] | None:
    """Locate the four MNIST files in ``data_dir/MNIST/raw`` (torchvision's layout) or in ``data_dir`` itself.

    A gzipped file is preferred; an extracted one (the same name without ``.gz``) is accepted too.

    Args:
        data_dir: The folder given as ``--data-dir``.

    Returns:
        The paths in the order of :data:`MNIST_FILES`, or ``None`` when a folder holding all four is not found.
    """
    root = Path(data_dir)
    for folder in (root / "MNIST" / "raw", root):
        found = []
        for name in MNIST_FILES:
            candidates = [folder / name, folder / name.removesuffix(".gz")]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                break
            found.append(path)
        else:
            return found[0], found[1], found[2], found[3]
    return None


def download_mnist(data_dir: str | Path, option: str = "--data-dir") -> None:
    """Download MNIST with torchvision into ``data_dir/MNIST/raw`` (checked against torchvision's MD5 sums).

    Args:
        data_dir: A writable folder; created when missing.
        option: The command-line option that sets ``data_dir``, named in the error.

    Raises:
        MNISTNotFoundError: The download failed (no network, mirror unreachable, folder not writable).
    """
    from torchvision.datasets import MNIST  # type: ignore[import-untyped]

    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        MNIST(str(data_dir), train=True, download=True)
    except (OSError, RuntimeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        # torchvision: "Error downloading <file>:" then, per mirror, "Tried <url>, got:" and the error; keep the ends
        reason = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"
        raise MNISTNotFoundError(data_dir, reason, option) from None


@functools.lru_cache(maxsize=2)
def _load_normalized(
    paths: tuple[Path, Path, Path, Path],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train_x, train_y, test_x, test_y = (
        read_idx(path, _IDX_IMAGES_MAGIC if i % 2 == 0 else _IDX_LABELS_MAGIC) for i, path in enumerate(paths)
    )

    def normalize(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)

    return normalize(train_x), train_y.long(), normalize(test_x), test_y.long()


def load_mnist(
    data_dir: str | Path, option: str = "--data-dir"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read MNIST from ``data_dir`` into memory, normalized with mean 0.1307 and std 0.3081; writes nothing.

    Args:
        data_dir: A folder holding the four files (see :func:`find_mnist_files`).
        option: The command-line option that sets ``data_dir``, named in the error.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``; images are ``float32`` shaped ``(n, 1, 28, 28)``,
        labels ``int64``. Loaded once per process and shared (treat them as read-only).

    Raises:
        MNISTNotFoundError: The four files are not there.
    """
    paths = find_mnist_files(data_dir)
    if paths is None:
        raise MNISTNotFoundError(data_dir, "the files are not there", option)
    return _load_normalized(tuple(p.resolve() for p in paths))


class EpochShuffleSampler(Sampler[int]):
    """A random order of ``range(size)`` that depends only on ``seed`` and the epoch, never on the batch size.

    ``RandomSampler`` with a seeded generator is not enough for that: it draws one more permutation whenever its
    iterator runs to the end, and Lightning stops reading a loader as soon as it has the known number of batches, so the
    iterator runs to the end only when the last batch is partial. Measured on 600 samples: batch 8 and batch 56 saw the
    same first epoch and different second ones. Here epoch ``e`` is ``randperm(size)`` from a generator seeded with
    ``(seed, e)``. Lightning calls :meth:`set_epoch` before each epoch (and forwards it through its DDP sampler
    wrapper); without it, each new iteration takes the next epoch.

    Args:
        size: Number of samples.
        seed: Seed of every epoch's permutation.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` for the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        self.epoch += 1
        return iter(order)


class MNISTConvNet(pl.LightningModule):
    """The small MNIST CNN: 3x3 conv (32 channels) -> ReLU -> 2x2 max-pool -> dropout -> linear to 10 classes.

    Trained with cross-entropy and plain SGD. ``lr`` is the learning rate before any batch-size scaling:
    :class:`~lightning_lrbs.BatchScalingCallback` rescales the optimizer when training starts.

    Args:
        lr: SGD learning rate (for the base batch size when the callback is used).
        momentum: SGD momentum; ``0`` is plain SGD.
        channels: Number of convolution filters.
        dropout: Dropout probability after the pooling.
    """

    def __init__(self, lr: float = 0.001, momentum: float = 0.0, channels: int = 32, dropout: float = 0.25) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.momentum = momentum
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(channels * 13 * 13, 10),
        )
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of ``(n, 1, 28, 28)`` normalized images."""
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy on one batch, logged as ``train_loss``."""
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Log ``val_loss`` and ``val_acc``, averaged over the epoch."""
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Log ``test_loss`` and ``test_acc``, averaged over the test set."""
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Plain SGD (with optional momentum) at the unscaled ``lr``."""
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class MNISTDataModule(pl.LightningDataModule):
    """MNIST as in-memory tensors, from a (possibly read-only) folder or downloaded by torchvision.

    The training loader shuffles with :class:`EpochShuffleSampler`, so every run with the same seed sees the training
    images in the same order, epoch after epoch, whatever its batch size: only the grouping into batches differs.

    Args:
        data_dir: Folder with the four MNIST files (directly or in ``MNIST/raw/``); downloaded there when absent.
        batch_size: Training batch size per device.
        eval_batch_size: Batch size for validation and test.
        train_subset: Train on this many images (a fixed random subset drawn with ``seed``); ``None`` for all.
        val_size: Hold out this many training images for validation; ``0`` for no validation set.
        test_subset: Test on the first this many test images; ``None`` for all 10,000.
        num_workers: DataLoader workers; ``0`` is fastest for in-memory tensors.
        seed: Seed of the subset draw and of the shuffling order.
        download: Download when the files are absent; ``False`` raises :class:`MNISTNotFoundError` instead.
    """

    #: The command-line option that sets ``data_dir``, named in the error when MNIST is missing.
    data_dir_option = "--data-dir"

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        train_subset: int | None = None,
        val_size: int = 0,
        test_subset: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.train_subset = train_subset
        self.val_size = val_size
        self.test_subset = test_subset
        self.num_workers = num_workers
        self.seed = seed
        self.download = download
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def prepare_data(self) -> None:
        """Download MNIST when the four files are not in ``data_dir`` (rank zero only, as Lightning calls it)."""
        if find_mnist_files(self.data_dir) is not None:
            return
        if not self.download:
            raise MNISTNotFoundError(self.data_dir, "the files are not there and download=False", self.data_dir_option)
        download_mnist(self.data_dir, self.data_dir_option)

    def setup(self, stage: str | None = None) -> None:
        """Load the tensors and split off the subsets."""
        train_x, train_y, test_x, test_y = load_mnist(self.data_dir, self.data_dir_option)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(train_y), generator=generator)
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        self.train_set = TensorDataset(train_x[train_idx], train_y[train_idx])
        self.val_set = TensorDataset(train_x[val_idx], train_y[val_idx]) if self.val_size > 0 else None
        n_test = len(test_y) if self.test_subset is None else self.test_subset
        self.test_set = TensorDataset(test_x[:n_test], test_y[:n_test])

    def _loader(self, dataset: TensorDataset | None, batch_size: int, shuffle: bool = False) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError("MNISTDataModule.setup() must run before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds, without touching the global RNG
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled training batches of ``batch_size``, in an order fixed by ``seed``."""
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any] | list[Any]:
        """The held-out validation images; an empty list (no validation) when ``val_size`` is 0."""
        return [] if self.val_set is None else self._loader(self.val_set, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader[Any]:
        """The 10,000 MNIST test images (or the first ``test_subset``)."""
        return self._loader(self.test_set, self.eval_batch_size)


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def build_parser() -> argparse.ArgumentParser:
    """The command line of this example."""
    p = argparse.ArgumentParser(
        description="Train the small MNIST CNN with BatchScalingCallback.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", default="data", help="folder with the four MNIST .gz files (or MNIST/raw/ in it)")
    data.add_argument("--train-subset", type=int, default=None, help="train on this many images (default: all)")
    data.add_argument("--val-size", type=int, default=0, help="hold out this many training images for validation")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    scaling = p.add_argument_group("batch-size scaling")
    scaling.add_argument("--batch-size", type=int, default=64, help="per-device training batch size")
    scaling.add_argument("--base-batch-size", type=int, default=8, help="batch size that --lr was tuned for")
    scaling.add_argument("--lr", type=float, default=0.01, help="SGD learning rate at the base batch size")
    scaling.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    scaling.add_argument("--rule", choices=["linear", "sqrt", "auto", "none"], default="linear", help="scaling rule")
    warmup = scaling.add_mutually_exclusive_group()
    warmup.add_argument("--warmup-steps", type=int, default=0, help="LR warmup length in optimizer steps")
    warmup.add_argument("--warmup-epochs", type=float, default=0.0, help="LR warmup length in epochs")
    scaling.add_argument("--warmup-start-factor", type=float, default=None, help="warmup starts at this LR fraction")
    scaling.add_argument(
        "--noise-scale",
        action="store_true",
        help="measure the gradient noise scale (needs --accumulate-grad-batches >= 2 or >= 2 devices)",
    )
    trainer = p.add_argument_group("trainer")
    trainer.add_argument("--epochs", type=int, default=1, help="training epochs")
    trainer.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto ...")
    trainer.add_argument("--devices", type=_devices, default="auto", help="number of devices, a list, or auto")
    trainer.add_argument("--num-nodes", type=int, default=1, help="number of nodes")
    trainer.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp ...")
    trainer.add_argument("--accumulate-grad-batches", type=int, default=1, help="gradient accumulation")
    trainer.add_argument("--seed", type=int, default=42, help="seed of weights, data order and dropout")
    trainer.add_argument("--log-dir", default="lightning_logs", help="CSVLogger output folder")
    trainer.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 0 for torch's choice. 1 was fastest for this small CNN on 2 cores (and far faster "
        "when other work shares the cores)",
    )
    trainer.add_argument("--no-progress-bar", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train, test, print the callback's summary and the test accuracy.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when MNIST is missing and cannot be downloaded.
    """
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _train_and_test(args)
    finally:
        torch.set_num_threads(threads)


def _train_and_test(args: argparse.Namespace) -> int:
    pl.seed_everything(args.seed, workers=True)
    datamodule = MNISTDataModule(
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        train_subset=args.train_subset,
        val_size=args.val_size,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    model = MNISTConvNet(lr=args.lr, momentum=args.momentum)
    scaling = BatchScalingCallback(
        base_batch_size=args.base_batch_size,
        rule=args.rule,
        warmup_steps=args.warmup_steps,
        warmup_epochs=args.warmup_epochs,
        warmup_start_factor=args.warmup_start_factor,
        noise_scale=args.noise_scale,
    )
    logger = CSVLogger(args.log_dir, name="mnist")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        accumulate_grad_batches=args.accumulate_grad_batches,
        callbacks=[scaling],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=not args.no_progress_bar,
        limit_val_batches=1.0 if args.val_size > 0 else 0,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule)
        results = trainer.test(model, datamodule=datamodule, verbose=False)
    except MNISTNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if trainer.is_global_zero:
        print(scaling.summary)
        print(
            f"test accuracy: {results[0]['test_acc']:.4f} (test loss {results[0]['test_loss']:.4f}, "
            f"{args.epochs} epoch(s), {time.perf_counter() - start:.0f} s, logs in {logger.log_dir})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
