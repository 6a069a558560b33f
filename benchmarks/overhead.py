"""Overhead of ``BatchScalingCallback``: per-step wall time with and without it, and the cost of its hooks alone.

Two measurements:

1. **End to end.** Real fits of the MNIST CNN on real MNIST. A clock callback (first in the callback list) stamps
   ``time.perf_counter()`` at every ``on_train_batch_start``; a fit's step time is the wall time from the start of
   batch ``--warmup`` to the start of batch ``--warmup + steps`` divided by ``steps``, so it contains everything a
   training step costs (data, forward, backward, optimizer step, scheduler, every hook, and the periodic logging every
   ``log_every_n_steps=50`` steps), and nothing that happens once per fit. Variants of one setting are interleaved in a
   shuffled order in each round; each ratio is taken to the no-callback fit of the same round.
2. **Hooks alone.** In one extra fit per setting, after the warm-up steps, the callback's per-step work is timed with
   ``timeit`` on the live trainer: Lightning dispatching the step's callback hooks to it (replaying the hook calls the
   loop made, with the callback attached minus without it: this includes the callback's own ``on_train_batch_start``),
   the same with an LR-logging step amortised over ``log_every_n_steps``, and the warmup's optimizer step pre/post
   hooks. ``on_train_start`` (the rescale, once per fit) is timed in the fit. cProfile of the per-step work is saved.

Every fit logs to an in-memory logger (so the callback's LR logging runs, without disk noise), ``logger=False`` is
not used. The warmup variant's warmup is longer than the fit, so its hooks do real work on every step.

Run (from the repository root)::

    python benchmarks/overhead.py
    python benchmarks/overhead.py --rounds 1 --scale 0.1      # a quick check of the script
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
import timeit
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.trainer import call
from lrbs_bench import (
    OUT_DIR,
    MNISTConvNet,
    MNISTDataModule,
    command_line,
    default_data_dir,
    machine_lines,
    markdown_table,
    other_processes,
    quartiles,
    quiet,
    write_csv,
)
from torch import nn

from lightning_lrbs import BatchScalingCallback

#: Warmup length of the warmup variant: longer than any measurement, so the warmup is active on every step.
LONG_WARMUP = 1_000_000


class MemoryLogger(Logger):
    """A logger that keeps only the number of ``log_metrics`` calls and the last metrics (no I/O)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.last: dict[str, float] = {}

    @property
    def name(self) -> str:
        """Logger name."""
        return "memory"

    @property
    def version(self) -> int:
        """Logger version."""
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Count the call and keep the metrics."""
        self.calls += 1
        self.last = metrics

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Ignore hyperparameters."""


class StepClock(Callback):
    """``time.perf_counter()`` at every ``on_train_batch_start``."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Stamp the start of the batch."""
        self.times.append(time.perf_counter())


