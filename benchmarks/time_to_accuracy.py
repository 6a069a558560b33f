"""Time to accuracy: how much faster the MNIST CNN reaches a test accuracy when the batch grows with a scaled LR.

Plain SGD on all 60,000 training images. The base is batch 8 at LR 0.001. Each larger batch is trained with the same
LR unscaled (no callback), and with ``BatchScalingCallback(base_batch_size=8, rule="linear")`` (LR x k), without and
with a linear warmup. The test accuracy on all 10,000 test images is measured every ``--eval-every`` training samples
(default a quarter epoch); a run stops at the first measurement that reaches ``--target`` or after ``--max-epochs``.
The wall time is training time from ``on_train_start`` to that measurement, evaluation time excluded.

Run (from the repository root)::

    python benchmarks/time_to_accuracy.py
    python benchmarks/time_to_accuracy.py --seeds 0 --max-epochs 2 --train-smoke   # a quick check of the script
"""

from __future__ import annotations

import argparse
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


def variants(batch_sizes: Sequence[int], warmup_epochs: float) -> list[tuple[str, int, dict[str, Any] | None]]:
    """(name, batch size, callback arguments or ``None`` for no callback), the base first."""
    out: list[tuple[str, int, dict[str, Any] | None]] = [("base", 0, None)]
    for b in batch_sizes:
        out += [
            ("unscaled", b, None),
            ("linear", b, {"rule": "linear"}),
            ("linear + warmup", b, {"rule": "linear", "warmup_epochs": warmup_epochs}),
        ]
    return out


