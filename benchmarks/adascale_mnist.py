"""rule="adascale" against the fixed rules on real MNIST: training loss against samples seen.

An MLP 784-128-10 trained with plain SGD (no momentum, no weight decay) on a fixed subset of the MNIST training
images, through the raw-loop API :func:`lightning_lrbs.scale_for_batch` (the same hooks the callback uses). The base
LR is tuned by a small grid at the base batch (lowest final training loss). Then, for each scale ``S``, the batch is
``S`` × the base batch by gradient accumulation in one process (``S`` micro-batches of the base size per optimizer
step), and each rule trains for the same number of samples:

- ``linear``: LR × S (Goyal et al. 2017);
- ``linear+warmup``: the same with a linear warmup from the base LR over the first 10 % of the steps;
- ``sqrt``: LR × √S;
- ``adascale``: LR × r_t, the AdaScale gain of the noise measured at the steps before (Johnson et al. 2020), for
  the same number of samples;
- ``adascale-si``: the same with AdaScale's scale-invariant iterations: it trains until the summed gains
  ``Σ r_t`` (``AdaScaleLR.progress``) reach the base run's step count, i.e. for more samples wherever ``r_t < S``.

Every run sees the same images in the same order (one permutation per epoch, drawn from the seed) from the same
initial weights; only the grouping into optimizer steps differs. The training loss is the mean cross-entropy over
the whole training subset (eval mode), measured every ``--eval-every`` samples. At a constant LR the loss of a
single iterate jumps by 10–30 % between evaluations, so a run's *final loss* is the mean over its last
``--final-points`` evaluations (the last point is in ``curves.csv`` and the table too).

Writes ``curves.csv``, ``adascale.png`` and ``table.md`` into ``--output-dir``. Run from the repository root::

    python benchmarks/adascale_mnist.py --data-dir ../shared/data --output-dir docs/adascale
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from mnist import load_mnist  # noqa: E402

from lightning_lrbs import scale_for_batch  # noqa: E402

RULES = ("linear", "linear+warmup", "sqrt", "adascale", "adascale-si")
OTHERS = RULES[:3]  # the rules adascale is compared with


@dataclass
class Run:
    """One training run: ``points`` are ``(samples seen, training loss)``; ``gains`` the AdaScale factor per step."""

    rule: str
    scale: int
    lr: float
    final_points: int
    points: list[tuple[int, float]] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)
    work: list[float] = field(default_factory=list)  # at each point: Σ r_t × base batch (adascale), else samples
    seconds: float = 0.0

    @property
    def final(self) -> float:
        """Mean training loss over the last ``final_points`` evaluations."""
        values = [v for _, v in self.points[-self.final_points :]]
        return sum(values) / len(values)

    @property
    def last(self) -> float:
        return self.points[-1][1]

    @property
    def samples(self) -> int:
        return self.points[-1][0]

    @property
    def diverged(self) -> bool:
        return not math.isfinite(self.last) or self.last > 10.0


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


@torch.no_grad()
def train_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    loss = float(nn.functional.cross_entropy(model(x), y))
    model.train()
    return loss


def train(
    rule: str,
    scale: int,
    lr: float,
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
    samples: int | None = None,
) -> Run:
    """Train for ``samples`` (default ``args.samples``) samples at batch ``scale`` × ``args.base_batch`` (by
    accumulation); ``adascale-si`` until its scale-invariant progress reaches ``args.samples / args.base_batch``
    base-batch steps."""
    samples = args.samples if samples is None else samples
    model = mlp(args.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    b = args.base_batch
    steps = samples // (b * scale)
    warmup = max(1, round(0.1 * steps)) if rule == "linear+warmup" else 0
    result = None
    if scale > 1:
        result = scale_for_batch(
            optimizer,
            per_device_batch_size=b,
            accumulation=scale,
            base_batch_size=b,
            rule={"linear+warmup": "linear", "adascale-si": "adascale"}.get(rule, rule),  # type: ignore[arg-type]
            warmup_steps=warmup,
        )
    run = Run(rule, scale, lr, args.final_points)
    run.points.append((0, train_loss(model, x, y)))
    run.work.append(0.0)
    start = time.perf_counter()
    n = len(y)
    micro_per_epoch = n // b
    perm = torch.empty(0, dtype=torch.long)
    noise = result.noise if result is not None else None
    adascale = result.adascale if result is not None else None
    base_steps = args.samples // b
    micro_batches = samples // b
    micro = 0
    while True:
        if rule == "adascale-si":
            if micro % scale == 0 and adascale is not None and adascale.progress >= base_steps:
                break
        elif micro >= micro_batches:
            break
        epoch, index = divmod(micro, micro_per_epoch)
        if index == 0:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        pick = perm[index * b : (index + 1) * b]
        if noise is not None:
            noise.micro_batch(b, loss_scale=1.0 / scale)
        loss = nn.functional.cross_entropy(model(x[pick]), y[pick]) / scale
        loss.backward()
        if (micro + 1) % scale == 0:
            if noise is not None:
                noise.step()
            if adascale is not None:
                run.gains.append(adascale.factor)
            optimizer.step()
            optimizer.zero_grad()
        micro += 1
        seen = micro * b
        if seen % args.eval_every == 0:
            value = train_loss(model, x, y)
            run.points.append((seen, value))
            run.work.append(adascale.progress * b if adascale is not None else seen)
            if not math.isfinite(value) or value > 100:
                break  # diverged
    if run.points[-1][0] != micro * b:  # adascale-si ends between evaluations
        run.points.append((micro * b, train_loss(model, x, y)))
        run.work.append(adascale.progress * b if adascale is not None else micro * b)
    run.seconds = time.perf_counter() - start
    if result is not None:
        if result.warmup is not None:
            result.warmup.remove()
        if result.adascale is not None:
            result.adascale.remove()
        if noise is not None:
            noise.remove()
    return run


def deviation(run: Run, base: Run) -> float:
    """Mean relative distance of the curve from the base curve over the common points (after the first)."""
    ref = dict(base.points)
    diffs = [abs(v - ref[s]) / ref[s] for s, v in run.points[1:] if s in ref and math.isfinite(v)]
    if len(diffs) < len(run.points) - 1 or not diffs:
        return math.inf
    return sum(diffs) / len(diffs)


def invariant_deviation(run: Run, base: Run) -> float:
    """Mean relative distance from the base curve with the run's points placed at their scale-invariant progress
    (Σ r_t × base batch, AdaScale's x-axis; samples for the other rules), the base curve interpolated linearly."""
    xs, ys = zip(*base.points)
    diffs = []
    for work, (_, value) in zip(run.work[1:], run.points[1:]):
        if not xs[1] <= work <= xs[-1] or not math.isfinite(value):
            continue
        i = next(k for k in range(1, len(xs)) if xs[k] >= work)
        ref = ys[i - 1] + (ys[i] - ys[i - 1]) * (work - xs[i - 1]) / (xs[i] - xs[i - 1])
        diffs.append(abs(value - ref) / ref)
    return sum(diffs) / len(diffs) if diffs else math.inf


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--output-dir", default="docs/adascale")
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--base-batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20 * 4096, help="samples each run trains for")
    parser.add_argument("--eval-every", type=int, default=2048)
    parser.add_argument("--final-points", type=int, default=5, help="evaluations the final loss averages")
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 8, 32, 128])
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None, help="base LR (skips the grid)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    wall = time.perf_counter()

    images, labels, _, _ = load_mnist(args.data_dir)
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))[: args.train_size]
    x, y = images[pick].reshape(len(pick), -1).contiguous(), labels[pick]

    if args.lr is not None:
        args.lr_grid = [args.lr]
    grid = [train("base", 1, lr, x, y, args) for lr in args.lr_grid]
    for run in grid:
        print(f"base batch {args.base_batch} lr {run.lr:g}: final training loss {run.final:.4f} ({run.seconds:.0f} s)")
    base = min(grid, key=lambda r: r.final if math.isfinite(r.final) else math.inf)
    lr = base.lr
    runs: list[Run] = []
    for scale in args.scales:
        for rule in RULES:
            run = train(rule, scale, lr, x, y, args)
            runs.append(run)
        budget = runs[-1].samples  # adascale-si's: the others get as many samples, for a fair second comparison
        for rule in OTHERS:
            run = train(rule, scale, lr, x, y, args, samples=budget)
            run.rule = f"{rule}@si"
            runs.append(run)
            gain = f", gain mean {sum(run.gains) / len(run.gains):.2f}" if run.gains else ""
            print(
                f"S={scale} {rule}: final {run.final:.4f} (last {run.last:.4f}, {run.samples} samples), "
                f"deviation {deviation(run, base):.3f}{gain} ({run.seconds:.0f} s)"
            )
    wall = time.perf_counter() - wall

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rule", "scale", "batch", "lr", "samples", "train_loss"])
        for run in [*grid, *runs]:
            for seen, value in run.points:
                writer.writerow([run.rule, run.scale, run.scale * args.base_batch, run.lr, seen, f"{value:.6g}"])
    table = _table(runs, base, args)
    (out / "table.md").write_text(table + f"\nWall time {wall:.0f} s.\n")
    _plot(runs, base, args, out / "adascale.png")
    print(table)
    print(f"wall time {wall:.0f} s")
    return 0


