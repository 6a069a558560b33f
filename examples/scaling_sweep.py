"""Scaling experiment: does a learning-rate rule keep SGD training curves together when the batch grows?

Trains the small MNIST CNN of ``mnist.py`` with plain SGD at a base batch size ``B`` and learning rate ``lr``
(default 8 and 0.001), then at batch ``B * k`` for each ``k`` (default 2 ... 7) under each scaling rule
(default ``none``, ``linear``, ``sqrt``) applied by :class:`lightning_lrbs.BatchScalingCallback`. The batch-``B`` run is
trained once: every rule gives it the factor 1, so it is the common reference.

Same seed and data order for every run: ``seed_everything(seed, workers=True)`` before each run gives identical initial
weights, and the training loader shuffles with ``mnist.EpochShuffleSampler`` (a permutation per epoch drawn from the
seed and the epoch number), so every run sees the training images in the same order, epoch after epoch; only the
grouping into batches differs.

Training loss is recorded against samples seen: the mean training loss (dropout on, as SGD saw it) over each window of
``--log-every-samples`` samples, so all runs log at the same points (exactly when the window is a multiple of every
batch size; the default 3360 is for batch sizes 8 ... 56). Test loss and accuracy on the 10,000 test images are measured
after every epoch (through Lightning's validation loop; nothing is selected with them).

Writes into ``--output-dir``:

- ``curves.csv``: every curve, one row per logged point (``curve`` is ``train`` or ``test``);
- ``scaling.png``: one panel per rule, one training-loss curve per ``k`` against epochs;
- ``table.md``: per rule and ``k``, the final test accuracy and the deviation of the training-loss curve from the
  base curve, ``mean_i |loss_k[i] - loss_base[i]| / loss_base[i]`` over the logged points ``i``.

Run (from the repository root)::

    python examples/scaling_sweep.py --data-dir ../shared/data --output-dir docs/scaling
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import logging
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist import MNISTConvNet, MNISTDataModule, MNISTNotFoundError  # noqa: E402

from lightning_lrbs import BatchScalingCallback  # noqa: E402

RULE_FORMULAS = {"none": "1", "linear": "k", "sqrt": "√k", "auto": "auto(k)"}
CSV_FIELDS = ("rule", "k", "batch_size", "lr", "curve", "samples", "epoch", "step", "loss", "accuracy")


@dataclass
class RunResult:
    """One training run of the sweep.

    Attributes:
        rule: Scaling rule (``"base"`` for the reference run at the base batch size).
        k: Batch multiple: batch size = base batch size x ``k``.
        batch_size: Training batch size.
        lr: Learning rate the optimizer trained with (after the callback's rescaling).
        scale_factor: The callback's factor.
        summary: The callback's one-line summary.
        train: ``(samples seen, optimizer step, mean training loss over the last window)`` per logged point.
        test: ``(epoch, samples seen, test loss, test accuracy)`` after each epoch.
        seconds: Wall time of the run.
        n_train: Number of training images (samples per epoch).
    """

    rule: str
    k: int
    batch_size: int
    lr: float
    scale_factor: float
    summary: str
    train: list[tuple[int, int, float]] = field(default_factory=list)
    test: list[tuple[int, int, float, float]] = field(default_factory=list)
    seconds: float = 0.0
    n_train: int = 0


class SampleLossRecorder(Callback):
    """Mean training loss per window of ``every_samples`` samples, and test metrics after each epoch.

    Args:
        every_samples: Window length in samples; a point is logged when the samples seen reach each multiple of it.
    """

    def __init__(self, every_samples: int) -> None:
        if every_samples < 1:
            raise ValueError(f"`every_samples` must be >= 1: {every_samples}")
        self.every_samples = every_samples
        self.samples = 0
        self.train: list[tuple[int, int, float]] = []
        self.test: list[tuple[int, int, float, float]] = []
        self._next = every_samples
        self._loss_sum = 0.0
        self._count = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Add the batch's loss to the current window; close the window at its boundary."""
        n = len(batch[1])
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._loss_sum += float(loss) * n
        self._count += n
        self.samples += n
        if self.samples >= self._next:
            self.train.append((self.samples, trainer.global_step, self._loss_sum / self._count))
            self._loss_sum, self._count = 0.0, 0
            self._next += self.every_samples

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch's test loss and accuracy (the sweep passes the test set as the validation set)."""
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.test.append(
            (trainer.current_epoch + 1, self.samples, float(metrics["val_loss"]), float(metrics["val_acc"]))
        )


def train_run(
    rule: str,
    k: int,
    *,
    base_batch_size: int,
    lr: float,
    momentum: float,
    epochs: int,
    seed: int,
    log_every_samples: int,
    data_dir: str | Path,
    train_subset: int | None,
    test_subset: int | None,
    accelerator: str,
) -> RunResult:
    """Train the CNN once at batch ``base_batch_size * k`` with ``BatchScalingCallback(rule=rule)``.

    Returns:
        The run's curves and settings.
    """
    pl.seed_everything(seed, workers=True)
    batch_size = base_batch_size * k
    datamodule = MNISTDataModule(
        data_dir, batch_size=batch_size, train_subset=train_subset, test_subset=test_subset, seed=seed
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = MNISTConvNet(lr=lr, momentum=momentum)
    scaling_rule: Any = "none" if rule == "base" else rule  # a name checked by argparse's choices
    scaling = BatchScalingCallback(base_batch_size=base_batch_size, rule=scaling_rule)
    recorder = SampleLossRecorder(log_every_samples)
    with tempfile.TemporaryDirectory(prefix="lrbs-sweep-") as root:
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=1,
            max_epochs=epochs,
            callbacks=[scaling, recorder],
            logger=False,
            default_root_dir=root,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        start = time.perf_counter()
        trainer.fit(
            model, train_dataloaders=datamodule.train_dataloader(), val_dataloaders=datamodule.test_dataloader()
        )
        seconds = time.perf_counter() - start
    return RunResult(
        rule=rule,
        k=k,
        batch_size=batch_size,
        lr=float(trainer.optimizers[0].param_groups[0]["lr"]),
        scale_factor=scaling.scale_factors[0],
        summary=scaling.summary,
        train=recorder.train,
        test=recorder.test,
        seconds=seconds,
        n_train=len(datamodule.train_set) if datamodule.train_set is not None else 0,
    )


def curve_deviation(curve: Sequence[float], base: Sequence[float]) -> float:
    """Mean relative distance of a loss curve from the base curve: ``mean_i |curve[i] - base[i]| / base[i]``.

    Points are matched by index (both curves are logged at the same samples-seen points); extra points are ignored.
    """
    n = min(len(curve), len(base))
    if n == 0:
        return math.nan
    return sum(abs(c - b) / b for c, b in zip(curve[:n], base[:n])) / n


def write_csv(results: Sequence[RunResult], path: Path, n_train: int) -> None:
    """Write every curve of every run, one row per logged point."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in results:
            head = (r.rule, r.k, r.batch_size, f"{r.lr:.6g}")
            for samples, step, loss in r.train:
                writer.writerow((*head, "train", samples, f"{samples / n_train:.5f}", step, f"{loss:.6f}", ""))
            for _epoch, samples, loss, acc in r.test:
                writer.writerow((*head, "test", samples, f"{samples / n_train:.5f}", "", f"{loss:.6f}", f"{acc:.6f}"))


def plot(
    results: Sequence[RunResult], rules: Sequence[str], path: Path, n_train: int, base_batch_size: int, lr: float
) -> None:
    """One panel per rule, one training-loss curve per ``k`` against epochs, the base run in black in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(r for r in results if r.rule == "base")
    ks = sorted({r.k for r in results if r.rule != "base"})
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(rules), figsize=(4.6 * len(rules), 4.2), sharey=True, squeeze=False)
    for ax, rule in zip(axes[0], rules):
        x = [s / n_train for s, _, _ in base.train]
        base_label = f"k=1 (batch {base_batch_size})"
        ax.plot(x, [loss for _, _, loss in base.train], color="black", lw=2, ls="--", zorder=3, label=base_label)
        for i, k in enumerate(ks):
            run = next(r for r in results if r.rule == rule and r.k == k)
            x = [s / n_train for s, _, _ in run.train]
            color = cmap(i / max(len(ks) - 1, 1) * 0.9)
            ax.plot(x, [loss for _, _, loss in run.train], color=color, lw=1.2, label=f"k={k} (batch {run.batch_size})")
        ax.set_title(f"rule={rule}: LR = {lr:g} × {RULE_FORMULAS.get(rule, rule)}")
        ax.set_xlabel("epochs (samples seen / training set size)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss (mean over each logging window)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        f"MNIST CNN, plain SGD, base batch {base_batch_size} at LR {lr:g}; batch {base_batch_size}·k, "
        f"{n_train:,} training images"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_table(
    results: Sequence[RunResult], rules: Sequence[str], path: Path, command: str, wall_seconds: float, threads: int
) -> None:
    """Markdown: one row per run (base, then each rule and ``k``), then deviation by rule and ``k`` at a glance."""
    base = next(r for r in results if r.rule == "base")
    base_curve = [loss for _, _, loss in base.train]
    ks = sorted({r.k for r in results if r.rule != "base"})

    def deviation(run: RunResult) -> float:
        return curve_deviation([loss for _, _, loss in run.train], base_curve)

    def final(run: RunResult) -> tuple[float, float]:
        return (run.test[-1][3], run.test[-1][2]) if run.test else (math.nan, math.nan)

    lines = [
        "| rule | k | batch | LR | final test accuracy | final test loss | training-loss deviation from base |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [base] + [next(r for r in results if r.rule == rule and r.k == k) for rule in rules for k in ks]
    for run in rows:
        acc, loss = final(run)
        cells = (run.rule, run.k, run.batch_size, f"{run.lr:.4g}", f"{acc:.4f}", f"{loss:.4f}", f"{deviation(run):.3f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Training-loss deviation from the base curve, by rule (rows) and k (columns):", ""]
    lines.append("| rule | " + " | ".join(f"k={k}" for k in ks) + " |")
    lines.append("| --- |" + " ---: |" * len(ks))
    for rule in rules:
        devs = [deviation(next(r for r in results if r.rule == rule and r.k == k)) for k in ks]
        lines.append(f"| {rule} | " + " | ".join(f"{d:.3f}" for d in devs) + " |")
    lines += [
        "",
        "Deviation: mean over the logged points i of |loss_k[i] - loss_base[i]| / loss_base[i] (training loss, "
        f"mean over each logging window); 0 means the curve lies on the base curve (batch {base.batch_size}).",
        "",
        f"Command: `{command}`",
        "",
        f"Wall time: {wall_seconds:.0f} s for {len(results)} runs ({platform.machine()}, {os.cpu_count()} CPU cores "
        f"visible, torch threads {threads}, torch {torch.__version__}, lightning {lightning.__version__}).",
        "",
    ]
    path.write_text("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    """The command line of the sweep."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data-dir", default="data", help="folder with the four MNIST .gz files (or MNIST/raw/ in it)")
    p.add_argument("--output-dir", default="docs/scaling", help="where curves.csv, scaling.png and table.md go")
    p.add_argument("--base-batch-size", type=int, default=8, help="base batch size B")
    p.add_argument("--lr", type=float, default=0.001, help="SGD learning rate at the base batch size")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7], help="batch multiples k (batch B*k)")
    p.add_argument("--rules", nargs="+", default=["none", "linear", "sqrt"], choices=sorted(RULE_FORMULAS))
    p.add_argument("--epochs", type=int, default=2, help="training epochs per run")
    p.add_argument("--train-subset", type=int, default=None, help="train on this many images (default: all 60,000)")
    p.add_argument("--test-subset", type=int, default=None, help="test on this many images (default: all 10,000)")
    p.add_argument("--log-every-samples", type=int, default=3360, help="training-loss window in samples")
    p.add_argument("--seed", type=int, default=42, help="seed of weights, data order and dropout (same for all runs)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, auto ...")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 was fastest on 2 cores)")
    return p


