"""Large batch: does the linear scaling rule still hold at k = 64 and 128, and does warmup rescue it where it breaks?

Plain SGD on all 60,000 training images, base batch 8 at LR 0.001. Batches 512 and 1024 (k = 64, 128) are trained
for a fixed number of epochs with ``BatchScalingCallback(base_batch_size=8, rule=...)`` for the rules ``none``
(LR 0.001), ``sqrt`` (LR 0.001·√k), ``linear`` (LR 0.001·k) and ``linear`` with a linear warmup from the unscaled LR
(Goyal et al. 2017, *Accurate, Large Minibatch SGD*). The base batch 8 is trained for the same epochs as the
reference the large batches should match. Test accuracy on all 10,000 test images every ``--eval-every`` samples.

Run (from the repository root)::

    python benchmarks/large_batch.py
    python benchmarks/large_batch.py --epochs 1 --train-smoke   # a quick check of the script
    # beyond k = 128: where does the linear rule break, and does warmup rescue it?
    python benchmarks/large_batch.py --batch-sizes 2048 4096 8192 --rules linear "linear + warmup" --seeds 0 \
        --no-base --name large_batch_beyond
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lrbs_bench import (
    OUT_DIR,
    TestAccuracyTracker,
    command_line,
    default_data_dir,
    fit_tracked,
    load_mnist,
    machine_lines,
    markdown_table,
    other_processes,
    quiet,
    write_csv,
)

from lightning_lrbs import BatchScalingCallback

RULES: dict[str, dict[str, Any]] = {
    "none": {"rule": "none"},
    "sqrt": {"rule": "sqrt"},
    "linear": {"rule": "linear"},
    "linear + warmup": {"rule": "linear"},  # warmup_epochs added from the command line
}
STYLES = {"none": "tab:gray", "sqrt": "tab:blue", "linear": "tab:red", "linear + warmup": "tab:green"}


def plot(curves: list[dict[str, Any]], batch_sizes: Sequence[int], base_batch: int, path: Path, title: str) -> None:
    """Test accuracy and training loss against epochs: one column per batch size, one line per rule (seed 0 ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(batch_sizes), figsize=(5.5 * len(batch_sizes), 7), sharex=True, squeeze=False)
    seeds = sorted({c["seed"] for c in curves})
    for col, batch in enumerate(batch_sizes):
        acc_ax, loss_ax = axes[0][col], axes[1][col]
        lines = [(f"base (batch {base_batch})", "base", base_batch, "black")]
        lines += [(rule, rule, batch, STYLES[rule]) for rule in RULES if any(c["variant"] == rule for c in curves)]
        for label, variant, b, color in lines:
            for i, seed in enumerate(seeds):
                pts = [c for c in curves if c["variant"] == variant and c["batch_size"] == b and c["seed"] == seed]
                if not pts:
                    continue
                style = "--" if variant == "base" else "-"
                kw = {
                    "label": label if i == 0 else None,
                    "color": color,
                    "linestyle": style,
                    "alpha": 0.9 if i == 0 else 0.5,
                }
                acc_ax.plot([p["epochs"] for p in pts], [100 * p["test_accuracy"] for p in pts], marker=".", **kw)
                loss_ax.plot([p["epochs"] for p in pts], [p["train_loss"] for p in pts], marker=".", **kw)
        k = batch // base_batch
        acc_ax.set_title(f"batch {batch} (k = {k})")
        acc_ax.set_ylabel("test accuracy (%)")
        shown = [100 * c["test_accuracy"] for c in curves if c["batch_size"] in (batch, base_batch)]
        acc_ax.set_ylim(max(0.0, 5 * math.floor(min(shown, default=80.0) / 5) - 1), 100)
        acc_ax.grid(alpha=0.3)
        loss_ax.set_ylabel("training loss (mean since last point)")
        loss_ax.set_yscale("log")
        loss_ax.set_xlabel("epoch")
        loss_ax.grid(alpha=0.3)
        acc_ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Train every rule at every batch size for every seed; write the CSVs, the PNG and the markdown fragment.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--base-batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.001, help="SGD learning rate at the base batch size")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=15000, help="evaluate every this many training samples")
    p.add_argument("--warmup-epochs", type=float, default=0.5, help="warmup length of `linear + warmup`")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES), help="rules to train")
    p.add_argument("--no-base", action="store_true", help="skip the base-batch reference runs")
    p.add_argument("--name", default="large_batch", help="stem of the output files (CSV, PNG, markdown)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--train-smoke", action="store_true", help="train on 6,000 images (script check only)")
    args = p.parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    command = command_line("benchmarks/large_batch.py", argv)
    load_before = other_processes()
    _, _, test_x, test_y = load_mnist(args.data_dir)
    n_train = 6000 if args.train_smoke else 60000

    runs: list[tuple[str, int, dict[str, Any]]] = [] if args.no_base else [("base", args.base_batch_size, {})]
    for batch in args.batch_sizes:
        for rule in args.rules:
            kwargs = RULES[rule]
            extra = {"warmup_epochs": args.warmup_epochs} if rule == "linear + warmup" else {}
            runs.append((rule, batch, {**kwargs, **extra}))

    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in args.seeds:
        for variant, batch, kwargs in runs:
            callbacks = [BatchScalingCallback(base_batch_size=args.base_batch_size, **kwargs)] if kwargs else []
            tracker = TestAccuracyTracker(test_x, test_y, n_train, args.eval_every)
            trainer = fit_tracked(
                batch_size=batch,
                lr=args.lr,
                seed=seed,
                max_epochs=args.epochs,
                callbacks=callbacks,
                tracker=tracker,
                data_dir=args.data_dir,
                train_subset=6000 if args.train_smoke else None,
            )
            final = tracker.points[-1]
            row = {
                "seed": seed,
                "variant": variant,
                "batch_size": batch,
                "k": batch // args.base_batch_size,
                "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
                "warmup_steps": callbacks[0].state_dict()["warmup_steps"] or 0 if callbacks else 0,
                "steps": trainer.global_step,
                "epochs": final["epochs"],
                "final_test_accuracy": final["test_accuracy"],
                "final_train_loss": final["train_loss"],
                "diverged": not math.isfinite(final["train_loss"]),
                "train_seconds": tracker.train_seconds,
            }
            rows.append(row)
            curves += [{"seed": seed, "variant": variant, "batch_size": batch, **pt} for pt in tracker.points]
            print(
                f"seed {seed} batch {batch:5d} {variant:16s} lr {row['lr']:.4g}: "
                f"test acc {row['final_test_accuracy']:.4f} loss {row['final_train_loss']:.4f} "
                f"({row['train_seconds']:.0f} s)",
                flush=True,
            )
    total = time.perf_counter() - started
    load_after = other_processes()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name
    write_csv(args.out_dir / f"{name}.csv", rows)
    write_csv(args.out_dir / f"{name}_curves.csv", curves)
    title = (
        f"MNIST CNN, plain SGD, base batch {args.base_batch_size} at LR {args.lr}; {args.epochs} epochs; "
        f"seeds {', '.join(map(str, args.seeds))}; warmup {args.warmup_epochs} epoch; "
        f"CPU only, torch threads {args.threads}"
    )
    plot(curves, args.batch_sizes, args.base_batch_size, args.out_dir / f"{name}.png", title)

    def cell(sel: list[dict[str, Any]], key: str, fmt: str) -> str:
        values = [r[key] for r in sel]
        med = statistics.median(values)
        return (
            format(med, fmt)
            if len(values) == 1
            else f"{format(med, fmt)} [{format(min(values), fmt)}–{format(max(values), fmt)}]"
        )

    table = []
    for variant, batch, _ in runs:
        sel = [r for r in rows if r["variant"] == variant and r["batch_size"] == batch]
        lr = f"{sel[0]['lr']:.4g}" + (f", warmup {sel[0]['warmup_steps']} steps" if sel[0]["warmup_steps"] else "")
        table.append(
            [
                batch,
                sel[0]["k"],
                variant,
                lr,
                sel[0]["steps"],
                cell(sel, "final_test_accuracy", ".2%"),
                cell(sel, "final_train_loss", ".4f"),
                cell(sel, "train_seconds", ".0f"),
            ]
        )
    fragment = "\n".join(
        [
            f"## Large batch: {', '.join(map(str, args.batch_sizes))} after {args.epochs} epochs"
            + ("" if name == "large_batch" else f" (`{name}`)"),
            "",
            f"Plain SGD, base batch {args.base_batch_size} at LR {args.lr}, {args.epochs} epochs for every run "
            f"(the same number of samples, so batch {max(args.batch_sizes)} takes far fewer steps). "
            f"`linear + warmup`: `warmup_epochs={args.warmup_epochs}`, linear from the unscaled LR. Test accuracy on "
            f"all 10,000 test images after the last epoch; training loss: mean over the last {args.eval_every:,} "
            f"samples (dropout on). Seeds {', '.join(map(str, args.seeds))} ({len(args.seeds)} repeat(s)); cells "
            "with several seeds show the median [min–max].",
            "",
            markdown_table(
                ["batch", "k", "rule", "LR used", "steps", "final test accuracy", "final train loss", "train time (s)"],
                table,
            ),
            "",
            f"![Large-batch curves](benchmarks/{name}.png)",
            "",
            *(f"- {line}" for line in machine_lines(args.threads)),
            f"- Other load at start: {load_before}",
            f"- Other load at end: {load_after}",
            f"- Command: `{command.strip()}` ({total / 60:.1f} min)",
            f"- Data: `docs/benchmarks/{name}.csv` (per run), `docs/benchmarks/{name}_curves.csv` (every "
            f"evaluation), `docs/benchmarks/{name}.png`.",
            "",
        ]
    )
    (args.out_dir / f"{name}.md").write_text(fragment)
    print(fragment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
