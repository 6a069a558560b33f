"""Optimizer steps as ``trainer.global_step`` counts them (issue 9, points 5 and 6).

- ``warmup_epochs`` under manual optimization: Lightning counts the step of every optimizer in ``global_step``, so
  with two optimizers stepped per batch one epoch is 2 × batches steps; ``warmup_epochs=1`` lasts exactly those.
- ``lrbs/lr-*`` logs the LR each step really used: also the second optimizer stepped in the same batch (its warmup
  factor is taken at its own step), and param groups added after training started, under the names
  ``LearningRateMonitor`` gives them (scheduler ``name`` included).

The LR of every step is recorded by the module's ``on_before_optimizer_step``, which Lightning calls inside
``optimizer.step`` after the step pre-hooks, with ``trainer.global_step`` at that step.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, GradientAccumulationScheduler, LearningRateMonitor
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.loggers import CSVLogger
from lrbs_testing import LRModel, quiet_trainer
from torch.utils.data import DataLoader

from lightning_lrbs import BatchScalingCallback

REL = 1e-9


def w(t: int, warmup: int, start: float) -> float:
    return start + (1.0 - start) * min(1.0, t / warmup)


class TwoOptimizers(BoringModel):
    """Manual optimization: SGD 0.1 on ``layer`` and SGD 0.05 on ``other``, both stepped once per batch of 8."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.other = torch.nn.Linear(32, 2)
        self.steps: list[tuple[int, int, list[float]]] = []  # (global_step, optimizer index, LRs used)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        for optimizer, layer in zip(self.optimizers(), (self.layer, self.other)):
            optimizer.zero_grad()
            self.manual_backward(layer(batch).sum())
            optimizer.step()

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.SGD(self.other.parameters(), lr=0.05)]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        index = [o.optimizer for o in self.optimizers()].index(optimizer)
        self.steps.append((self.trainer.global_step, index, [float(g["lr"]) for g in optimizer.param_groups]))

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 64), batch_size=8)


def logged(path: Path) -> dict[str, list[float]]:
    """Every value of every ``lrbs/<LR name>`` column of the CSVLogger's metrics file, in row order."""
    with open(path / "lightning_logs" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    skip = ("lrbs/scale_factor", "lrbs/effective_batch_size")
    columns = [c for c in rows[0] if c.startswith("lrbs/") and not c.startswith(skip)]
    return {c: [float(r[c]) for r in rows if r[c] != ""] for c in columns}


def test_warmup_epochs_counts_every_optimizers_steps(tmp_path: Path) -> None:
    """4 batches × 2 optimizers = 8 steps an epoch: W = 8. Base 2, batch 8: ×4, warmup from ×1/4. The second optimizer
    of a batch steps at t = 2b + 1; both the LR used and the logged LR take w at that t."""
    model = TwoOptimizers()
    callback = BatchScalingCallback(base_batch_size=2, warmup_epochs=1)
    logger = CSVLogger(tmp_path)
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=1, callbacks=[callback])
    trainer.fit(model)
    assert callback.warmup is None
    assert "warmup 8 steps from ×0.25" in callback.summary
    assert [(t, i) for t, i, _ in model.steps] == [(t, t % 2) for t in range(16)]
    for t, index, lrs in model.steps:
        assert lrs == pytest.approx([(0.1, 0.05)[index] * 4 * w(t, 8, 0.25)], rel=REL), f"step {t}"
    values = logged(tmp_path)
    assert values["lrbs/lr-SGD"] == pytest.approx([lrs[0] for _, i, lrs in model.steps if i == 0], rel=REL)
    assert values["lrbs/lr-SGD-1"] == pytest.approx([lrs[0] for _, i, lrs in model.steps if i == 1], rel=REL)


class AddGroup(pl.Callback):
    """Adds a param group (``shift``, LR 0.03) to the optimizer when epoch 1 starts."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            trainer.optimizers[0].add_param_group({"params": [pl_module.shift], "lr": 0.03})


class ExtraParamModel(LRModel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shift = torch.nn.Parameter(torch.zeros(32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x + self.shift)


@pytest.mark.parametrize("name", [None, "my-lr"])
def test_groups_added_later_are_logged_under_learning_rate_monitor_names(tmp_path: Path, name: str | None) -> None:
    """Two groups, then a third from epoch 1; a StepLR with (or without) a config ``name``. Warmup 6 steps: the added
    group is warmed too, and its logged LR is the one its steps used."""
    extra = {"name": name} if name else {}
    model = ExtraParamModel(scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5), extra=extra)
    monitor = LearningRateMonitor()
    callback = BatchScalingCallback(base_batch_size=4, warmup_steps=6)
    trainer = quiet_trainer(
        tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=1, callbacks=[callback, AddGroup(), monitor]
    )
    trainer.fit(model)
    stem = name or "lr-SGD"
    assert set(monitor.lrs) == {f"{stem}/pg1", f"{stem}/pg2", f"{stem}/pg3"}  # LearningRateMonitor's own names
    values = logged(tmp_path)
    assert set(values) == {f"lrbs/{stem}/pg1", f"lrbs/{stem}/pg2", f"lrbs/{stem}/pg3"}
    for index in range(3):
        used = [lrs[index] for lrs in model.lrs if len(lrs) > index]
        assert values[f"lrbs/{stem}/pg{index + 1}"] == pytest.approx(used, rel=REL)
    assert len(values[f"lrbs/{stem}/pg3"]) == 4
    # The LR used: scheduled (×2, StepLR halving every 3 steps) × w(t), the added group unscaled but warmed.
    for t, lrs in enumerate(model.lrs):
        decay = 0.5 ** (t // 3)  # StepLR is chainable: it halves every group, also the one added at step 4
        scheduled = [0.2 * decay, 0.1 * decay] + ([0.03 * decay / 0.5] if t >= 4 else [])
        assert lrs == pytest.approx([lr * w(t, 6, 0.5) for lr in scheduled], rel=REL), f"step {t}"


class Backbone(LRModel):
    """``backbone`` (frozen by BackboneFinetuning until epoch 1) → ``layer``; SGD on the layer only at first."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.backbone(x))


def test_backbone_finetuning_group_is_logged(tmp_path: Path) -> None:
    """BackboneFinetuning adds the backbone's group at epoch 1 (LR = group 0's LR × 0.1); it is logged as
    ``lrbs/lr-SGD/pg3`` with the LR its steps used."""
    model = Backbone()
    callback = BatchScalingCallback(base_batch_size=4, warmup_steps=6)
    finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.1, verbose=False)
    trainer = quiet_trainer(tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=1, callbacks=[callback, finetuning])
    trainer.fit(model)
    values = logged(tmp_path)
    assert set(values) == {"lrbs/lr-SGD/pg1", "lrbs/lr-SGD/pg2", "lrbs/lr-SGD/pg3"}
    assert values["lrbs/lr-SGD/pg3"] == pytest.approx([lrs[2] for lrs in model.lrs if len(lrs) == 3], rel=REL)
    assert len(values["lrbs/lr-SGD/pg3"]) == 4
    for t in range(4, 8):  # the added group starts at 0.1 × the scaled group-0 LR, and is warmed like the others
        assert model.lrs[t][2] == pytest.approx(0.02 * w(t, 6, 0.5), rel=REL), f"step {t}"


class AlternateSteps(TwoOptimizers):
    """The second optimizer steps on even batches only: 6 steps an epoch, not 2 × 4."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        for index, (optimizer, layer) in enumerate(zip(self.optimizers(), (self.layer, self.other))):
            if index == 1 and batch_idx % 2:
                continue
            optimizer.zero_grad()
            self.manual_backward(layer(batch).sum())
            optimizer.step()


def test_warmup_epochs_warns_when_an_epoch_made_other_steps(tmp_path: Path) -> None:
    """``warmup_epochs`` is converted before the first step, assuming every optimizer steps once per batch (8 steps);
    the first epoch made 6. The callback says so (the warmup stays 8 steps: it is never restarted)."""
    model = AlternateSteps()
    callback = BatchScalingCallback(base_batch_size=2, warmup_epochs=1)
    with pytest.warns(RuntimeWarning, match=r"converted with 8 optimizer steps per epoch, but the first epoch made 6"):
        quiet_trainer(tmp_path, max_epochs=2, callbacks=[callback]).fit(model)
    assert [t for t, _, _ in model.steps] == list(range(12))
    for t, index, lrs in model.steps:
        assert lrs == pytest.approx([(0.1, 0.05)[index] * 4 * w(t, 8, 0.25)], rel=REL), f"step {t}"


class ThreeOptimizers(BoringModel):
    """Manual optimization over three optimizers: SGD with an unnamed scheduler, SGD without one, and Adam (two
    groups, one named ``head``) with a scheduler named ``cosine``; each steps once per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b, self.c = torch.nn.Linear(32, 2), torch.nn.Linear(32, 2), torch.nn.Linear(32, 2)
        self.used: dict[int, list[list[float]]] = {0: [], 1: [], 2: []}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        for optimizer, layer in zip(self.optimizers(), (self.a, self.b, self.c)):
            optimizer.zero_grad()
            self.manual_backward(layer(batch).sum())
            optimizer.step()

    def configure_optimizers(self) -> Any:
        first = torch.optim.SGD(self.a.parameters(), lr=0.1)
        second = torch.optim.SGD(self.b.parameters(), lr=0.2)
        groups = [{"params": [self.c.weight]}, {"params": [self.c.bias], "name": "head"}]
        third = torch.optim.Adam(groups, lr=0.01)
        return [first, second, third], [
            {"scheduler": torch.optim.lr_scheduler.StepLR(first, 2), "interval": "step"},
            {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(third, 8), "name": "cosine"},
        ]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        index = [o.optimizer for o in self.optimizers()].index(optimizer)
        self.used[index].append([float(g["lr"]) for g in optimizer.param_groups])

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 64), batch_size=8)


def test_names_are_learning_rate_monitors_for_several_optimizers(tmp_path: Path) -> None:
    """The ``lrbs/`` names are exactly ``LearningRateMonitor``'s (repeated class, scheduler ``name``, group ``name``),
    and each holds the LRs its optimizer's steps used (warmup of 6 steps over the 3 optimizers' steps)."""
    model = ThreeOptimizers()
    monitor = LearningRateMonitor()
    callback = BatchScalingCallback(base_batch_size=4, warmup_steps=6)
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, logger=CSVLogger(tmp_path), log_every_n_steps=1, callbacks=[callback, monitor]
    )
    trainer.fit(model)
    values = logged(tmp_path)
    assert {name.removeprefix("lrbs/") for name in values} == set(monitor.lrs)
    assert set(values) == {"lrbs/lr-SGD", "lrbs/lr-SGD-1", "lrbs/cosine/pg1", "lrbs/cosine/head"}
    for name, index, group in [
        ("lrbs/lr-SGD", 0, 0),
        ("lrbs/lr-SGD-1", 1, 0),
        ("lrbs/cosine/pg1", 2, 0),
        ("lrbs/cosine/head", 2, 1),
    ]:
        assert values[name] == pytest.approx([lrs[group] for lrs in model.used[index]], rel=REL), name


class BackboneAdamW(Backbone):
    """Backbone with AdamW (weight decay 0.01): its time constants follow the batch under every rule."""

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.layer.parameters(), lr=0.1, weight_decay=0.01)


@pytest.mark.parametrize("rule", ["linear", "sde"])
def test_backbone_finetuning_then_more_accumulation_scales_every_group(tmp_path: Path, rule: str) -> None:
    """BackboneFinetuning adds a group at epoch 1 and sets its LR at every epoch start (doubling an LR it keeps); a
    GradientAccumulationScheduler doubles the batch at epoch 2. From then on every group, the added one included, is
    at twice (linear) or √2 × (sde, AdamW) the LR of the same run without the accumulation change, and its time
    constants follow the batch from the values it was added with (the fit died at epoch 2 with "the checkpoint's
    time-constant originals hold [1] param groups", no checkpoint involved)."""

    def run(accumulation: dict[int, int]) -> tuple[BackboneAdamW, pl.Trainer]:
        model = BackboneAdamW()
        callback = BatchScalingCallback(rule=rule, log_lr=False)
        finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.1, verbose=False)
        callbacks = [callback, finetuning, GradientAccumulationScheduler(accumulation)]
        trainer = quiet_trainer(tmp_path, max_epochs=4, callbacks=callbacks)
        trainer.fit(model)
        return model, trainer

    model, trainer = run({0: 1, 2: 2})
    reference, _ = run({0: 1})
    assert [len(step) for step in model.lrs] == [1] * 4 + [2] * 4 + [2] * 4  # 4, 4, 2, 2 steps
    factor = 2.0 if rule == "linear" else 2.0**0.5
    for epoch in (2, 3):
        ours, theirs = model.lrs[8 + 2 * (epoch - 2)], reference.lrs[8 + 4 * (epoch - 2)]
        assert ours == pytest.approx([lr * factor for lr in theirs], rel=REL), f"epoch {epoch}"
    kappa = 2.0 if rule == "sde" else 1.0
    for group in trainer.optimizers[0].param_groups:  # the added group's betas and weight decay follow the batch too
        assert group["betas"] == pytest.approx((0.9**kappa, 0.999**kappa), rel=REL)
        assert group["weight_decay"] == pytest.approx(0.01 * 2.0 / factor, rel=REL)
