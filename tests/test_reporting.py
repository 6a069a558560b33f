"""The numbers where users look: hyperparameters in the loggers, optimizer names as ``LearningRateMonitor`` gives
them, exact factors in the summary, the ``accumulation=`` override, and the same warnings from ``scale_for_batch``."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import GradientAccumulationScheduler, LearningRateMonitor
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.loggers import CSVLogger
from lrbs_testing import LR, LRModel, quiet_trainer
from torch.optim import lr_scheduler as S
from torch.utils.data import DataLoader

from lightning_lrbs import BatchScalingCallback, scale_for_batch
from lightning_lrbs.summary import format_factor, optimizer_names


class HandAccumulatedGAN(BoringModel):
    """Manual optimization with two Adams (generator, discriminator) that accumulates ``accumulation`` batches by
    hand. The discriminator's scheduler config is named ``name`` when given. Records the LRs of every step."""

    def __init__(self, accumulation: int = 2, name: str | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.accumulation, self.name = accumulation, name
        self.disc = torch.nn.Linear(32, 2)
        self.lrs: list[tuple[float, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        gen_opt, disc_opt = self.optimizers()  # type: ignore[misc]
        loss = self.layer(batch).sum() + self.disc(batch).sum()
        self.manual_backward(loss / self.accumulation)
        if (batch_idx + 1) % self.accumulation == 0:
            self.lrs.append((gen_opt.param_groups[0]["lr"], disc_opt.param_groups[0]["lr"]))
            gen_opt.step()
            disc_opt.step()
            gen_opt.zero_grad()
            disc_opt.zero_grad()

    def configure_optimizers(self) -> Any:
        gen = torch.optim.Adam(self.layer.parameters(), lr=1e-3)
        disc = torch.optim.Adam(self.disc.parameters(), lr=4e-4)
        config: dict[str, Any] = {"scheduler": S.StepLR(disc, step_size=100)}
        if self.name:
            config["name"] = self.name
        return [{"optimizer": gen}, {"optimizer": disc, "lr_scheduler": config}]

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 32), batch_size=4)


@pytest.mark.parametrize(("name", "labels"), [(None, ["Adam-1", "Adam"]), ("disc", ["Adam", "disc"])])
def test_hand_accumulated_gan_names_hparams_and_factor(tmp_path: Path, name: str | None, labels: list[str]) -> None:
    # batch 4, accumulated 2 by hand, base 2: effective 8, ratio 4, sqrt rule: factor 2
    callback = BatchScalingCallback(base_batch_size=2, rule="sqrt", accumulation=2, warmup_steps=2)
    logger = CSVLogger(tmp_path, name="run")
    model = HandAccumulatedGAN(name=name)
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=8, logger=logger, log_every_n_steps=1,
        callbacks=[callback, LearningRateMonitor()],
    )  # fmt: skip
    trainer.fit(model)

    assert callback.effective_batch_size == 8
    assert callback.scale_factor == 2.0
    assert model.lrs[0] == pytest.approx((2e-3, 8e-4), rel=1e-12)
    assert callback.summary.startswith("effective batch 8 = 4 per device × 2 accumulation; base 2; rule sqrt → LR ×2: ")
    assert f"{labels[0]} 0.001 → 0.002; {labels[1]} 0.0004 → 0.0008; warmup 2 steps from ×0.5" in callback.summary

    # the labels are LearningRateMonitor's: its columns in the CSV are lr-<label> (or the config's name)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    monitor_keys = [
        n.key
        for n in optimizer_names(
            trainer.optimizers, [(c.scheduler.optimizer, c.name) for c in trainer.lr_scheduler_configs]
        )
    ]
    assert set(monitor_keys) <= columns
    assert [k.removeprefix("lr-") for k in monitor_keys] == labels

    hparams = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
    assert hparams["lrbs/effective_batch_size"] == 8
    assert hparams["lrbs/per_device_batch_size"] == 4
    assert hparams["lrbs/accumulation"] == 2
    assert hparams["lrbs/base_batch_size"] == 2
    assert hparams["lrbs/rule"] == "sqrt"
    assert hparams["lrbs/warmup_steps"] == 2
    for label in labels:
        assert hparams[f"lrbs/{label}/scale_factor"] == 2.0
        assert hparams[f"lrbs/{label}/rule"] == "sqrt"
        assert hparams[f"lrbs/{label}/warmup_start_factor"] == 0.5