@contextlib.contextmanager
def _sweep_environment(threads: int) -> Iterator[None]:
    """Use ``threads`` torch threads and silence Lightning's per-Trainer info lines; restore both afterwards."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")
            warnings.filterwarnings("ignore", ".*LR factor is 1.*")  # rule none, and the base run: expected here
            yield
    finally:
        torch.set_num_threads(old_threads)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep and write the CSV, figure and table.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when MNIST is missing and cannot be downloaded.
    """
    args = build_parser().parse_args(argv)
    if any(k < 1 for k in args.ks):
        raise SystemExit(f"error: every k must be >= 1: {args.ks}")
    ks = [k for k in dict.fromkeys(args.ks) if k != 1]
    out = Path(args.output_dir)
    common: dict[str, Any] = {
        "base_batch_size": args.base_batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "epochs": args.epochs,
        "seed": args.seed,
        "log_every_samples": args.log_every_samples,
        "data_dir": args.data_dir,
        "train_subset": args.train_subset,
        "test_subset": args.test_subset,
        "accelerator": args.accelerator,
    }
    plan = [("base", 1)] + [(rule, k) for rule in args.rules for k in ks]
    results: list[RunResult] = []
    with _sweep_environment(args.threads):
        start = time.perf_counter()
        try:
            for i, (rule, k) in enumerate(plan, 1):
                run = train_run(rule, k, **common)
                results.append(run)
                gc.collect()  # free the finished Trainer and its data copy before the next run
                acc = f"{run.test[-1][3]:.4f}" if run.test else "n/a"
                print(
                    f"[{i}/{len(plan)}] rule={rule} k={k} batch={run.batch_size} lr={run.lr:.4g}: "
                    f"final test acc {acc}, {run.seconds:.0f} s | {run.summary}",
                    flush=True,
                )
        except MNISTNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        wall = time.perf_counter() - start
        size = results[0].n_train
        command = shlex.join(["python", "examples/scaling_sweep.py", *(sys.argv[1:] if argv is None else argv)])
        out.mkdir(parents=True, exist_ok=True)
        write_csv(results, out / "curves.csv", size)
        plot(results, args.rules, out / "scaling.png", size, args.base_batch_size, args.lr)
        write_table(results, args.rules, out / "table.md", command, wall, args.threads)
    print(f"wrote {out / 'curves.csv'}, {out / 'scaling.png'}, {out / 'table.md'} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
