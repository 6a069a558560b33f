"""A real fit of a two-layer MLP under one of the strategies large models train with, for tests/test_strategies.py.

Usage: ``python parallel_fit.py OUT_DIR CONFIG_JSON``. ``CONFIG_JSON`` holds ``strategy`` (``single``, ``ddp``,
``fsdp``: FSDP2 over the data-parallel ranks, ``tp``: tensor parallelism, ``fsdp_tp``: both), ``dp`` and ``tp``
(the mesh of ``ModelParallelStrategy``; ``dp`` is the device count for ``ddp``), ``callback`` (the
``BatchScalingCallback`` arguments), and optionally ``accumulation``, ``optimizer`` (``sgd`` or ``adam``), ``batch``,
``max_steps``, ``ckpt_in`` (resume from it) and ``ckpt_out`` (save there at the end). Every rank writes what it saw to
``OUT_DIR/rank<k>.json``: the LR each optimizer step used and the unsmoothed noise estimate of each measured step.

The model and data are the same under every strategy: the weights are drawn before any sharding, and the data is
sharded over the data-parallel ranks by Lightning's sampler (the same shuffle under DDP and FSDP2 with the same
``dp``), or read in order with one replica, so one process and tensor parallelism with the same accumulation see the
same micro-batches too.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lrbs_testing import finish_distributed, quiet_trainer  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_lrbs import BatchScalingCallback  # noqa: E402


class MLP(pl.LightningModule):
    """8 → 16 → 1 with tanh, on noisy regression data; SGD (LR 0.05) or Adam (LR 0.01), constant LR."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        x = torch.randn(512, 8)
        self.data = TensorDataset(x, x.sum(1, keepdim=True) + 0.5 * torch.randn(512, 1))
        self.config = config

    def configure_model(self) -> None:
        kind = self.config["strategy"]
        if kind in ("tp", "fsdp_tp"):
            from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

            plan = {"0": ColwiseParallel(), "2": RowwiseParallel()}
            parallelize_module(self.net, self.device_mesh["tensor_parallel"], plan)
        if kind in ("fsdp", "fsdp_tp"):
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for layer in (self.net[0], self.net[2]):
                fully_shard(layer, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        if self.config.get("optimizer", "sgd") == "adam":
            return torch.optim.Adam(self.parameters(), lr=0.01)
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> Any:
        return DataLoader(self.data, batch_size=self.config.get("batch", 8))


class Recorder(pl.Callback):
    """After the BatchScalingCallback: the LR each step uses (``on_before_optimizer_step`` runs inside the step, after
    its pre-hooks) and each measured step's unsmoothed estimate."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.accumulations: list[int] = []
        self.noise: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))
        self.accumulations.append(int(trainer.accumulate_grad_batches))
        callback = next(c for c in trainer.callbacks if isinstance(c, BatchScalingCallback))
        last = None if callback.noise is None else callback.noise.last
        if last is not None and (not self.noise or self.noise[-1][0] != trainer.global_step):
            self.noise.append([trainer.global_step, last.grad_sq_norm, last.grad_var, last.micro_batches])


def strategy(config: dict[str, Any]) -> tuple[Any, int]:
    kind, dp, tp = config["strategy"], config.get("dp", 1), config.get("tp", 1)
    if kind == "single":
        return "auto", 1
    if kind == "ddp":
        return "ddp", dp
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=dp, tensor_parallel_size=tp), dp * tp


def main() -> None:
    out, config = Path(sys.argv[1]), json.loads(sys.argv[2])
    torch.set_num_threads(1)
    callback, recorder = BatchScalingCallback(**config["callback"]), Recorder()
    kind, devices = strategy(config)
    trainer = quiet_trainer(
        out,
        devices=devices,
        strategy=kind,
        max_epochs=-1,
        max_steps=config.get("max_steps", 6),
        accumulate_grad_batches=config.get("accumulation", 1),
        callbacks=[callback, recorder],
        limit_train_batches=1.0,
        # one data-parallel replica: the data in the loader's own order, as one process reads it (Lightning's
        # distributed sampler would shuffle it)
        use_distributed_sampler=config.get("dp", 1) > 1,
    )
    trainer.fit(MLP(config), ckpt_path=config.get("ckpt_in"))
    if config.get("ckpt_out"):
        trainer.save_checkpoint(config["ckpt_out"])
    noise = callback.noise
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "summary": callback.summary,
        "effective": callback.effective_batch_size,
        "factor": callback.scale_factor,
        "lrs": recorder.lrs,
        "accumulations": recorder.accumulations,
        "noise": recorder.noise,
        "noise_scale": callback.noise_scale,
        "smoothed": None if noise is None else [noise.grad_sq_norm, noise.grad_var],
        "progress": None if callback.adascale is None else callback.adascale.progress,
        "global_step": trainer.global_step,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank has written its results
    finish_distributed()
    # A process that wrote a distributed checkpoint sometimes aborts in C++ teardown at interpreter exit ("terminate
    # called without an active exception", gloo; 1 run in about 20 under load): its work is done and written, so leave
    # without running the interpreter's finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