def test_auto_rule_hparams_per_optimizer_and_devices(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="run")
    callback = BatchScalingCallback(base_batch_size=2, rule="auto")
    quiet_trainer(tmp_path, max_epochs=1, logger=logger, callbacks=[callback]).fit(LRModel())
    hparams = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
    assert hparams["lrbs/rule"] == "auto"
    assert hparams["lrbs/SGD/rule"] == "linear"
    assert hparams["lrbs/SGD/scale_factor"] == 4.0
    assert hparams["lrbs/devices"] == 1
    assert hparams["lrbs/nodes"] == 1
    assert "lrbs/SGD/warmup_start_factor" not in hparams


def test_factors_print_exactly(tmp_path: Path) -> None:
    assert [format_factor(f) for f in (32.0, 0.0625, 1 / 32, 2**-12, 3.0, 2**0.5, 1 / 3)] == [
        "32", "0.0625", "0.03125", "0.000244140625", "3", "1.414", "0.3333",
    ]  # fmt: skip
    callback = BatchScalingCallback(base_batch_size=128, warmup_steps=2, warmup_start_factor=0.125)
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(LRModel())
    assert "rule linear → LR ×0.0625: SGD 0.1, 0.05 → 0.00625, 0.003125; warmup 2 steps from ×0.125" in callback.summary


class TestAccumulationOverride:
    def test_is_validated_like_the_other_sizes(self) -> None:
        for bad in (0, -1, 2.0, True):
            with pytest.raises(ValueError, match=rf"`accumulation` must be a positive int, got {bad!r}"):
                BatchScalingCallback(accumulation=bad)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "kwargs",
        [{"accumulate_grad_batches": 2}, {"callbacks": [GradientAccumulationScheduler({1: 2})]}],
    )
    def test_refused_when_the_trainer_accumulates_itself(self, tmp_path: Path, kwargs: dict[str, Any]) -> None:
        callback = BatchScalingCallback(accumulation=3)
        trainer = quiet_trainer(tmp_path, **kwargs)
        trainer.callbacks.append(callback)
        model = LRModel()
        with pytest.raises(ValueError, match=r"`accumulation=3` is for accumulation by hand under manual optimization"):
            trainer.fit(model)
        assert model.lrs == []


# (rule, optimizer, per-device batch, base, warnings expected)
WARNING_CASES = [
    ("linear", "Adam", 8, 2, 1),  # adaptive scaled linearly
    ("linear", "Adam", 8, 8, 1),  # factor 1 (and nothing scaled, so no adaptive warning)
    ("sqrt", "Adam", 8, 2, 0),
    ("none", "SGD", 8, 2, 0),  # asked for 1
    ("auto", "SGD", 8, 8, 1),  # factor 1
    ("linear", "SGD", 8, 2, 0),
]


def _messages(caught: list[warnings.WarningMessage], prefix: str) -> list[str]:
    return sorted(str(w.message).removeprefix(prefix) for w in caught if str(w.message).startswith(prefix))


@pytest.mark.parametrize(("rule", "optimizer", "batch", "base", "count"), WARNING_CASES)
def test_scale_for_batch_warns_exactly_when_the_callback_does(
    tmp_path: Path, rule: str, optimizer: str, batch: int, base: int, count: int
) -> None:
    make = getattr(torch.optim, optimizer)
    with warnings.catch_warnings(record=True) as from_callback:
        warnings.simplefilter("always")
        model = LRModel(batch_size=batch, optimizer=lambda groups: make(groups, lr=LR))
        callback = BatchScalingCallback(base_batch_size=base, rule=rule)  # type: ignore[arg-type]
        quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(model)
    with warnings.catch_warnings(record=True) as from_loop:
        warnings.simplefilter("always")
        opt = make([torch.nn.Parameter(torch.zeros(2))], lr=LR)
        scale_for_batch(opt, per_device_batch_size=batch, base_batch_size=base, rule=rule)  # type: ignore[arg-type]
    expected = _messages(from_callback, "BatchScalingCallback: ")
    assert _messages(from_loop, "scale_for_batch: ") == expected
    assert [w.category for w in from_loop if str(w.message).startswith("scale_for_batch")] == [RuntimeWarning] * len(
        expected
    )
    assert len(expected) == count
