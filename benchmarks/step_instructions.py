"""What a measured optimizer step costs, counted in CPU instructions (valgrind's callgrind), not in seconds.

    python benchmarks/step_instructions.py --out docs/noise_scale_instructions.md     # about 45 minutes

On a shared machine whole-step times move by more than the measured step's extra work (docs/noise_scale.md), while the
instructions a process executes do not depend on what else runs. Each variant of ``BatchScalingCallback`` fits the
MNIST CNN of ``examples/mnist.py`` (16 per micro-batch × 4 accumulation, SGD at LR 0; random images of MNIST's shape,
so no file reading) under ``valgrind --tool=callgrind`` twice, for ``--short`` and ``--long`` optimizer steps; the
difference of the two totals over the difference of the steps is the instructions of one step, without the start-up.
The table gives each variant's instructions per step and its extra over ``rule="linear"`` without measuring.

Variants: ``plain`` (``rule="linear"``) and ``plain, again`` (the same fit, counted a second time: the difference of
the two is what the method resolves), ``noise every step`` (``noise_scale=True, noise_every_n_steps=1``: every step
measured, hooks kept) and ``adascale`` (``rule="adascale"``: every step measured, and the gain applied in the step
hooks).

The LR is 0 so that every variant computes the same numbers: the instructions some kernels execute depend on the
values (max pooling, ReLU branch on them), and a rule that moves the weights differently would count that, not its own
work. Instructions are a proxy for time on one thread: they do not count cache misses or memory stalls, which favour
neither variant here (the estimator reads each gradient once, right after autograd wrote it). Each fit runs with
``PYTHONHASHSEED=0`` and Python's garbage collector off: a first run with it on counted ``rule="adascale"`` (which
does all the estimator's work and more) below ``noise every step`` (+0.01 % against +0.84 %). With it off the two
still swap places between runs (+1.49 % and +0.80 % with ``--long 10``, +0.61 % and +1.46 % with 18): the variants'
allocations and kernels differ run to run by more than ``plain, again`` (the same fit counted twice) shows, so read
the variants together, not one against the other.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"rule": "linear"},
    "plain, again": {"rule": "linear"},  # the same fit counted twice: what the method itself resolves
    "noise every step": {"rule": "linear", "noise_scale": True, "noise_every_n_steps": 1},
    "adascale": {"rule": "adascale"},
}
MICRO_BATCH, ACCUMULATION = 16, 4


def fit(variant: str, steps: int) -> None:
    """One fit of ``steps`` optimizer steps (the worker, run under callgrind)."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from mnist import MNISTConvNet

    from lightning_lrbs import BatchScalingCallback

    torch.set_num_threads(1)
    torch.manual_seed(0)
    gc.collect()
    gc.disable()  # a collection lands at a step that depends on every allocation before it: ~1 % of a step at random
    images = torch.randn(MICRO_BATCH * ACCUMULATION * steps, 1, 28, 28)
    labels = torch.randint(0, 10, (len(images),))
    loader = DataLoader(TensorDataset(images, labels), batch_size=MICRO_BATCH)
    callback = BatchScalingCallback(base_batch_size=MICRO_BATCH, log_lr=False, **VARIANTS[variant])
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        accumulate_grad_batches=ACCUMULATION,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(MNISTConvNet(lr=0.0), train_dataloaders=loader)


def instructions(variant: str, steps: int) -> int:
    """The instructions a whole process fitting ``variant`` for ``steps`` steps executes (callgrind's total)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--worker",
            variant,
            str(steps),
        ]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=7200)  # noqa: S603 - our own script
        totals = re.search(r"^totals:\s+(\d+)", out.read_text(), re.MULTILINE)
        if totals is None:
            raise RuntimeError(f"no totals line in {out}")
        return int(totals.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--short", type=int, default=2, help="optimizer steps of the shorter fit")
    parser.add_argument("--long", type=int, default=18, help="optimizer steps of the longer fit")
    parser.add_argument("--out", default=None, help="write the table to this Markdown file")
    args = parser.parse_args()
    if args.worker:
        fit(args.worker[0], int(args.worker[1]))
        return
    start = time.perf_counter()
    per_step: dict[str, float] = {}
    for variant in VARIANTS:
        short, long = instructions(variant, args.short), instructions(variant, args.long)
        per_step[variant] = (long - short) / (args.long - args.short)
        print(f"{variant}: {per_step[variant] / 1e6:.2f} M instructions per step", flush=True)
    plain = per_step["plain"]
    rows = [
        "| variant | instructions per optimizer step (M) | extra over plain | per measured step |",
        "|---|---|---|---|",
    ]
    for variant, count in per_step.items():
        measured_every = VARIANTS[variant].get("noise_every_n_steps", 1 if variant == "adascale" else 0)
        extra = count / plain - 1
        per_measured = f"{100 * extra * measured_every:+.2f} %" if measured_every else "—"
        rows.append(f"| {variant} | {count / 1e6:.2f} | {100 * extra:+.2f} % | {per_measured} |")
    text = "\n".join(
        [
            "`python benchmarks/step_instructions.py"
            + (f" --short {args.short} --long {args.long}" if (args.short, args.long) != (2, 18) else "")
            + f"` ({time.perf_counter() - start:.0f} s), instructions per optimizer step of the MNIST CNN at "
            f"{MICRO_BATCH} × {ACCUMULATION} accumulation: (fit of {args.long} steps − fit of {args.short}) / "
            f"{args.long - args.short}, counted by valgrind's callgrind.",
            "",
            *rows,
        ]
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
