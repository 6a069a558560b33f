"""A real 2-process DDP fit for tests/test_noise_scale.py: the frozen MNIST MLP with ``noise_scale=True``; each rank
writes its callback's noise statistics to ``<out>/rank<k>.json``.

Usage: ``python noise_ddp.py OUT_DIR STEPS ACCUMULATION SIZE_RANK0 SIZE_RANK1``. Each step's micro-batches are drawn
as in the test (``draw_micro_batches`` with sizes ``[SIZE_RANK0] * A + [SIZE_RANK1] * A``); rank ``r`` feeds the
``A`` micro-batches ``r*A ... r*A + A - 1`` of every step, so one process with accumulation ``2A`` on the same list sees
the same micro-batches.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from lrbs_testing import finish_distributed, quiet_trainer  # noqa: E402
from noise_testing import FrozenMLP, MicroBatches, NoiseRecorder, draw_micro_batches, mnist_subset  # noqa: E402

from lightning_lrbs import BatchScalingCallback  # noqa: E402

SUBSET = 1024


def main() -> None:
    out, steps, accumulation = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sizes = [int(sys.argv[4])] * accumulation + [int(sys.argv[5])] * accumulation
    torch.set_num_threads(1)
    x, y = mnist_subset(SUBSET)
    plan = draw_micro_batches(SUBSET, steps, sizes)
    callback = BatchScalingCallback(rule="none", noise_scale=True, noise_every_n_steps=1, noise_smoothing=0.99)
    recorder = NoiseRecorder()
    trainer = quiet_trainer(
        out,
        devices=2,
        strategy="ddp",
        max_epochs=1,
        accumulate_grad_batches=accumulation,
        use_distributed_sampler=False,
        callbacks=[callback, recorder],
        limit_train_batches=1.0,
    )
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning for the processes it launches
    model = FrozenMLP(MicroBatches(x, y, plan, offset=rank * accumulation, per_step=accumulation))
    trainer.fit(model)
    noise = callback.noise
    assert noise is not None
    result = {
        "rank": trainer.global_rank,
        "noise_scale": callback.noise_scale,
        "grad_sq_norm": noise.grad_sq_norm,
        "grad_var": noise.grad_var,
        "steps": recorder.steps,
        "effective": callback.effective_batch_size,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    finish_distributed()
