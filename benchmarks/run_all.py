"""Run every benchmark, each in a fresh process, and write ``docs/benchmarks.md`` from their results.

1. ``overhead.py``: per-step wall time with and without ``BatchScalingCallback``, and its hooks alone.
2. ``time_to_accuracy.py``: wall time and epochs to 97% test accuracy, base batch 8 against batches 64 and 256.

Large batches are the subject of the batch-size study of ``docs/frontier.md`` (``benchmarks/frontier.py``,
``make frontier``): each rule against the best fixed LR found by search. The page gets a pointer to it in place of the
earlier ``large_batch.py`` section (that script still runs alone; its last results stay in ``docs/benchmarks/``).

Each writes its CSVs and a markdown fragment into ``--out-dir``; this script joins the fragments
under a header, after ``notes.md`` from the same folder: the hand-written reading of the published run, which lives
there so that regenerating the page keeps it (edit it by hand when the numbers change).

Run (from the repository root; ``make bench`` does this with the installed wheel)::

    python benchmarks/run_all.py --data-dir ../shared/data     # about 30 minutes on 2 CPU cores
    python benchmarks/run_all.py --quick                       # tiny settings into a temporary folder (~3 min)
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lrbs_bench import OUT_DIR, ROOT, command_line, default_data_dir

HERE = Path(__file__).resolve().parent

#: Settings of ``--quick``: enough to run every code path, nothing worth publishing.
QUICK = {
    "overhead.py": ["--rounds", "1", "--scale", "0.05", "--warmup", "20", "--number", "50"],
    "time_to_accuracy.py": ["--seeds", "0", "--max-epochs", "1", "--train-smoke", "--eval-every", "3000"],
}
FRAGMENTS = ("overhead.md", "time_to_accuracy.md")
#: The last section: large batches moved to the batch-size study (issue 14).
LARGE_BATCH_POINTER = """## Large batch: see the batch-size study

Where each scaling rule breaks is measured in [the batch-size study](frontier.md) (`make frontier`): steps to a target
training loss at batches 32 to 8192 for `linear`, `linear` + warmup, `sqrt` and `adascale`, against the best fixed LR
found by a grid search at every batch, from a base LR tuned at batch 32. It replaces the large-batch section that was
here: that run scaled LR 0.001 (far below this CNN's best LR), so even ×128 stayed small and could not show where
the rules break. Its script (`benchmarks/large_batch.py`) still runs alone; its last results stay in
`docs/benchmarks/large_batch.md`.
"""


def header(command: str, minutes: float | None) -> str:
    """The top of ``docs/benchmarks.md``."""
    return "\n".join(
        [
            "# Benchmarks",
            "",
            "What `BatchScalingCallback` costs per training step, and what scaling the learning rate with the batch "
            "buys, measured on the MNIST CNN of `examples/mnist.py` (plain SGD) on real MNIST. Every section states "
            "its machine, repeats, spread and exact command; the raw numbers are in `docs/benchmarks/*.csv`.",
            "",
            "Reproduce everything with `make bench` (or `python benchmarks/run_all.py`"
            + (f"; `{command}` took {minutes:.0f} min" if minutes is not None else "")
            + "). "
            "Each part also runs alone: `python benchmarks/overhead.py`, `python benchmarks/time_to_accuracy.py` "
            "(`--help` for the settings), followed by "
            "`python benchmarks/run_all.py --assemble-only` to rebuild this page.",
            "",
        ]
    )


def render(out_dir: Path, doc: Path, command: str, minutes: float | None) -> str:
    """The page: the header, then ``notes.md`` (the hand-written summary of the published run, kept in
    ``docs/benchmarks/notes.md`` so that regenerating the page never loses it), then the fragments. Links into
    ``benchmarks/`` are made relative to the folder of ``doc``."""
    parts = [header(command, minutes)]
    target = Path(os.path.relpath(out_dir.resolve(), doc.resolve().parent)).as_posix()
    for name in ("notes.md", *FRAGMENTS):
        fragment = out_dir / name
        if fragment.is_file():
            text = fragment.read_text()
            if target != "benchmarks":
                text = text.replace("](benchmarks/", f"]({target}/")
            parts.append(text)
    parts.append(LARGE_BATCH_POINTER)
    return "\n".join(parts)


def assemble(out_dir: Path, doc: Path, command: str, minutes: float | None) -> None:
    """Write :func:`render`'s page to ``doc``."""
    text = render(out_dir, doc, command, minutes)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the two benchmarks in order, then assemble the page.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or that of the first benchmark that failed.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out-dir", type=Path, default=None, help="CSVs, fragments, PNG (default docs/benchmarks)")
    p.add_argument("--doc", type=Path, default=None, help="the page to write (default docs/benchmarks.md)")
    p.add_argument("--quick", action="store_true", help="tiny settings, into a temporary folder unless given")
    p.add_argument("--assemble-only", action="store_true", help="only rebuild the page from existing fragments")
    args = p.parse_args(argv)
    if args.out_dir is None:
        args.out_dir = Path(tempfile.mkdtemp(prefix="lrbs-bench-")) if args.quick else OUT_DIR
    if args.doc is None:
        args.doc = args.out_dir / "benchmarks.md" if args.quick else ROOT / "docs" / "benchmarks.md"
    command = command_line("benchmarks/run_all.py", argv)
    started = time.perf_counter()
    if not args.assemble_only:
        jobs = [(script, QUICK[script] if args.quick else []) for script in QUICK]
        for script, extra in jobs:
            cmd = [sys.executable, str(HERE / script), "--data-dir", str(args.data_dir), *extra]
            cmd += [] if args.out_dir == OUT_DIR else ["--out-dir", str(args.out_dir)]
            print(f"\n=== {shlex.join(cmd)}", flush=True)
            code = subprocess.call(cmd)  # noqa: S603 - our own scripts, run with this interpreter
            if code:
                print(f"{script} failed with exit status {code}", file=sys.stderr)
                return code
    minutes = None if args.assemble_only else (time.perf_counter() - started) / 60
    assemble(args.out_dir, args.doc, command.strip(), minutes)
    print(f"\nwrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
