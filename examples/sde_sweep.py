"""``rule="sde"`` experiment: does scaling Adam's betas and epsilon too keep the training curves together?

Trains the MNIST CNN of ``mnist.py`` with Adam at a base batch size ``B`` (default 8) and learning rate ``lr``
(default 1e-3, betas (0.9, 0.999), eps 1e-8), then at batch ``B * k`` for each ``k`` (default 2, 4, 8, 16) under
each rule (default ``sqrt``, ``sde``, ``linear``) applied by :class:`lightning_lrbs.BatchScalingCallback`:

- ``sqrt``: LR x sqrt(k), betas and eps unchanged;
- ``sde``: LR x sqrt(k), betas -> betas**k, eps -> eps / sqrt(k) (Malladi et al. 2022, arXiv:2205.10287);
- ``linear``: LR x k.

Every run carries Lightning's ``EMAWeightAveraging(decay=...)`` (default 0.999); the callback raises its decay to
``decay**k`` (Busbridge et al. 2023). One more run at the largest ``k`` under ``sde`` keeps the EMA decay unchanged
(``scale_ema=False``). After training, the test accuracy of the raw weights and of the EMA weights is measured.

Same seed, initial weights and image order for every run (see ``scaling_sweep.py``); the training-loss curve is the mean
loss over windows of ``--log-every-samples`` samples (a multiple of every batch size), and its deviation from the base
curve is ``mean_i |loss_k[i] - loss_base[i]| / loss_base[i]``, as in ``docs/scaling``.

Run (from the repository root)::

    python examples/sde_sweep.py --data-dir ../shared/data --output-dir docs/sde

``--noise-scale`` runs only the base run, split into micro-batches of ``B / 2`` with ``accumulate_grad_batches=2``
(the same averaged gradient, image order and dropout masks, up to float rounding), and measures the gradient noise
scale of its raw gradients with the callback's estimator (``noise_scale=True``) on every ``--noise-every``-th step;
it writes ``noise_scale.csv`` (one row per loss window) and ``noise_scale.md`` (the epoch in thirds).
"""

from __future__ import annotations

import argparse
import csv
import gc
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist import MNISTConvNet, MNISTDataModule, MNISTNotFoundError  # noqa: E402
from scaling_sweep import SampleLossRecorder, _sweep_environment, curve_deviation  # noqa: E402

from lightning_lrbs import BatchScalingCallback  # noqa: E402
from lightning_lrbs.noise import NoiseEstimate  # noqa: E402
from lightning_lrbs.sde import averaged_model_ema  # noqa: E402

RULE_TEXT = {
    "sqrt": "LR × √k",
    "sde": "LR × √k, β → β^k, ε → ε/√k",
    "linear": "LR × k",
    "none": "LR × 1",
    "auto": "auto",
}


class AdamConvNet(MNISTConvNet):
    """The MNIST CNN of ``mnist.py``, trained with Adam instead of SGD.

    Args:
        lr: Adam's learning rate (at the base batch size).
        betas: Adam's betas.
        eps: Adam's epsilon.
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(lr=lr)
        self.betas = betas
        self.eps = eps

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam at the unscaled ``lr``, ``betas`` and ``eps``."""
        return torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas, eps=self.eps)


def accuracy_on(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of ``model`` on the test tensors (eval mode, batches of 1000)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), 1000):
            correct += int((model(images[i : i + 1000]).argmax(1) == labels[i : i + 1000]).sum())
    model.train(was_training)
    return correct / len(labels)


class NoiseRecorder(Callback):
    """Keep every measured step's unsmoothed two-batch estimates of the callback's noise estimator, with the samples
    seen at that step, and the callback's smoothed noise scale."""

    def __init__(self, scaling: BatchScalingCallback) -> None:
        self.scaling = scaling
        self.samples = 0
        self.steps: list[tuple[int, int, NoiseEstimate, float]] = []  # (samples, step, estimate, smoothed)
        self._seen = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        """After each optimizer step that was measured, keep its estimate."""
        self.samples += len(batch[1])  # type: ignore[index]
        noise = self.scaling.noise
        if noise is not None and noise.last is not None and noise.measurements > self._seen:
            self._seen = noise.measurements
            self.steps.append((self.samples, trainer.global_step, noise.last, noise.noise_scale or math.nan))


