"""What only a GPU can check: the strategies that refuse the CPU, mixed precision on CUDA, NCCL. One call, under 5 min.

    python benchmarks/gpu_check.py --out docs/gpu_check.md

Each check fits a small MLP with ``BatchScalingCallback`` and compares what it must be; the table goes to stdout and,
with ``--out``, to a Markdown file with the command, the device and the versions:

- ``fsdp``: Lightning's ``FSDPStrategy`` on one device, accumulation 2: the LR of every step is base × 2 (the LR
  scaling works), and ``noise_scale=True`` is refused at fit start naming the strategy (not verified there).
- ``deepspeed``: the same with ``DeepSpeedStrategy`` (ZeRO stage 2), when ``deepspeed`` imports.
- ``bf16``, ``fp16``: the noise statistics (‖G‖², tr Σ) of ``bf16-mixed`` and ``16-mixed`` (GradScaler) fits on
  CUDA against the same fit in fp32 on CUDA (relative 5e-2: the gradients are computed in another precision), and
  the LRs of the steps equal (1e-9).
- ``cuda``: the noise statistics of an fp32 fit on CUDA against the same fit on CPU (relative 1e-3).
- ``fsdp2``: ``ModelParallelStrategy`` (FSDP2, NCCL, one device) against DDP on the same device and micro-batches:
  the noise statistics of every step, and the LR of every step with ``rule="adascale"`` and Adam (relative 1e-3).

``--device cpu`` runs the checks that a CPU can run (``cuda`` and ``fsdp2`` compare CPU with CPU; the others are
skipped), so the script cannot rot without a GPU (tests/test_gpu_check.py runs it so).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_lrbs import BatchScalingCallback

STEPS = 8


class MLP(pl.LightningModule):
    def __init__(self, optimizer: str = "sgd", fsdp2: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
        x = torch.randn(1024, 16)
        self.data = TensorDataset(x, x.sum(1, keepdim=True) + 0.5 * torch.randn(1024, 1))
        self.optimizer_name, self.fsdp2 = optimizer, fsdp2
        self.lrs: list[float] = []
        self.noise: list[tuple[float, float]] = []

    def configure_model(self) -> None:
        if self.fsdp2:
            from torch.distributed.fsdp import fully_shard

            for layer in (self.net[0], self.net[2]):
                fully_shard(layer, mesh=self.device_mesh["data_parallel"])
            fully_shard(self.net, mesh=self.device_mesh["data_parallel"])

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x).float(), y)

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=0.01)
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> Any:
        return DataLoader(self.data, batch_size=16)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        callback = next(c for c in self.trainer.callbacks if isinstance(c, BatchScalingCallback))
        last = None if callback.noise is None else callback.noise.last
        if last is not None and (not self.noise or self.noise[-1] != (last.grad_sq_norm, last.grad_var)):
            self.noise.append((last.grad_sq_norm, last.grad_var))


def fit(
    device: str, callback: BatchScalingCallback, model: MLP | None = None, accumulation: int = 4, **kwargs: Any
) -> MLP:
    model = model or MLP()
    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        max_steps=STEPS,
        accumulate_grad_batches=accumulation,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    trainer.fit(model)
    return model


def close(a: list[Any], b: list[Any], rel: float) -> bool:
    flat_a = [float(x) for item in a for x in (item if isinstance(item, tuple) else (item,))]
    flat_b = [float(x) for item in b for x in (item if isinstance(item, tuple) else (item,))]
    return len(flat_a) == len(flat_b) > 0 and all(math.isclose(x, y, rel_tol=rel) for x, y in zip(flat_a, flat_b))


def noise_callback(**kwargs: Any) -> BatchScalingCallback:
    return BatchScalingCallback(rule="none", noise_scale=True, noise_every_n_steps=1, log_lr=False, **kwargs)


def check_refusing_strategy(device: str, strategy: Callable[[], Any], name: str) -> str:
    scaled = fit(device, BatchScalingCallback(base_batch_size=16, log_lr=False), accumulation=2, strategy=strategy())
    if not close(scaled.lrs, [0.1] * STEPS, 1e-9):
        return f"FAIL: LRs {scaled.lrs[:3]}... are not base × 2"
    try:
        fit(device, noise_callback(), accumulation=2, strategy=strategy())
    except ValueError as error:
        if name not in str(error):
            return f"FAIL: refused without naming {name}: {error}"
        return "ok: LR ×2 at every step; noise_scale refused at fit start"
    return "FAIL: noise_scale was not refused"


def check_fsdp(device: str) -> str:
    if device != "cuda":
        return "skipped: FSDPStrategy refuses the CPU"
    from lightning.pytorch.strategies import FSDPStrategy

    return check_refusing_strategy(device, FSDPStrategy, "FSDPStrategy")


def check_deepspeed(device: str) -> str:
    if device != "cuda":
        return "skipped: DeepSpeedStrategy refuses the CPU"
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return "skipped: deepspeed is not installed (pip install deepspeed)"
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return check_refusing_strategy(device, lambda: DeepSpeedStrategy(stage=2), "DeepSpeedStrategy")


def check_precision(device: str, precision: str) -> str:
    if device != "cuda":
        return f"skipped: {precision} AMP is checked on CUDA"
    reference = fit(device, noise_callback())
    mixed = fit(device, noise_callback(), precision=precision)
    if not close(mixed.lrs, reference.lrs, 1e-9):
        return "FAIL: the LRs differ"
    if not close(mixed.noise, reference.noise, 5e-2):
        return f"FAIL: noise {mixed.noise[:2]} against fp32 {reference.noise[:2]}"
    return f"ok: ‖G‖², tr Σ of {len(mixed.noise)} steps within 5 % of fp32"


def check_cuda_against_cpu(device: str) -> str:
    on_device = fit(device, noise_callback())
    on_cpu = fit("cpu", noise_callback())
    if not close(on_device.noise, on_cpu.noise, 1e-3):
        return f"FAIL: {on_device.noise[:2]} against CPU {on_cpu.noise[:2]}"
    return f"ok: ‖G‖², tr Σ of {len(on_device.noise)} steps equal the CPU's (1e-3)"


def check_fsdp2_against_ddp(device: str) -> str:
    try:
        from lightning.pytorch.strategies import ModelParallelStrategy
    except ImportError:
        return "skipped: ModelParallelStrategy came with Lightning 2.4"

    def fsdp2() -> Any:
        return ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)

    # one replica reads the loader in order, as DDP's one process does with its sampler off
    sharded_noise = fit(
        device, noise_callback(), model=MLP(fsdp2=True), strategy=fsdp2(), use_distributed_sampler=False
    )
    ddp_noise = fit(device, noise_callback(), strategy="ddp", use_distributed_sampler=False)
    if not close(sharded_noise.noise, ddp_noise.noise, 1e-3):
        return f"FAIL: noise {sharded_noise.noise[:2]} against DDP's {ddp_noise.noise[:2]}"

    def adascale() -> BatchScalingCallback:
        return BatchScalingCallback(base_batch_size=16, rule="adascale", log_lr=False)

    sharded = fit(device, adascale(), model=MLP("adam", fsdp2=True), strategy=fsdp2(), use_distributed_sampler=False)
    ddp = fit(device, adascale(), model=MLP("adam"), strategy="ddp", use_distributed_sampler=False)
    if not close(sharded.lrs, ddp.lrs, 1e-3):
        return f"FAIL: adascale LRs {sharded.lrs[:4]} against DDP's {ddp.lrs[:4]}"
    return f"ok: ‖G‖², tr Σ and the adascale (Adam) LR of {len(sharded.lrs)} steps equal DDP's (1e-3)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", default=None, help="write the table to this Markdown file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or with --device cpu for the checks a CPU can run", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    torch.set_float32_matmul_precision("highest")
    checks: dict[str, Callable[[str], str]] = {
        "fsdp": check_fsdp,
        "deepspeed": check_deepspeed,
        "bf16": lambda device: check_precision(device, "bf16-mixed"),
        "fp16": lambda device: check_precision(device, "16-mixed"),
        "cuda": check_cuda_against_cpu,
        "fsdp2": check_fsdp2_against_ddp,
    }
    start = time.perf_counter()
    rows = []
    for name, check in checks.items():
        try:
            outcome = check(args.device)
        except Exception as error:  # a check that crashes is a failed check, the others still run
            outcome = f"FAIL: {type(error).__name__}: {error}"
        rows.append((name, outcome))
        print(f"{name}: {outcome}", flush=True)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "CPU"
    table = "\n".join(["| check | outcome |", "|---|---|", *(f"| {n} | {o} |" for n, o in rows)])
    text = (
        f"# GPU check\n\n`python benchmarks/gpu_check.py --device {args.device}` on {device}, "
        f"torch {torch.__version__}, lightning {lightning.__version__}, {time.perf_counter() - start:.0f} s.\n\n"
        f"{table}\n"
    )
    if args.out:
        Path(args.out).write_text(text)
    return 1 if any(outcome.startswith("FAIL") for _, outcome in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