class TwoOptimizerConvNet(MNISTConvNet):
    """``MNISTConvNet`` split in two halves of 16 channels, each with its own SGD over 4 param groups and OneCycleLR.

    The logits are the sum of the two halves' logits, so the work per step equals ``MNISTConvNet(channels=32)``'s.
    Manual optimization (Lightning trains several optimizers only that way): one backward, both optimizers step,
    both schedulers step, every training batch.

    Args:
        lr: Base SGD learning rate (OneCycleLR's ``max_lr``).
        total_steps: OneCycleLR's ``total_steps`` (at least the number of training batches).
    """

    def __init__(self, lr: float = 0.001, total_steps: int = 10_000) -> None:
        super().__init__(lr=lr)
        self.automatic_optimization = False
        self.total_steps = total_steps
        half, dropout = self.hparams.channels // 2, self.hparams.dropout
        del self.net
        self.halves = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(1, half, kernel_size=3),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Dropout(dropout),
                nn.Flatten(),
                nn.Linear(half * 13 * 13, 10),
            )
            for _ in range(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the two halves' logits."""
        return self.halves[0](x) + self.halves[1](x)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One backward, then both optimizers and both schedulers step."""
        optimizers = self.optimizers()
        schedulers = self.lr_schedulers()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        """Per half: SGD with one param group per tensor (conv weight, conv bias, linear weight, linear bias)."""
        optimizers, schedulers = [], []
        for half in self.halves:
            conv, linear = half[0], half[5]
            groups = [{"params": [p]} for p in (conv.weight, conv.bias, linear.weight, linear.bias)]
            optimizer = torch.optim.SGD(groups, lr=self.hparams.lr)
            optimizers.append(optimizer)
            schedulers.append(
                torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr, total_steps=self.total_steps)
            )
        return optimizers, schedulers


@dataclass(frozen=True)
class Setting:
    """One model and batch size whose variants are compared with each other."""

    name: str
    batch_size: int
    steps: int
    two_optimizers: bool = False

    def model(self, total_steps: int) -> MNISTConvNet:
        """A fresh model of this setting."""
        return TwoOptimizerConvNet(total_steps=total_steps) if self.two_optimizers else MNISTConvNet(lr=0.001)


SETTINGS = (
    Setting("1 optimizer, batch 8", 8, steps=1500),
    Setting("1 optimizer, batch 64", 64, steps=300),
    Setting("2 optimizers × 4 groups + OneCycleLR, batch 64", 64, steps=300, two_optimizers=True),
)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "no callback": None,
    "scaling": {"base_batch_size": 8, "rule": "linear"},
    "scaling + warmup": {"base_batch_size": 8, "rule": "linear", "warmup_steps": LONG_WARMUP},
}


def make_trainer(batches: int, callbacks: list[Callback]) -> pl.Trainer:
    """A one-epoch CPU trainer over ``batches`` training batches, no validation, logging to memory."""
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=MemoryLogger(),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def timed_fit(setting: Setting, variant: str, warmup: int, steps: int, data_dir: Path, seed: int) -> dict[str, float]:
    """Fit ``warmup + steps + 1`` batches and return the mean and median step time over the last ``steps``."""
    pl.seed_everything(seed, verbose=False)
    datamodule = MNISTDataModule(data_dir, batch_size=setting.batch_size, seed=seed, download=False)
    model = setting.model(total_steps=warmup + steps + 10)
    clock = StepClock()
    kwargs = VARIANTS[variant]
    callbacks: list[Callback] = [clock] + ([] if kwargs is None else [BatchScalingCallback(**kwargs)])
    trainer = make_trainer(warmup + steps + 1, callbacks)
    trainer.fit(model, datamodule=datamodule)
    times = clock.times[warmup : warmup + steps + 1]
    if len(times) != steps + 1:
        raise RuntimeError(f"expected {steps + 1} batch starts, got {len(times)}: is the epoch long enough?")
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"mean_ms": (times[-1] - times[0]) / steps * 1e3, "median_ms": statistics.median(gaps) * 1e3}


class _Stamp(Callback):
    """Stamps ``on_train_start``; two of them around the callback time its ``on_train_start``."""

    def __init__(self) -> None:
        self.at = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at = time.perf_counter()


@contextmanager
def _recording_hooks(
    sink: list[tuple[str, tuple[Any, ...], dict[str, Any]]], active: Callable[[], bool]
) -> Iterator[None]:
    """Record the callback-hook calls Lightning's loop makes while ``active()`` is true."""
    original = call._call_callback_hooks

    def recorder(trainer: pl.Trainer, hook_name: str, *args: Any, **kwargs: Any) -> None:
        if active():
            sink.append((hook_name, args, kwargs))
        original(trainer, hook_name, *args, **kwargs)

    call._call_callback_hooks = recorder
    try:
        yield
    finally:
        call._call_callback_hooks = original


class HookProbe(Callback):
    """Times the callback's per-step work on the live trainer at batch ``at`` (hook calls recorded over ``window``).

    Args:
        target: The callback to time.
        at: Batch index at which to measure.
        window: Number of batches before ``at`` whose callback-hook calls are recorded and replayed.
        number: ``timeit`` repetitions.
    """

    def __init__(self, target: BatchScalingCallback, at: int, window: int, number: int) -> None:
        self.target, self.at, self.window, self.number = target, at, window, number
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.result: dict[str, float] = {}
        self.profile = ""
        self._recording = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Record the hook calls of the ``window`` batches before ``at`` (from this batch start to that one)."""
        self._recording = self.at - self.window <= batch_idx < self.at

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Measure once, at batch ``at``."""
        if batch_idx != self.at:
            return
        self._recording = False
        # The probe's own calls are recorded too (same hooks); replaying with and without the target cancels them.
        calls = [c for c in self.calls if c[0] in _PER_STEP_HOOKS]

        def replay() -> None:
            for name, args, kwargs in calls:
                call._call_callback_hooks(trainer, name, *args, **kwargs)

        def hooks_of(optimizer: torch.optim.Optimizer) -> list[Callable[..., Any]]:
            return [*optimizer._optimizer_step_pre_hooks.values(), *optimizer._optimizer_step_post_hooks.values()]

        step_hooks = [(opt, hooks_of(opt)) for opt in trainer.optimizers]

        def warmup_hooks() -> None:
            for optimizer, hooks in step_hooks:
                for hook in hooks:
                    hook(optimizer, (), {})

        def per_call(fn: Callable[[], None]) -> float:
            return min(timeit.repeat(fn, number=self.number, repeat=5)) / self.number * 1e6

        log_every = trainer.log_every_n_steps
        # Replayed at a fixed global step, the warmup warns (once) that an optimizer stepped twice at one step. The
        # filter is set once, outside the timed code: `catch_warnings` alone costs about 2.5 µs per use.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._measure(trainer, replay, warmup_hooks, log_every, per_call, len(calls) / self.window)

    def _measure(
        self,
        trainer: pl.Trainer,
        replay: Callable[[], None],
        warmup_hooks: Callable[[], None],
        log_every: int,
        per_call: Callable[[Callable[[], None]], float],
        calls_per_batch: float,
    ) -> None:
        everyone = trainer.callbacks
        try:
            trainer.log_every_n_steps = 10**9  # no replayed step is a logging step
            trainer.callbacks = []
            bare = per_call(replay) / self.window
            trainer.callbacks = [Callback()]
            empty = per_call(replay) / self.window
            trainer.callbacks = [self.target]
            with_cb = per_call(replay) / self.window
            trainer.log_every_n_steps = 1  # every replayed on_train_batch_start logs the applied LRs
            with_cb_logging = per_call(replay) / self.window
            trainer.log_every_n_steps = log_every
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(self.number):
                replay()
                warmup_hooks()
            profiler.disable()
        finally:
            trainer.callbacks = everyone
            trainer.log_every_n_steps = log_every
        hooks_us = per_call(warmup_hooks)  # every optimizer steps once per training batch here
        dispatch = with_cb - bare
        logging = (with_cb_logging - with_cb) / log_every
        self.result = {
            "hook_calls_per_batch": calls_per_batch,
            "dispatch_and_batch_start_us": dispatch,
            "empty_callback_dispatch_us": empty - bare,
            "lr_logging_amortised_us": logging,
            "warmup_step_hooks_us": hooks_us,
            "total_us": dispatch + logging + hooks_us,
        }
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("cumulative").print_stats(25)
        self.profile = out.getvalue()


_PER_STEP_HOOKS = {
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
}


def probe_hooks(setting: Setting, warmup: int, data_dir: Path, seed: int, number: int) -> tuple[dict[str, float], str]:
    """One fit with the warmup variant; the callback's per-step and once-per-fit costs, and a cProfile text."""
    pl.seed_everything(seed, verbose=False)
    datamodule = MNISTDataModule(data_dir, batch_size=setting.batch_size, seed=seed, download=False)
    model = setting.model(total_steps=warmup + 20)
    kwargs = VARIANTS["scaling + warmup"]
    assert kwargs is not None
    target = BatchScalingCallback(**kwargs)
    window = 10
    probe = HookProbe(target, at=warmup, window=window, number=number)
    before, after = _Stamp(), _Stamp()
    trainer = make_trainer(warmup + 2, [before, target, after, probe])
    recording = probe.calls
    with _recording_hooks(recording, lambda: probe._recording):
        trainer.fit(model, datamodule=datamodule)
    result = dict(probe.result)
    result["on_train_start_ms"] = (after.at - before.at) * 1e3
    return result, probe.profile


def main(argv: list[str] | None = None) -> int:
    """Run the interleaved rounds and the hook probes; write the CSVs, the profile and the markdown fragment.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--rounds", type=int, default=7, help="rounds of interleaved variants")
    p.add_argument("--warmup", type=int, default=100, help="untimed batches at the start of each fit")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every setting's timed steps by this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--number", type=int, default=2000, help="timeit repetitions of the hook probe")
    args = p.parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    command = command_line("benchmarks/overhead.py", argv)
    load_before = other_processes()
    started = time.perf_counter()
    order = torch.Generator().manual_seed(args.seed)

    rows: list[dict[str, Any]] = []
    names = list(VARIANTS)
    for rnd in range(args.rounds):
        for setting in SETTINGS:
            steps = max(10, int(setting.steps * args.scale))
            for i in torch.randperm(len(names), generator=order).tolist():
                res = timed_fit(setting, names[i], args.warmup, steps, args.data_dir, args.seed)
                rows.append({"round": rnd, "setting": setting.name, "variant": names[i], "steps": steps, **res})
                print(f"round {rnd} {setting.name:48s} {names[i]:18s} {res['mean_ms']:8.3f} ms/step", flush=True)

    probes: dict[str, dict[str, float]] = {}
    profiles: list[str] = []
    for setting in SETTINGS:
        probes[setting.name], text = probe_hooks(setting, args.warmup, args.data_dir, args.seed, args.number)
        profiles.append(f"=== {setting.name}: per-step work of BatchScalingCallback (x{args.number}) ===\n{text}")
        print(setting.name, probes[setting.name], flush=True)
    total = time.perf_counter() - started
    load_after = other_processes()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        base = next(
            r
            for r in rows
            if r["round"] == row["round"] and r["setting"] == row["setting"] and r["variant"] == names[0]
        )
        row["ratio"] = row["mean_ms"] / base["mean_ms"]
        row["ratio_median_step"] = row["median_ms"] / base["median_ms"]
    write_csv(args.out_dir / "overhead.csv", rows)
    write_csv(args.out_dir / "overhead_hooks.csv", [{"setting": k, **v} for k, v in probes.items()])
    (args.out_dir / "overhead_profile.txt").write_text("\n".join(profiles))

    table = []
    for setting in SETTINGS:
        for name in names:
            sel = [r for r in rows if r["setting"] == setting.name and r["variant"] == name]
            q1, med, q3 = quartiles([r["mean_ms"] for r in sel])
            ratios = [r["ratio"] for r in sel]
            ratio = (
                "1 (baseline)"
                if name == names[0]
                else f"{statistics.median(ratios):.3f} [{min(ratios):.3f}–{max(ratios):.3f}]"
            )
            table.append([setting.name, name, f"{med:.3f} [{q1:.3f}–{q3:.3f}]", ratio])
    hook_table = []
    for setting in SETTINGS:
        pr = probes[setting.name]
        step_ms = statistics.median(
            r["mean_ms"] for r in rows if r["setting"] == setting.name and r["variant"] == names[0]
        )
        hook_table.append(
            [
                setting.name,
                f"{pr['empty_callback_dispatch_us']:.1f}",
                f"{pr['dispatch_and_batch_start_us']:.1f}",
                f"{pr['lr_logging_amortised_us']:.2f}",
                f"{pr['warmup_step_hooks_us']:.1f}",
                f"{pr['total_us']:.1f}",
                f"{step_ms * 1e3:.0f}",
                f"{pr['total_us'] / (step_ms * 1e3):.3%}",
                f"{pr['on_train_start_ms']:.2f}",
            ]
        )
    steps_text = ", ".join(f"{max(10, int(s.steps * args.scale))} ({s.name})" for s in SETTINGS)
    fragment = "\n".join(
        [
            "## Overhead",
            "",
            "Wall time per training step of the MNIST CNN on real MNIST (plain SGD; `log_every_n_steps=50` to an "
            'in-memory logger). `scaling`: `BatchScalingCallback(base_batch_size=8, rule="linear")`; '
            f"`scaling + warmup`: the same with `warmup_steps={LONG_WARMUP:,}`, so the warmup works on every "
            "measured step. Step time = wall time from the start of batch "
            f"{args.warmup} to the start of batch {args.warmup} + N, divided by N, with N = {steps_text}: it includes "
            "data loading, every hook and the periodic logging. In each of the "
            f"{args.rounds} rounds the three variants of a setting run back to back in a shuffled order; the ratio "
            "is to the no-callback fit of the same round. Cells: median [interquartile range] of the step time over "
            "the rounds, median [min–max] of the per-round ratio.",
            "",
            markdown_table(["setting", "variant", "step time (ms)", "ratio to no callback"], table),
            "",
            "The callback's own work per training step, timed alone with `timeit` (best of 5 × "
            f"{args.number:,}) on the live trainer of a `scaling + warmup` fit after {args.warmup} steps. "
            "*Dispatch*: Lightning calling the step's callback hooks on one more callback (the hook calls the loop "
            "made, replayed with the callback attached minus without it), which includes the callback's "
            "`on_train_batch_start`; *any empty callback*: the same for a `Callback()` that does nothing, the floor "
            "Lightning charges for one more callback; *LR logging*: the extra cost of a step that logs the applied "
            "LRs, divided by "
            "`log_every_n_steps`; *warmup hooks*: the optimizer step pre/post hooks of every optimizer, once. "
            "`on_train_start` runs once per fit (it measures the batch, rescales every optimizer and scheduler, "
            "starts the warmup and logs its summary).",
            "",
            markdown_table(
                [
                    "setting",
                    "any empty callback (µs)",
                    "dispatch (µs)",
                    "LR logging (µs)",
                    "warmup hooks (µs)",
                    "total (µs/step)",
                    "step (µs)",
                    "share of step",
                    "on_train_start once (ms)",
                ],
                hook_table,
            ),
            "",
            *(f"- {line}" for line in machine_lines(args.threads)),
            f"- Other load at start: {load_before}",
            f"- Other load at end: {load_after}",
            f"- Command: `{command.strip()}` ({total / 60:.1f} min)",
            "- Data: `docs/benchmarks/overhead.csv` (every fit), `docs/benchmarks/overhead_hooks.csv`, cProfile of the "
            "per-step work in `docs/benchmarks/overhead_profile.txt`.",
            "",
        ]
    )
    (args.out_dir / "overhead.md").write_text(fragment)
    print(fragment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
