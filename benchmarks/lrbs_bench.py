"""Shared pieces of the benchmarks: the machine, MNIST, quiet trainers, a test-accuracy tracker, tables.

The MNIST CNN and data module come from ``examples/mnist.py`` (imported, not copied), so the benchmarks measure the
model users run with ``make demo``.
"""

from __future__ import annotations

import csv
import ctypes
import logging
import os
import re
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from mnist import MNISTConvNet, MNISTDataModule, load_mnist  # noqa: E402

__all__ = [
    "OUT_DIR",
    "ROOT",
    "MNISTConvNet",
    "MNISTDataModule",
    "TestAccuracyTracker",
    "command_line",
    "default_data_dir",
    "load_mnist",
    "machine_lines",
    "markdown_table",
    "other_processes",
    "quartiles",
    "quiet",
    "write_csv",
]

#: Where the benchmarks write their CSVs, markdown fragments and figures.
OUT_DIR = ROOT / "docs" / "benchmarks"


def default_data_dir() -> Path:
    """The read-only MNIST copy beside the checkout (``../shared/data``) when it exists, else ``./data``."""
    shared = ROOT.parent / "shared" / "data"
    return shared if (shared / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file() else ROOT / "data"


def repo_path(arg: str) -> str:
    """``arg`` with an absolute path inside the checkout's parent folder made relative to the checkout (``ROOT``), as
    commands in the docs must be: ``/…/lightning-lrbs/docs/benchmarks`` → ``docs/benchmarks``,
    ``/…/shared/data`` → ``../shared/data``. Anything else is returned unchanged."""
    if not os.path.isabs(arg):
        return arg
    # As written first (a folder beside the checkout may be a symbolic link, e.g. ../shared), then resolved.
    for path in (Path(os.path.normpath(arg)), Path(arg).resolve()):
        if ROOT.parent in path.parents or path == ROOT.parent:
            return Path(os.path.relpath(path, ROOT)).as_posix()
    return arg


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that ran ``script`` (repository-relative) with ``argv`` (default ``sys.argv[1:]``), with paths
    made repository-relative (:func:`repo_path`), for the docs."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(["python", script, *(shlex.quote(repo_path(a)) for a in args)]).strip()


def quiet() -> None:
    """Silence Lightning's per-fit banners and the warnings that do not concern the measurement."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_lrbs"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`num_workers`.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*nothing to scale.*")  # rule "none": factor 1, as intended
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version() -> str:
    """The commit the benchmarked code comes from: ``LRBS_BENCH_CODE`` when set (a snapshot), else ``git`` in
    :data:`ROOT`, marked ``+ uncommitted changes`` when the working tree differs from it."""
    if os.environ.get("LRBS_BENCH_CODE"):
        return os.environ["LRBS_BENCH_CODE"]
    git = shutil.which("git")
    if git is None:
        return "unknown (no git)"
    try:
        head = subprocess.run(  # noqa: S603 - fixed arguments
            [git, "-C", str(ROOT), "log", "-1", "--format=%h %cI"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603 - fixed arguments
            [git, "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "src", "examples", "benchmarks"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"git {head}" + (" + uncommitted changes" if dirty else "")


def machine_lines(threads: int) -> list[str]:
    """One markdown bullet per fact about the machine and the code the numbers come from."""
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    return [
        f"CPU: {_cpu_model()}, {cores} logical cores ({usable} usable by this process); GPU: {gpu}",
        f"torch {torch.__version__} with `torch.set_num_threads({threads})`, lightning {lightning.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"Code: {code_version()}",
    ]


def keep_heap() -> str:
    """Stop glibc's ``malloc`` from giving freed memory back to the system (``mallopt``: trim threshold 1 GiB, a fixed
    32 MiB ``mmap`` threshold), and say what was done.

    By default glibc trims the top of its heap when more than a threshold is free and serves large blocks by ``mmap``
    with a threshold it moves: whether a training step's large buffers (activations, gradients) come back as the same
    pages or as fresh ones that fault in depends on the order of every allocation before them. In exploratory probes
    (not kept as a script) the same MNIST CNN step ran with a few hundred or with thousands of page faults per step,
    15 ms against 22-28 ms. A variant that allocates a few small tensors more (the noise estimator's norms) can move
    the heap into another such state, and that, not its own work, then dominates the difference. Call this first,
    before the timed work.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(-1, 1 << 30) == 1 and libc.mallopt(-3, 32 << 20) == 1  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        done = False
    if not done:
        return "heap: the system's allocator as it is (not glibc, or mallopt refused)"
    return "heap: glibc's malloc kept from returning memory to the system (mallopt: trim threshold 1 GiB, mmap 32 MiB)"


def other_processes() -> str:
    """The 1-minute load average and the other Python processes running now (read from ``/proc``)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    mine = {os.getpid(), os.getppid()}
    found: list[str] = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(entry.name)
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        # absolute paths shortened to their last part: the docs never show this machine's folders
        words = [" ".join(a.decode(errors="replace").split()) for a in argv if a]
        cmd = " ".join(re.sub(r"(?<![\w.])/(?:[^/\s]+/)+", "", w) for w in words)  # /a/b/c -> c, also in --x=/a/b
        if pid in mine or "python" not in cmd or "benchmarks/" in cmd:
            continue
        found.append(cmd if len(cmd) <= 100 else cmd[:97] + "...")
    others = "; ".join(sorted(set(found))) or "no other Python process"
    return f"load average {load:.2f}; {others}"


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), inclusive method; a single value gives it three times."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write dict rows (the first row's keys as the header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 100) -> float:
    """Accuracy of ``model`` on ``(images, labels)`` in eval mode (dropout off), without gradients."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in zip(images.split(chunk), labels.split(chunk)):
            correct += int((model(x).argmax(dim=1) == y).sum())
    model.train(was_training)
    return correct / len(labels)


class TestAccuracyTracker(Callback):
    """Test accuracy every ``eval_every`` training samples, and the training wall time with evaluation excluded.

    The clock starts at ``on_train_start`` (after data and model setup) and pauses while evaluating. After each
    training batch, once the samples seen reach the next multiple of ``eval_every``, the model is evaluated on the
    whole test set; the point records the samples actually seen (a batch is never split). With ``target``, training
    stops at the first point whose accuracy reaches it.

    Args:
        images: Test images.
        labels: Test labels.
        n_train: Training samples per epoch (turns samples into epochs).
        eval_every: Evaluate every this many training samples.
        target: Stop when the test accuracy reaches this (``None``: never stop early).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, n_train: int, eval_every: int, target: float | None = None
    ) -> None:
        self.images, self.labels = images, labels
        self.n_train = n_train
        self.eval_every = eval_every
        self.target = target
        self.samples = 0
        self.points: list[dict[str, float]] = []
        self.reached: dict[str, float] | None = None
        self._next = eval_every
        self._start = 0.0
        self._paused = 0.0
        self._loss_sum = 0.0
        self._loss_count = 0
        self.train_seconds = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count samples and the training loss; evaluate at each ``eval_every`` boundary."""
        n = len(batch[1])
        self.samples += n
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss) * n
            self._loss_count += n
        if self.samples < self._next:
            return
        while self._next <= self.samples:
            self._next += self.eval_every
        pause = time.perf_counter()
        accuracy = evaluate(pl_module, self.images, self.labels)
        point = {
            "samples": self.samples,
            "epochs": self.samples / self.n_train,
            "steps": trainer.global_step,
            "train_seconds": pause - self._start - self._paused,
            "test_accuracy": accuracy,
            "train_loss": self._loss_sum / max(self._loss_count, 1),
        }
        self._loss_sum, self._loss_count = 0.0, 0
        self.points.append(point)
        if self.target is not None and self.reached is None and accuracy >= self.target:
            self.reached = point
            trainer.should_stop = True
        self._paused += time.perf_counter() - pause

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop the clock."""
        self.train_seconds = time.perf_counter() - self._start - self._paused


def fit_tracked(
    *,
    batch_size: int,
    lr: float,
    seed: int,
    max_epochs: int,
    callbacks: Sequence[Callback],
    tracker: TestAccuracyTracker,
    data_dir: Path,
    train_subset: int | None = None,
) -> pl.Trainer:
    """Train ``MNISTConvNet(lr=lr)`` (plain SGD) at ``batch_size`` with ``tracker`` attached.

    All 60,000 training images unless ``train_subset`` (a quick check of a script).

    Same seed, same data order for every run: ``seed_everything(seed)`` gives the same initial weights and dropout
    stream, and the data module's loader shuffles with its own generator seeded with ``seed``.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = MNISTDataModule(data_dir, batch_size=batch_size, seed=seed, train_subset=train_subset, download=False)
    model = MNISTConvNet(lr=lr)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        callbacks=[tracker, *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer
