"""Lightning's ``FSDPStrategy`` (and ``DeepSpeedStrategy``) keep gradients in flat buffers of their own and refuse
the CPU: the features that read per-rank gradients refuse them at fit start, the LR scaling stays on.

The Trainer refuses ``FSDPStrategy`` with ``accelerator="cpu"``, so these tests put a real ``FSDPStrategy`` into a
real CPU Trainer after its construction, connect the module and its optimizer as the strategy's setup would, and
call the callback's ``setup`` and ``on_fit_start`` as ``Trainer.fit`` does before any step.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lrbs_testing import LR, LRModel

from lightning_lrbs import BatchScalingCallback


def fit_start(
    devices: int = 2, **kwargs: Any
) -> tuple[pl.Trainer, LRModel, BatchScalingCallback, torch.optim.Optimizer]:
    callback = BatchScalingCallback(base_batch_size=4, **kwargs)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, callbacks=[callback])
    trainer._accelerator_connector.strategy = FSDPStrategy(parallel_devices=[torch.device("cpu")] * devices)
    model = LRModel()
    trainer.strategy.connect(model)
    model.trainer = trainer
    optimizer = model.configure_optimizers()
    trainer.strategy.optimizers = [optimizer]
    callback.setup(trainer, model, "fit")
    callback.on_fit_start(trainer, model)
    return trainer, model, callback, optimizer


@pytest.mark.parametrize(
    ("kwargs", "who"), [({"noise_scale": True}, "`noise_scale=True`"), ({"rule": "adascale"}, "rule='adascale'")]
)
def test_reading_gradients_is_refused_at_fit_start(kwargs: dict[str, Any], who: str) -> None:
    with pytest.raises(ValueError, match="not verified under FSDPStrategy") as error:
        fit_start(**kwargs)
    assert str(error.value).startswith(f"{who} reads each rank's micro-batch gradients")
    assert "train with ModelParallelStrategy (FSDP2) or DDP" in str(error.value)


def test_the_lr_scaling_stays_on() -> None:
    """One process (no process group here to exchange batch sizes): 8 per device over a base of 4 doubles every LR."""
    trainer, model, callback, optimizer = fit_start(devices=1, batch_size=8)
    callback.on_train_start(trainer, model)
    assert [group["lr"] for group in optimizer.param_groups] == [2 * LR, LR]
    assert callback.summary.startswith("effective batch 8 = 8 per device; base 4; rule linear → LR ×2")