def noise_stats(estimates: Sequence[NoiseEstimate]) -> tuple[float, float, float, float, float]:
    r"""Pool the per-step estimates of a span: mean :math:`|G|^2`, its standard error, mean
    :math:`\operatorname{tr}\Sigma`, their ratio :math:`B_\text{noise}` and the 2-sigma lower bound
    :math:`\operatorname{tr}\Sigma / (|G|^2 + 2\,\text{se})` (as :class:`~lightning_lrbs.noise.GradientNoiseScale`
    does over its moving average; ``inf`` where the bound's denominator is not positive)."""
    n = len(estimates)
    sq = sum(e.grad_sq_norm for e in estimates) / n
    var = sum(e.grad_var for e in estimates) / n
    se = math.sqrt(sum((e.grad_sq_norm - sq) ** 2 for e in estimates) / max(n - 1, 1) / n)
    ratio = var / sq if sq > 0 else math.inf
    low = var / (sq + 2 * se) if sq + 2 * se > 0 else math.inf
    return sq, se, var, ratio, low


class RawAccuracy(Callback):
    """At the end of training, before ``EMAWeightAveraging`` copies its average into the model (listed before it),
    measure the raw weights' test accuracy."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.accuracy = math.nan

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the raw weights' accuracy."""
        self.accuracy = accuracy_on(pl_module, self.images, self.labels)


