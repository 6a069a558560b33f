"""A real 2-process Fabric loop for tests/test_fabric.py: each rank writes what it saw to ``<out>/rank<k>.json``.

Usage: ``python fabric_ddp.py OUT_DIR``. Fabric's ``ddp`` strategy re-launches this script for rank 1 (gloo on CPU).
The loop follows the README: ``fabric.setup``, then :func:`lightning_lrbs.scale_for_batch` with ``fabric.world_size``,
gradient accumulation and a per-step warmup, and a step-interval cosine schedule.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.fabric import Fabric
from torch.utils.data import DataLoader, TensorDataset

from lightning_lrbs import loader_batch_size, scale_for_batch

BATCH, ACCUMULATION, BASE, WARMUP, EPOCHS = 8, 2, 16, 4, 2


def main() -> None:
    out = Path(sys.argv[1])
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8, eta_min=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    data = TensorDataset(torch.randn(128, 4), torch.randn(128, 1))
    loader = fabric.setup_dataloaders(DataLoader(data, batch_size=BATCH))

    batch_size = loader_batch_size(loader)
    assert batch_size is not None
    scaling = scale_for_batch(
        optimizer,
        scheduler,
        per_device_batch_size=batch_size,
        world_size=fabric.world_size,
        accumulation=ACCUMULATION,
        base_batch_size=BASE,
        warmup_steps=WARMUP,
    )
    used: list[float] = []  # the LR each optimizer step runs with (after the warmup's pre-hook)
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))

    for _ in range(EPOCHS):
        for index, (x, y) in enumerate(loader):
            stepping = (index + 1) % ACCUMULATION == 0
            with fabric.no_backward_sync(model, enabled=not stepping):
                fabric.backward(torch.nn.functional.mse_loss(model(x), y) / ACCUMULATION)
            if stepping:
                optimizer.step()
                optimizer.zero_grad()
                scheduler.step()

    result = {
        "world_size": fabric.world_size,
        "effective_batch_size": scaling.effective_batch_size,
        "scale_factor": scaling.scale_factor,
        "summary": scaling.summary,
        "used": used,
        "lr_after": optimizer.param_groups[0]["lr"],
        "weight": [float(v) for v in model.weight.detach().reshape(-1)],
    }
    (out / f"rank{fabric.global_rank}.json").write_text(json.dumps(result))
    # Leave gloo cleanly: a process group still alive at interpreter exit sometimes aborts the process
    # ("terminate called without an active exception", exit -6) once its peer has gone.
    fabric.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
