"""Gradient noise scale: what measuring it costs, and how it evolves over a training run (docs/noise_scale.md).

``overhead``: the MNIST CNN of ``examples/mnist.py`` at 16 per step × 4 accumulation (effective batch 64, the
example's), on real MNIST. Four variants of ``BatchScalingCallback`` are fitted interleaved, in a shuffled order in
each round: ``noise_scale=False``, ``noise_every_n_steps=1``, the default interval and ``rule="adascale"`` (every
step measured, and the gain applied). A step's time is the wall time between the starts of consecutive optimizer
steps (4 batches each: data, forward, backward, optimizer step, hooks, logging every 50 steps), averaged over
``--steps`` steps after ``--warmup``; each ratio is taken to the same round's ``noise_scale=False`` fit. Whole-step
ratios on a shared machine cannot resolve 1 %, so the estimator's own work is also timed alone (``timeit``, see
``estimator_cost_ms``) against the median step time; in one fit measuring every 2nd step, each measured step against
the next unmeasured one; and in plain PyTorch, 600 rounds of one unmeasured, one measured and one AdaScale CNN step
each, paired within the round (``raw_step_ms``). Unmeasured steps have no hooks. ``--heap kept`` (the default) first
keeps glibc's malloc from returning memory to the system (``lrbs_bench.keep_heap``): with its defaults the same step
swings between few and thousands of page faults with the order of allocations, which a variant's few extra tensors
change; ``--heap default`` measures with the allocator as it comes.

``curve``: ``lrbs/noise_scale`` and ``train_loss`` as logged by a CSVLogger (``log_every_n_steps=10``) over training
runs at the default interval and smoothing: the CNN at the example's settings (LR 0.01 at base batch 8, linear rule,
1 epoch) at 16 × 4 accumulation, and an MLP 784-128-10 with SGD at LR 0.1, batch 16 × 4, 4 epochs.

Run (from the repository root)::

    python benchmarks/noise_scale.py overhead
    python benchmarks/noise_scale.py overhead --heap default --out-dir docs/noise_scale_heap_default
    python benchmarks/noise_scale.py curve
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lrbs_bench import (
    ROOT,
    MNISTConvNet,
    MNISTDataModule,
    default_data_dir,
    keep_heap,
    machine_lines,
    quartiles,
    quiet,
    write_csv,
)
from overhead import MemoryLogger, StepClock
from torch import nn

from lightning_lrbs import BatchScalingCallback

OUT = ROOT / "docs"
ACCUMULATION = 4
MICRO_BATCH = 16
DEFAULT_EVERY = BatchScalingCallback().noise_every_n_steps
VARIANTS: dict[str, dict[str, Any]] = {
    "noise_scale=False": {},
    "every step": {"noise_scale": True, "noise_every_n_steps": 1},
    f"every {DEFAULT_EVERY} steps (default)": {"noise_scale": True},
    "rule=adascale": {"rule": "adascale"},
}


def _trainer(callbacks: list[Callback], batches: int | float, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "limit_train_batches": batches,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "accumulate_grad_batches": ACCUMULATION,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": callbacks,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def timed_fit(variant: str, warmup: int, steps: int, data_dir: Path, seed: int) -> tuple[float, pl.Trainer, Any]:
    """Mean optimizer-step time (ms) over ``steps`` steps after ``warmup``; the trainer and callback for probing."""
    pl.seed_everything(seed, verbose=False)
    datamodule = MNISTDataModule(data_dir, batch_size=MICRO_BATCH, seed=seed, download=False)
    model = MNISTConvNet(lr=0.01)
    clock = StepClock()
    callback = BatchScalingCallback(base_batch_size=8, **VARIANTS[variant])
    batches = (warmup + steps + 1) * ACCUMULATION
    trainer = _trainer([clock, callback], batches, logger=MemoryLogger(), log_every_n_steps=50)
    trainer.fit(model, datamodule=datamodule)
    starts = clock.times[warmup * ACCUMULATION :: ACCUMULATION][: steps + 1]
    return (starts[-1] - starts[0]) / steps * 1e3, trainer, callback


def estimator_cost_ms(trainer: pl.Trainer) -> float:
    """The estimator's work per measured step, in ms, timed apart from the model's own work.

    A backward of the CNN varies between runs by far more than this work, so it is timed in two parts: (1) on a tiny
    model with as many parameters (one weight each), a measured step of 4 micro-batches (hooks registered by
    ``micro_batch``, called by autograd, ``step`` reading ``.grad`` and removing them) minus the same 4 backward
    passes unmeasured; (2) the squared norms of the CNN's real gradients (once per micro-batch and once for
    ``.grad``), which the tiny model's one-element gradients leave out.
    """
    from lightning_lrbs.noise import GradientNoiseScale

    model = trainer.lightning_module
    params = [p for p in model.parameters() if p.requires_grad]
    tiny = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in params])
    z = torch.ones(1, 1)
    gns = GradientNoiseScale(tiny.parameters())

    def plain() -> None:
        for _ in range(ACCUMULATION):
            tiny(z).sum().backward()

    def measured() -> None:
        for _ in range(ACCUMULATION):
            gns.micro_batch(1, loss_scale=1 / ACCUMULATION)
            tiny(z).sum().backward()
        gns.step()

    grads = [torch.randn_like(p).reshape(-1) for p in params]

    def norms() -> None:
        for _ in range(ACCUMULATION + 1):
            torch.stack([torch.dot(g, g) for g in grads]).sum()

    def per_call(fn: Any, number: int = 300) -> float:
        return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e3

    plain(), measured()  # warm-up
    without, with_gns = [], []
    for _ in range(5):  # interleaved; the fastest of each
        without.append(per_call(plain))
        with_gns.append(per_call(measured))
    return min(with_gns) - min(without) + per_call(norms)


def paired_fit(steps: int, data_dir: Path, seed: int, measure: bool = True) -> list[float]:
    """One fit measuring every 2nd step: per pair (measured step, next unmeasured step), their time difference in ms.

    Neighbouring steps share the machine's load, so the differences resolve far less than whole fits do.
    ``measure=False`` is the control: the same pairs without any measurement."""
    pl.seed_everything(seed, verbose=False)
    datamodule = MNISTDataModule(data_dir, batch_size=MICRO_BATCH, seed=seed, download=False)
    clock = StepClock()
    callback = BatchScalingCallback(base_batch_size=8, noise_scale=measure, noise_every_n_steps=2)
    trainer = _trainer([clock, callback], (steps + 11) * ACCUMULATION, logger=MemoryLogger(), log_every_n_steps=10**6)
    trainer.fit(MNISTConvNet(lr=0.01), datamodule=datamodule)
    starts = clock.times[::ACCUMULATION]
    durations = [(b - a) * 1e3 for a, b in zip(starts, starts[1:])]  # durations[t]: optimizer step t
    return [durations[t] - durations[t + 1] for t in range(10, min(len(durations) - 1, steps + 10), 2)]


def raw_step_ms(rounds: int = 600) -> dict[str, list[float]]:
    """Optimizer steps of the CNN in plain PyTorch, in ms, for each of ``plain`` (no measurement), ``measured`` (the
    noise estimator's hooks, registered and removed as at any interval but 1, and ``step``) and ``adascale`` (the
    same, plus :class:`AdaScaleLR` setting and restoring the LR in the optimizer's step hooks): 4 micro-batches of 16,
    SGD, one step of each kind per round, the order rotated from round to round (the first step after another kind
    is not always the same kind), ``rounds`` times. LR 0, so every step computes the same numbers. Each kind's list
    is in round order, so ``measured[i] - plain[i]`` pairs steps taken within a few tens of ms of each other;
    ``<kind>_faults`` are the page faults (minor) of each step."""
    from lightning_lrbs.adascale import AdaScaleLR
    from lightning_lrbs.noise import GradientNoiseScale

    model = MNISTConvNet(lr=0.01)
    x, y = torch.randn(MICRO_BATCH, 1, 28, 28), torch.randint(0, 10, (MICRO_BATCH,))
    plain_sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    adascale_sgd = torch.optim.SGD(model.parameters(), lr=0.0)  # the same parameters; only this one has the gain
    gns = GradientNoiseScale(model.parameters())
    AdaScaleLR(adascale_sgd, lambda: (gns.grad_sq_norm, gns.grad_var), MICRO_BATCH, MICRO_BATCH * ACCUMULATION)

    def step(kind: str) -> float:
        measure = kind != "plain"
        optimizer = adascale_sgd if kind == "adascale" else plain_sgd
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(ACCUMULATION):
            if measure:
                gns.micro_batch(MICRO_BATCH, loss_scale=1 / ACCUMULATION)
            (F.cross_entropy(model(x), y) / ACCUMULATION).backward()
        if measure:
            gns.step()
        optimizer.step()
        optimizer.zero_grad()
        elapsed = (time.perf_counter() - start) * 1e3
        times[f"{kind}_faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
        return elapsed

    kinds = ["plain", "measured", "adascale"]
    times: dict[str, list[float]] = {name: [] for kind in kinds for name in (kind, f"{kind}_faults")}
    for round_ in range(rounds):
        for kind in kinds[round_ % 3 :] + kinds[: round_ % 3]:
            times[kind].append(step(kind))
    return times


def overhead(args: argparse.Namespace) -> None:
    heap = (
        keep_heap()
        if args.heap == "kept"
        else "heap: glibc's malloc at its defaults (it trims and moves its mmap threshold)"
    )
    rows: list[dict[str, Any]] = []
    rng = random.Random(args.seed)  # noqa: S311 - a shuffled order, not a secret
    probes: list[float] = []
    start = time.perf_counter()
    for round_ in range(args.rounds):
        order = list(VARIANTS)
        rng.shuffle(order)
        times: dict[str, float] = {}
        for variant in order:
            ms, trainer, callback = timed_fit(variant, args.warmup, args.steps, args.data_dir, args.seed + round_)
            times[variant] = ms
            if variant == "noise_scale=False":
                probes.append(estimator_cost_ms(trainer))
        base = times["noise_scale=False"]
        for variant in VARIANTS:
            rows.append(
                {
                    "round": round_,
                    "variant": variant,
                    "step_ms": round(times[variant], 3),
                    "ratio": round(times[variant] / base, 4),
                }
            )
        print(f"round {round_}: " + ", ".join(f"{v} {times[v]:.1f} ms" for v in VARIANTS), flush=True)
    diffs = paired_fit(args.paired_steps, args.data_dir, args.seed)
    control = paired_fit(args.paired_steps, args.data_dir, args.seed, measure=False)
    raw = raw_step_ms(args.raw_rounds)
    wall = time.perf_counter() - start
    write_csv(args.out_dir / "noise_scale_overhead.csv", rows)
    write_csv(
        args.out_dir / "noise_scale_overhead_raw.csv",
        [
            {"round": i, **{k if k.endswith("_faults") else f"{k}_ms": round(v[i], 4) for k, v in raw.items()}}
            for i in range(args.raw_rounds)
        ],
    )
    write_csv(
        args.out_dir / "noise_scale_overhead_control.csv",
        [{"pair": i, "even_minus_odd_ms": round(d, 4)} for i, d in enumerate(control)],
    )
    write_csv(
        args.out_dir / "noise_scale_overhead_paired.csv",
        [{"pair": i, "measured_minus_next_ms": round(d, 4)} for i, d in enumerate(diffs)],
    )
    base_ms = statistics.median(r["step_ms"] for r in rows if r["variant"] == "noise_scale=False")
    armed = statistics.median(probes)
    lines = [
        f"wall time {wall:.0f} s; {args.rounds} rounds × {len(VARIANTS)} variants of {args.steps} timed steps, then "
        f"a paired fit and its control of {args.paired_steps} steps each",
        "",
    ]
    lines.append("| variant | step time, median of rounds (ms) | ratio to noise_scale=False: median [min, max] |")
    lines.append("|---|---|---|")
    for variant in VARIANTS:
        ratios = [r["ratio"] for r in rows if r["variant"] == variant]
        ms = statistics.median(r["step_ms"] for r in rows if r["variant"] == variant)
        lines.append(
            f"| {variant} | {ms:.1f} | {statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}] |"
        )
    q1, med, q3 = quartiles(diffs)
    lines += [
        "",
        f"paired within one fit (`noise_every_n_steps=2`, {len(diffs)} pairs): measured step − next unmeasured step "
        f"= {med:.3f} ms median (quartiles {q1:.3f}, {q3:.3f}) = {100 * med / base_ms:.2f} % of a step; at the "
        f"default interval {DEFAULT_EVERY}: {100 * med / DEFAULT_EVERY / base_ms:.3f} %; control fit without "
        f"measuring, even − odd steps: {quartiles(control)[1]:.3f} ms median (quartiles {quartiles(control)[0]:.3f}, "
        f"{quartiles(control)[2]:.3f})",
        raw_line(raw),
        f"estimator work alone (median over {len(probes)} probes, min {min(probes):.3f}, max {max(probes):.3f}): "
        f"{armed:.3f} ms per measured step = {100 * armed / base_ms:.2f} % of a {base_ms:.1f} ms step; at the default "
        f"interval {DEFAULT_EVERY}: {100 * armed / DEFAULT_EVERY / base_ms:.3f} % of a step (unmeasured steps have no "
        "hooks)",
        heap,
        *machine_lines(torch.get_num_threads()),
    ]
    (args.out_dir / "noise_scale_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def raw_line(raw: dict[str, list[float]]) -> str:
    """The plain-PyTorch steps: each kind's extra over the plain step of the same round (median and quartiles of the
    paired differences, and as % of the median plain step), and the fastest of each kind."""
    plain = statistics.median(raw["plain"])
    parts = []
    for kind in ("measured", "adascale"):
        q1, med, q3 = quartiles([a - b for a, b in zip(raw[kind], raw["plain"])])
        parts.append(
            f"{kind} {med:+.3f} ms = {100 * med / plain:+.2f} % (quartiles {q1:+.3f}, {q3:+.3f}; fastest "
            f"{min(raw[kind]):.2f} against {min(raw['plain']):.2f} ms)"
        )
    faults = ", ".join(
        f"{kind} {statistics.median(raw[f'{kind}_faults']):.0f}" for kind in ("plain", "measured", "adascale")
    )
    return (
        f"plain PyTorch, the same CNN step, plain / measured / measured with the AdaScale gain, one of each per "
        f"round in a rotating order, {len(raw['plain'])} rounds; the extra over the same round's plain step, median "
        f"of the pairs, against the median plain step of {plain:.2f} ms (the bare step without Lightning): "
        + "; ".join(parts)
        + f"; page faults per step, median: {faults}"
    )


class MLP(pl.LightningModule):
    """784-128-10, ReLU, SGD (the prototype of docs' SCALING notes)."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class BoundRecorder(Callback):
    """The estimator's 2-sigma lower bound and whether the estimate is resolved, at every batch start."""

    def __init__(self, callback: BatchScalingCallback) -> None:
        self.callback = callback
        self.rows: dict[int, dict[str, float]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        noise = self.callback.noise
        if noise is not None and noise.measurements:  # keyed by the step the callback logs under
            bound = noise.noise_scale_lower_bound
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            self.rows[step] = {"lower_bound": float(bound or 0.0), "resolved": int(noise.resolved)}


def curve_run(name: str, make_model: Any, epochs: int, base: int, data_dir: Path, seed: int) -> list[dict[str, Any]]:
    pl.seed_everything(seed, verbose=False)
    model = make_model()
    datamodule = MNISTDataModule(data_dir, batch_size=MICRO_BATCH, seed=seed, download=False)
    callback = BatchScalingCallback(base_batch_size=base, noise_scale=True)
    with tempfile.TemporaryDirectory() as tmp:
        logger = CSVLogger(tmp, name=name)
        start = time.perf_counter()
        bounds = BoundRecorder(callback)
        trainer = _trainer([callback, bounds], 1.0, logger=logger, log_every_n_steps=10, max_epochs=epochs)
        trainer.fit(model, datamodule=datamodule)
        wall = time.perf_counter() - start
        with open(Path(logger.log_dir) / "metrics.csv") as f:
            logged = list(csv.DictReader(f))
    by_step: dict[int, dict[str, float]] = {}  # Lightning's metrics and the callback's are logged in separate rows
    for row in logged:
        by_step.setdefault(int(row["step"]), {}).update({k: float(v) for k, v in row.items() if v and k != "step"})
    keys = {"train_loss": "train_loss", "noise_scale": "lrbs/noise_scale", "grad_sq_norm": "lrbs/grad_sq_norm"}
    keys["grad_var"] = "lrbs/grad_var"
    rows: list[dict[str, Any]] = [
        {"model": name, "step": step, **{k: values[v] for k, v in keys.items()}, **bounds.rows.get(step, {})}
        for step, values in sorted(by_step.items())
        if all(v in values for v in keys.values())
    ]
    print(f"{name}: {wall:.0f} s; {callback.summary}", flush=True)
    rows[0]["wall_s"] = round(wall)
    return rows


def curve(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [
        curve_run("cnn", lambda: MNISTConvNet(lr=0.01), 1, 8, args.data_dir, args.seed),
        curve_run("mlp", lambda: MLP(lr=0.1), args.mlp_epochs, 64, args.data_dir, args.seed),
    ]
    write_csv(args.out_dir / "noise_scale_curve.csv", [r for run in runs for r in run])
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex="col")
    lines = []
    for col, run in enumerate(runs):
        steps = [r["step"] for r in run]
        axes[0, col].plot(steps, [r["train_loss"] for r in run], lw=0.8)
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel("train_loss")
        axes[0, col].set_title(f"{run[0]['model'].upper()}: batch {MICRO_BATCH} × {ACCUMULATION} accumulation")
        axes[1, col].plot(steps, [r["noise_scale"] for r in run], lw=0.8, color="C1", label="lrbs/noise_scale")
        axes[1, col].plot(
            steps,
            [r.get("lower_bound", float("nan")) for r in run],
            lw=0.8,
            color="C2",
            ls="--",
            label="2-sigma lower bound",
        )
        axes[1, col].legend(fontsize=8)
        axes[1, col].set_yscale("log")
        axes[1, col].set_ylabel("lrbs/noise_scale (samples)")
        axes[1, col].set_xlabel("optimizer step")
        axes[1, col].axhline(MICRO_BATCH * ACCUMULATION, color="grey", ls=":", lw=0.8)
        first = next(r for r in run if r["step"] >= 100)
        last = run[-1]
        resolved = [r for r in run if r.get("resolved")]
        last_resolved = resolved[-1] if resolved else first
        lines.append(
            f"{run[0]['model']}: noise scale {first['noise_scale']:.0f} at step {first['step']} → "
            f"{last['noise_scale']:.0f} at step {last['step']} (×{last['noise_scale'] / first['noise_scale']:.1f}; "
            f"2-sigma lower bound {last.get('lower_bound', float('nan')):.0f}; last resolved value "
            f"{last_resolved['noise_scale']:.0f} at step {last_resolved['step']}, "
            f"{sum(1 for r in run if r.get('resolved'))}/{len(run)} logged points resolved); train_loss "
            f"{first['train_loss']:.3f} → {last['train_loss']:.3f}; wall {run[0]['wall_s']} s"
        )
    fig.tight_layout()
    fig.savefig(args.out_dir / "noise_scale.png", dpi=110)
    (args.out_dir / "noise_scale_curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["overhead", "curve"])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps per fit")
    parser.add_argument("--warmup", type=int, default=10, help="optimizer steps before timing")
    parser.add_argument("--paired-steps", type=int, default=300, help="optimizer steps of the paired fit")
    parser.add_argument("--mlp-epochs", type=int, default=4)
    parser.add_argument("--raw-rounds", type=int, default=600, help="rounds of the plain-PyTorch steps")
    parser.add_argument(
        "--heap",
        choices=["kept", "default"],
        default="kept",
        help="kept (default): keep glibc's malloc from returning memory to the system (lrbs_bench.keep_heap), so "
        "that page faults do not swing the step times; default: the allocator as it comes",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT, help="where the pages and CSVs go (default docs/)")
    args = parser.parse_args(argv)
    quiet()
    torch.set_num_threads(1)
    overhead(args) if args.what == "overhead" else curve(args)


if __name__ == "__main__":
    main()