def _fmt_range(values: Sequence[float], fmt: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} [{format(min(values), fmt)}–{format(max(values), fmt)}]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every variant for every seed; write the CSVs and the markdown fragment.

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
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--target", type=float, default=0.97, help="test accuracy to reach")
    p.add_argument("--max-epochs", type=int, default=8, help="stop a run that has not reached the target by then")
    p.add_argument("--eval-every", type=int, default=15000, help="evaluate every this many training samples")
    p.add_argument("--warmup-epochs", type=float, default=0.5, help="warmup length of the warmup variants")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--train-smoke", action="store_true", help="train on 6,000 images (script check only)")
    args = p.parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    command = command_line("benchmarks/time_to_accuracy.py", argv)
    load_before = other_processes()
    _, _, test_x, test_y = load_mnist(args.data_dir)
    n_train = 6000 if args.train_smoke else 60000

    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in args.seeds:
        for name, batch, cb_args in variants(args.batch_sizes, args.warmup_epochs):
            batch = batch or args.base_batch_size
            callbacks = (
                [] if cb_args is None else [BatchScalingCallback(base_batch_size=args.base_batch_size, **cb_args)]
            )
            tracker = TestAccuracyTracker(test_x, test_y, n_train, args.eval_every, target=args.target)
            trainer = fit_tracked(
                batch_size=batch,
                lr=args.lr,
                seed=seed,
                max_epochs=args.max_epochs,
                callbacks=callbacks,
                tracker=tracker,
                data_dir=args.data_dir,
                train_subset=6000 if args.train_smoke else None,
            )
            lr_used = float(trainer.optimizers[0].param_groups[0]["lr"])
            warmup_steps = callbacks[0].state_dict()["warmup_steps"] if callbacks else 0
            reached = tracker.reached
            last = tracker.points[-1] if tracker.points else {"epochs": 0.0, "test_accuracy": float("nan")}
            row = {
                "seed": seed,
                "variant": name,
                "batch_size": batch,
                "lr": lr_used,
                "warmup_steps": warmup_steps or 0,
                "reached": reached is not None,
                "epochs_to_target": reached["epochs"] if reached else "",
                "seconds_to_target": reached["train_seconds"] if reached else "",
                "steps_to_target": reached["steps"] if reached else "",
                "epochs_trained": last["epochs"],
                "train_seconds": tracker.train_seconds,
                "best_accuracy": max((pt["test_accuracy"] for pt in tracker.points), default=float("nan")),
                "samples_per_second": tracker.samples / tracker.train_seconds if tracker.train_seconds else 0.0,
            }
            rows.append(row)
            curves += [{"seed": seed, "variant": name, "batch_size": batch, **pt} for pt in tracker.points]
            status = (
                f"reached {args.target:.0%} at epoch {row['epochs_to_target']:.2f} "
                f"after {row['seconds_to_target']:.1f} s"
                if reached
                else f"not reached in {args.max_epochs} epochs (best {row['best_accuracy']:.4f})"
            )
            print(f"seed {seed} {name:16s} batch {batch:4d} lr {lr_used:.4g}: {status}", flush=True)
    total = time.perf_counter() - started
    load_after = other_processes()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(args.out_dir / "time_to_accuracy.csv", rows)
    write_csv(args.out_dir / "time_to_accuracy_curves.csv", curves)

    def pick(variant: str, batch: int) -> list[dict[str, Any]]:
        return [r for r in rows if r["variant"] == variant and r["batch_size"] == batch]

    base_rows = pick("base", args.base_batch_size)
    base_secs = {r["seed"]: r["seconds_to_target"] for r in base_rows if r["reached"]}
    base_epochs = {r["seed"]: r["epochs_to_target"] for r in base_rows if r["reached"]}
    table = []
    for name, batch, _ in variants(args.batch_sizes, args.warmup_epochs):
        batch = batch or args.base_batch_size
        group = pick(name, batch)
        if not group:
            continue
        hit = [r for r in group if r["reached"]]
        lr = f"{group[0]['lr']:.4g}" + (
            f", warmup {group[0]['warmup_steps']} steps" if group[0]["warmup_steps"] else ""
        )
        if hit:
            epochs = _fmt_range([r["epochs_to_target"] for r in hit], ".2f")
            secs = _fmt_range([r["seconds_to_target"] for r in hit], ".0f")
            both = [r for r in hit if r["seed"] in base_secs]
            t_ratio = _fmt_range([r["seconds_to_target"] / base_secs[r["seed"]] for r in both], ".2f") if both else "–"
            e_ratio = _fmt_range([r["epochs_to_target"] / base_epochs[r["seed"]] for r in both], ".2f") if both else "–"
            seen = f"{len(hit)}/{len(group)}"
        else:
            best = max(r["best_accuracy"] for r in group)
            epochs = f"not reached in {args.max_epochs} (best {best:.2%})"
            secs = f"> {min(r['train_seconds'] for r in group):.0f}"
            t_ratio = e_ratio = "–"
            seen = f"0/{len(group)}"
        speed = _fmt_range([r["samples_per_second"] for r in group], ".0f")
        table.append([name, batch, lr, seen, epochs, secs, e_ratio, t_ratio, speed])
    headers = [
        "run",
        "batch",
        "LR used",
        "seeds reaching",
        f"epochs to {args.target:.0%}",
        "train wall time to target (s)",
        "epochs / base",
        "wall time / base",
        "training samples/s",
    ]
    fragment = "\n".join(
        [
            f"## Time to {args.target:.0%} test accuracy",
            "",
            f"Plain SGD, base batch {args.base_batch_size} at LR {args.lr}. Test accuracy on all 10,000 test images "
            f"every {args.eval_every:,} training samples ({args.eval_every / n_train:g} epoch), evaluation time "
            f"excluded from the wall time; a run stops at the first measurement at or above {args.target:.0%}, or "
            f"after {args.max_epochs} epochs. Warmup variants: `warmup_epochs={args.warmup_epochs}` (linear from the "
            f"unscaled LR). Seeds {', '.join(map(str, args.seeds))} ({len(args.seeds)} repeats, same seed → same "
            "initial weights and data order for every batch size); cells show the median [min–max] over the seeds "
            "that reached the target; ratios are per seed, to the base run of the same seed. Training samples/s: "
            "samples over training wall time of the whole run (all seeds).",
            "",
            markdown_table(headers, table),
            "",
            *(f"- {line}" for line in machine_lines(args.threads)),
            f"- Other load at start: {load_before}",
            f"- Other load at end: {load_after}",
            f"- Command: `{command.strip()}` ({total / 60:.1f} min)",
            "- Data: `docs/benchmarks/time_to_accuracy.csv` (per run), `docs/benchmarks/time_to_accuracy_curves.csv` "
            "(every evaluation).",
            "",
        ]
    )
    (args.out_dir / "time_to_accuracy.md").write_text(fragment)
    print(fragment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
