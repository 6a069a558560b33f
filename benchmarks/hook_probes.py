"""Where a measured step's wall time goes: per-parameter hooks on the MNIST CNN step, in plain PyTorch.

    python benchmarks/hook_probes.py --out docs/noise_scale_hook_probes.md     # about 2 minutes

The CNN of ``examples/mnist.py`` (4 parameter tensors), 4 micro-batches of 16 per step, SGD at LR 0, one torch
thread, glibc's heap kept (``lrbs_bench.keep_heap``). Each round takes one step of each kind in a rotating order; the
table gives each kind's extra over the same round's plain step (median and quartiles of the pairs). Kinds: ``plain``
(no hooks), ``noop`` (a hook per parameter that returns at once), ``discard`` (it computes the gradient's norm and
drops it), ``buffer`` (it writes the norm into a buffer allocated once, as ``GradientNoiseScale`` does), ``kept``
(it keeps the norm as a new tensor until the step ends, as the estimator did before); the three norm kinds sum the
norms once per step. The second table times, inside the hooks, a tiny allocation, the norm, and the same norm again,
per parameter (backward reaches them in reverse order).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from lrbs_bench import MNISTConvNet, keep_heap, machine_lines, quartiles

MICRO_BATCH, ACCUMULATION = 16, 4
KINDS = ("plain", "noop", "discard", "buffer", "kept")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1000, help="rounds of one step of each kind")
    parser.add_argument("--out", default=None, help="write the tables to this Markdown file")
    args = parser.parse_args(argv)
    heap = keep_heap()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MNISTConvNet(lr=0.0)
    params = list(model.parameters())
    x, y = torch.randn(MICRO_BATCH, 1, 28, 28), torch.randint(0, 10, (MICRO_BATCH,))
    optimizer = torch.optim.SGD(params, lr=0.0)
    buffer = torch.zeros(len(params) * ACCUMULATION)
    slots, kept, used = list(buffer.unbind()), [], [0]
    norm = torch.linalg.vector_norm

    def discard(grad: torch.Tensor) -> None:
        norm(grad)

    def write(grad: torch.Tensor) -> None:
        norm(grad, out=slots[used[0]])
        used[0] += 1

    hooks: dict[str, Callable[[torch.Tensor], None]] = {
        "noop": lambda grad: None,
        "discard": discard,
        "buffer": write,
        "kept": lambda grad: kept.append(norm(grad)),
    }

    def step(kind: str) -> float:
        start = time.perf_counter()
        handles = [p.register_hook(hooks[kind]) for p in params] if kind in hooks else []
        for _ in range(ACCUMULATION):
            (F.cross_entropy(model(x), y) / ACCUMULATION).backward()
        if kind == "buffer":
            torch.dot(buffer, buffer).item()
            used[0] = 0
        elif kind == "kept":
            torch.stack(kept).square().sum().item()
            kept.clear()
        for handle in handles:
            handle.remove()
        optimizer.step()
        optimizer.zero_grad()
        return (time.perf_counter() - start) * 1e3

    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for round_ in range(args.rounds):
        for kind in KINDS[round_ % len(KINDS) :] + KINDS[: round_ % len(KINDS)]:
            times[kind].append(step(kind))
    plain = statistics.median(times["plain"])
    lines = [
        f"`python benchmarks/hook_probes.py`, {args.rounds} rounds; median plain step {plain:.2f} ms",
        "",
        "| hooks | extra over the same round's plain step, median (ms) | % of the median plain step | quartiles (ms) |",
        "|---|---|---|---|",
    ]
    for kind in KINDS[1:]:
        q1, med, q3 = quartiles([a - b for a, b in zip(times[kind], times["plain"])])
        lines.append(f"| {kind} | {med:+.3f} | {100 * med / plain:+.2f} % | {q1:+.3f}, {q3:+.3f} |")
    lines += ["", *inside_hooks(model, params, x, y), "", heap, *machine_lines(1)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def inside_hooks(model: torch.nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Median µs, inside each parameter's hook over 300 backward passes, of ``torch.zeros(1)``, the gradient's norm,
    and the same norm again."""
    found: dict[int, list[tuple[float, float, float]]] = {i: [] for i in range(len(params))}

    def probe(i: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            t0 = time.perf_counter()
            torch.zeros(1)
            t1 = time.perf_counter()
            torch.linalg.vector_norm(grad)
            t2 = time.perf_counter()
            torch.linalg.vector_norm(grad)
            found[i].append((t1 - t0, t2 - t1, time.perf_counter() - t2))

        return hook

    handles = [p.register_hook(probe(i)) for i, p in enumerate(params)]
    for _ in range(300):
        F.cross_entropy(model(x), y).backward()
    for handle in handles:
        handle.remove()
    lines = ["| parameter (backward reaches it) | `torch.zeros(1)` (µs) | its norm (µs) | the norm again (µs) |"]
    lines.append("|---|---|---|---|")
    for i, p in enumerate(params):
        medians = [1e6 * statistics.median(r[k] for r in found[i]) for k in range(3)]
        order = len(params) - i
        lines.append(f"| {tuple(p.shape)} ({order}.) | " + " | ".join(f"{m:.1f}" for m in medians) + " |")
    return lines


if __name__ == "__main__":
    main()