def _criterion(ada: Run, by_rule: dict[str, Run], suffix: str = "") -> tuple[float, str, bool]:
    """adascale's final loss / the best other rule's (runs named ``rule + suffix``), that rule, and whether the issue's
    criterion holds: within 10 % of the best of linear, linear+warmup and sqrt, and below linear wherever linear
    diverged or ended behind another rule."""
    others = {r: by_rule[r + suffix] for r in OTHERS if not by_rule[r + suffix].diverged}
    best = min(others, key=lambda r: others[r].final) if others else "–"
    best_loss = others[best].final if others else math.inf
    linear = by_rule["linear" + suffix]
    ratio = ada.final / best_loss if math.isfinite(best_loss) else 0.0
    linear_behind = linear.diverged or linear.final > best_loss
    ok = not ada.diverged and ratio <= 1.10 and (not linear_behind or ada.final < linear.final)
    return ratio, best, ok


def _table(runs: list[Run], base: Run, args: argparse.Namespace) -> str:
    def cell(run: Run) -> str:
        return "diverged" if run.diverged else f"{run.final:.4f}"

    lines = [
        f"Base: batch {args.base_batch}, LR {base.lr:g} (best of {', '.join(f'{v:g}' for v in args.lr_grid)}), "
        f"final training loss {base.final:.4f} (last point {base.last:.4f}), {args.samples} samples of a "
        f"{args.train_size}-image subset. Final loss = mean of the last {args.final_points} evaluations (every "
        f"{args.eval_every} samples).",
        "",
        f"Equal samples ({args.samples} each):",
        "",
        "| S | batch | linear | linear+warmup | sqrt | adascale | ÷ best other | criterion | gain r_t: mean, last |"
        " deviation from base: linear / adascale |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_scale = {scale: {r.rule: r for r in runs if r.scale == scale} for scale in args.scales}
    for scale, by_rule in by_scale.items():
        ada = by_rule["adascale"]
        ratio, _, ok = _criterion(ada, by_rule)
        gains = f"{sum(ada.gains) / len(ada.gains):.2f}, {ada.gains[-1]:.2f}" if ada.gains else "–"
        lines.append(
            f"| {scale} | {scale * args.base_batch} | {' | '.join(cell(by_rule[r]) for r in RULES[:4])} | "
            f"{ratio:.3f} | {'met' if ok else '**not met**'} | {gains} | "
            f"{deviation(by_rule['linear'], base):.3f} / {deviation(ada, base):.3f} |"
        )
    lines += [
        "",
        "Scale-invariant iterations (adascale-si trains until Σ r_t reaches the base run's "
        f"{args.samples // args.base_batch} steps), against the others at {args.samples} samples (the criterion as "
        "written) and at adascale-si's own number of samples:",
        "",
        "| S | adascale-si | samples | gain r_t: mean, last | deviation from base against Σ r_t·B_base |"
        " ÷ best other at equal samples | criterion | others at adascale-si's samples: linear / linear+warmup / sqrt |"
        " ÷ best of them | criterion |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scale, by_rule in by_scale.items():
        si = by_rule["adascale-si"]
        ratio, _, ok = _criterion(si, by_rule)
        same_ratio, _, same_ok = _criterion(si, by_rule, "@si")
        gains = f"{sum(si.gains) / len(si.gains):.2f}, {si.gains[-1]:.2f}" if si.gains else "–"
        lines.append(
            f"| {scale} | {cell(si)} | {si.samples} ({si.samples / args.samples:.2f}×) | {gains} | "
            f"{invariant_deviation(si, base):.3f} | {ratio:.3f} | "
            f"{'met' if ok else '**not met**'} | {' / '.join(cell(by_rule[r + '@si']) for r in OTHERS)} | "
            f"{same_ratio:.3f} | {'met' if same_ok else '**not met**'} |"
        )
    return "\n".join(lines) + "\n"


def _plot(runs: list[Run], base: Run, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.scales), figsize=(4.2 * len(args.scales), 3.6), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, scale in zip(axes, args.scales):
        bx, by = zip(*base.points)
        ax.plot(bx, by, color="black", lw=2, label=f"base (batch {args.base_batch})")
        styles = ("tab:blue", "tab:cyan", "tab:green", "tab:red", "tab:red")
        for rule, color in zip(RULES, styles):
            run = next(r for r in runs if r.scale == scale and r.rule == rule)
            pts = [(s, v) for s, v in run.points if math.isfinite(v)]
            ax.plot(
                *zip(*pts),
                color=color,
                label=rule,
                lw=1.5 if rule.startswith("adascale") else 1,
                ls="--" if rule == "adascale-si" else "-",
            )
        for rule, color in zip(OTHERS, styles):  # the same rules at adascale-si's budget, beyond the common one
            run = next(r for r in runs if r.scale == scale and r.rule == f"{rule}@si")
            pts = [(s, v) for s, v in run.points if math.isfinite(v) and s >= args.samples]
            if len(pts) > 1:
                ax.plot(*zip(*pts), color=color, lw=0.8, ls=":")
        ax.axvline(args.samples, color="grey", lw=0.5)
        ax.set_title(f"S = {scale} (batch {scale * args.base_batch})")
        ax.set_xlabel("samples seen")
        ax.set_xscale("log")
        ax.set_xlim(left=args.eval_every)
        ax.set_yscale("log")
        ax.set_ylim(top=3.0)
    axes[0].set_ylabel("training loss (whole subset)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