@dataclass
class Run:
    """One training run: settings, the callback's summary, curve and accuracies."""

    rule: str
    k: int
    scale_ema: bool
    batch_size: int
    accumulate: int = 1  # micro-batches of batch_size / accumulate per step; >= 2 measures the noise scale
    summary: str = ""
    lr: float = math.nan
    betas: tuple[float, float] = (math.nan, math.nan)
    eps: float = math.nan
    ema_decay: float = math.nan
    train: list[tuple[int, int, float]] = field(default_factory=list)
    raw_accuracy: float = math.nan
    ema_accuracy: float = math.nan
    seconds: float = 0.0
    noise: list[tuple[int, int, NoiseEstimate, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``base``, ``sde k=16`` or ``sde k=16, EMA rule off``."""
        if self.rule == "base":
            return "base"
        return f"{self.rule} k={self.k}" + ("" if self.scale_ema else ", EMA rule off")


def train(run: Run, args: argparse.Namespace) -> Run:
    """Train one run and fill in its results."""
    pl.seed_everything(args.seed, workers=True)
    micro = run.batch_size // run.accumulate
    data = MNISTDataModule(args.data_dir, batch_size=micro, train_subset=args.train_subset, seed=args.seed)
    data.prepare_data()
    data.setup("fit")
    assert data.test_set is not None  # noqa: S101 - set by setup
    test_x, test_y = data.test_set.tensors
    model = AdamConvNet(lr=args.lr)
    scaling = BatchScalingCallback(
        base_batch_size=args.base_batch_size,
        rule="none" if run.rule == "base" else run.rule,  # type: ignore[arg-type]
        scale_ema=run.scale_ema,
        noise_scale=run.accumulate > 1,
        noise_every_n_steps=args.noise_every,
    )
    recorder = SampleLossRecorder(args.log_every_samples)
    noise = NoiseRecorder(scaling)
    raw = RawAccuracy(test_x, test_y)
    ema = EMAWeightAveraging(decay=args.ema_decay)
    with tempfile.TemporaryDirectory(prefix="lrbs-sde-") as root:
        trainer = pl.Trainer(
            accelerator=args.accelerator,
            devices=1,
            max_epochs=args.epochs,
            callbacks=[scaling, recorder, noise, raw, ema],
            accumulate_grad_batches=run.accumulate,
            logger=False,
            default_root_dir=root,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        start = time.perf_counter()
        trainer.fit(model, train_dataloaders=data.train_dataloader())
        run.seconds = time.perf_counter() - start
    group = trainer.optimizers[0].param_groups[0]
    run.summary, run.lr, run.betas, run.eps = scaling.summary, float(group["lr"]), tuple(group["betas"]), group["eps"]
    found = averaged_model_ema(ema._average_model) if ema._average_model is not None else None
    run.ema_decay = found[1] if found is not None else math.nan
    # Lightning hands on_train_batch_end the loss divided by accumulate_grad_batches: undo it
    run.train, run.noise = [(n, step, loss * run.accumulate) for n, step, loss in recorder.train], noise.steps
    run.raw_accuracy = raw.accuracy
    run.ema_accuracy = accuracy_on(model, test_x, test_y)  # EMAWeightAveraging copied its average in at the end
    return run


def write_csv(runs: Sequence[Run], path: Path) -> None:
    """Every training-loss point of every run, and the accuracies (one row per run, ``curve=final``)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("rule", "k", "scale_ema", "batch_size", "curve", "samples", "step", "loss", "accuracy"))
        for r in runs:
            head = (r.rule, r.k, int(r.scale_ema), r.batch_size)
            for samples, step, loss in r.train:
                writer.writerow((*head, "train", samples, step, f"{loss:.6f}", ""))
            writer.writerow((*head, "raw", "", "", "", f"{r.raw_accuracy:.4f}"))
            writer.writerow((*head, "ema", "", "", "", f"{r.ema_accuracy:.4f}"))


def deviation(run: Run, base: Run) -> float:
    """Training-loss deviation of ``run`` from ``base`` (the metric of docs/scaling)."""
    return curve_deviation([loss for _, _, loss in run.train], [loss for _, _, loss in base.train])


def plot(runs: Sequence[Run], rules: Sequence[str], ks: Sequence[int], path: Path, args: argparse.Namespace) -> None:
    """One loss panel per rule (one curve per k, the base run dashed), and the deviation against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = runs[0]
    size = max(s for s, _, _ in base.train)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(rules) + 1, figsize=(4.4 * (len(rules) + 1), 4.2), squeeze=False)
    for ax, rule in zip(axes[0], rules):
        ax.plot(
            [s / size for s, _, _ in base.train], [v for _, _, v in base.train], "k--", lw=2, label="base", zorder=3
        )
        for i, k in enumerate(ks):
            run = next(r for r in runs if r.rule == rule and r.k == k and r.scale_ema)
            color = cmap(i / max(len(ks) - 1, 1) * 0.9)
            ax.plot([s / size for s, _, _ in run.train], [v for _, _, v in run.train], color=color, label=f"k={k}")
        ax.set_title(f"rule={rule}: {RULE_TEXT.get(rule, rule)}", fontsize=10)
        ax.set_xlabel("fraction of the training run (samples seen)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("training loss (window mean)")
    ax = axes[0][-1]
    for rule in rules:
        devs = [deviation(next(r for r in runs if r.rule == rule and r.k == k and r.scale_ema), base) for k in ks]
        ax.plot(ks, devs, "o-", label=rule)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_xlabel("k (batch = base × k)")
    ax.set_ylabel("deviation from the base curve")
    ax.set_title("mean |loss_k − loss_base| / loss_base", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(
        f"MNIST CNN, Adam lr {args.lr:g} at base batch {args.base_batch_size}; batch {args.base_batch_size}·k, "
        f"{args.train_subset or 60000:,} images × {args.epochs} epoch(s)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(
    runs: Sequence[Run], rules: Sequence[str], ks: Sequence[int], path: Path, command: str, wall: float
) -> None:
    """Markdown: the deviation grid, then one row per run with its settings and accuracies."""
    base = runs[0]
    lines = ["Training-loss deviation from the base curve, by rule (rows) and k (columns):", ""]
    lines.append("| rule | " + " | ".join(f"k={k}" for k in ks) + " |")
    lines.append("| --- |" + " ---: |" * len(ks))
    for rule in rules:
        devs = [deviation(next(r for r in runs if r.rule == rule and r.k == k and r.scale_ema), base) for k in ks]
        lines.append(f"| {rule} | " + " | ".join(f"{d:.3f}" for d in devs) + " |")
    lines += [
        "",
        "| run | batch | LR | betas | eps | EMA decay | deviation | raw test acc | EMA test acc | EMA − raw | time |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        cells = (
            r.label,
            r.batch_size,
            f"{r.lr:.4g}",
            f"({r.betas[0]:.4g}, {r.betas[1]:.4g})",
            f"{r.eps:.3g}",
            f"{r.ema_decay:.4g}",
            f"{deviation(r, base):.3f}",
            f"{r.raw_accuracy:.4f}",
            f"{r.ema_accuracy:.4f}",
            f"{r.ema_accuracy - r.raw_accuracy:+.4f}",
            f"{r.seconds:.0f} s",
        )
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        f"Command: `{command}`",
        "",
        f"Wall time: {wall:.0f} s for {len(runs)} runs ({platform.machine()}, {os.cpu_count()} CPU cores visible, "
        f"1 torch thread, torch {torch.__version__}, lightning {lightning.__version__}).",
        "",
    ]
    path.write_text("\n".join(lines))


def write_noise(run: Run, path: Path, command: str, wall: float, base_curve: Path) -> str:
    """``noise_scale.csv`` (one row per loss window) and ``noise_scale.md`` (the epoch in thirds); returns the latter.

    The noise scale of a span is its mean trace-Sigma estimate over its mean squared-gradient estimate (per step,
    unsmoothed); at a batch far below the noise scale a single step's estimate of the squared gradient is mostly
    noise, so only long spans resolve it. ``noise_scale_smoothed`` is the callback's moving average at the
    end of the window. ``base_curve`` is a sweep's ``curves.csv``: when it exists, the loss curve is compared with its
    batch-8 run (the same run without accumulation).
    """
    windows: list[list[NoiseEstimate]] = [[] for _ in run.train]
    ends = [samples for samples, _, _ in run.train]
    for samples, _, estimate, _ in run.noise:  # steps after the last full window are left out, as from the loss curve
        i = next((j for j, end in enumerate(ends) if samples <= end), None)
        if i is not None:
            windows[i].append(estimate)
    smoothed = [next((s for n, _, _, s in reversed(run.noise) if n <= end), math.nan) for end in ends]
    with (path / "noise_scale.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("samples", "step", "measured_steps", "train_loss", "grad_sq_norm", "grad_sq_norm_se",
                         "grad_var", "noise_scale", "noise_scale_lower_2se", "noise_scale_smoothed"))  # fmt: skip
        for (samples, step, loss), found, smooth in zip(run.train, windows, smoothed):
            sq, se, var, ratio, low = noise_stats(found) if found else (math.nan,) * 5
            writer.writerow((samples, step, len(found), f"{loss:.6f}", f"{sq:.6g}", f"{se:.3g}", f"{var:.6g}",
                             f"{ratio:.4g}", f"{low:.4g}", f"{smooth:.4g}"))  # fmt: skip
    thirds = [range(len(ends) * i // 3, len(ends) * (i + 1) // 3) for i in range(3)]
    lines = [
        f"Gradient noise scale of the base run (batch {run.batch_size} = {run.accumulate} micro-batches of "
        f"{run.batch_size // run.accumulate}, Adam), raw gradients, {sum(map(len, windows))} measured steps:",
        "",
        "| span (samples) | steps | train loss | mean \\|G\\|² ± se | mean tr Σ | noise scale | 2-se lower bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for span in thirds:
        found = [e for i in span for e in windows[i]]
        sq, se, var, ratio, low = noise_stats(found)
        loss = sum(run.train[i][2] for i in span) / len(span)
        start = ends[span.start - 1] if span.start else 0
        lines.append(f"| {start}–{ends[span.stop - 1]} | {len(found)} | {loss:.3f} | {sq:.4g} ± {se:.2g} | "
                     f"{var:.4g} | {ratio:.0f} | {low:.0f} |")  # fmt: skip
    lines += ["", f"Test accuracy: raw {run.raw_accuracy:.4f}, EMA {run.ema_accuracy:.4f}."]
    if base_curve.exists():
        with base_curve.open() as f:
            base = [float(r["loss"]) for r in csv.DictReader(f) if r["rule"] == "base" and r["curve"] == "train"]
        if len(base) == len(run.train):
            dev = curve_deviation([loss for _, _, loss in run.train], base)
            lines += ["", f"Deviation of its loss curve from the batch-8 run in `{base_curve.name}`: {dev:.2g}."]
    lines += ["", f"Command: `{command}`", "", f"Wall time: {wall:.0f} s.", ""]
    (path / "noise_scale.md").write_text("\n".join(lines))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of the experiment."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data-dir", default="data", help="folder with the four MNIST .gz files (or MNIST/raw/ in it)")
    p.add_argument("--output-dir", default="docs/sde", help="where curves.csv, sde.png and table.md go")
    p.add_argument("--base-batch-size", type=int, default=8, help="base batch size B")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate at the base batch size")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8, 16], help="batch multiples k (batch B*k)")
    p.add_argument("--rules", nargs="+", default=["sqrt", "sde", "linear"], choices=sorted(RULE_TEXT))
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMAWeightAveraging decay at the base batch size")
    p.add_argument("--epochs", type=int, default=1, help="training epochs per run")
    p.add_argument("--train-subset", type=int, default=None, help="train on this many images (default: all 60,000)")
    p.add_argument("--log-every-samples", type=int, default=1920, help="training-loss window (multiple of batches)")
    p.add_argument("--seed", type=int, default=42, help="seed of weights, data order and dropout (same for all runs)")
    p.add_argument("--accelerator", default="cpu", help="cpu, gpu, auto ...")
    p.add_argument(
        "--noise-scale",
        action="store_true",
        help="run only the base run as 2 accumulated micro-batches and measure its gradient noise scale",
    )
    p.add_argument("--noise-every", type=int, default=1, help="with --noise-scale: measure every n-th step")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment and write ``curves.csv``, ``sde.png`` and ``table.md``.

    Returns:
        0 on success, 1 when MNIST is missing and cannot be downloaded.
    """
    args = build_parser().parse_args(argv)
    ks = [k for k in dict.fromkeys(args.ks) if k > 1]
    if not ks or any(k < 1 for k in args.ks):
        raise SystemExit(f"error: give k >= 2: {args.ks}")
    b = args.base_batch_size
    plan = [Run("base", 1, True, b)] + [Run(rule, k, True, b * k) for rule in args.rules for k in ks]
    if "sde" in args.rules:
        plan.append(Run("sde", max(ks), False, b * max(ks)))
    if args.noise_scale:  # only the base run, as 2 micro-batches of b / 2 per step
        if b % 2:
            raise SystemExit(f"error: --noise-scale splits the base batch in two: give an even --base-batch-size: {b}")
        plan = [Run("base", 1, True, b, accumulate=2)]
    out = Path(args.output_dir)
    with _sweep_environment(threads=1):
        start = time.perf_counter()
        try:
            for i, run in enumerate(plan, 1):
                train(run, args)
                gc.collect()
                print(
                    f"[{i}/{len(plan)}] {run.label}: raw acc {run.raw_accuracy:.4f}, EMA acc {run.ema_accuracy:.4f}, "
                    f"{run.seconds:.0f} s | {run.summary}",
                    flush=True,
                )
        except MNISTNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        wall = time.perf_counter() - start
    command = shlex.join(["python", "examples/sde_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    out.mkdir(parents=True, exist_ok=True)
    if args.noise_scale:
        print(write_noise(plan[0], out, command, wall, out / "curves.csv"))
        print(f"wrote {out / 'noise_scale.csv'}, {out / 'noise_scale.md'} ({wall:.0f} s)")
        return 0
    write_csv(plan, out / "curves.csv")
    plot(plan, args.rules, ks, out / "sde.png", args)
    write_table(plan, args.rules, ks, out / "table.md", command, wall)
    print(f"wrote {out / 'curves.csv'}, {out / 'sde.png'}, {out / 'table.md'} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
