"""rule="adascale" with ``scale_invariant=True``: schedulers advance by the summed gains, the run ends when the planned
work is done, resume is exact, and what it cannot do exactly is refused before anything changes."""

from __future__ import annotations

import copy
import csv
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import (
    GradientAccumulationScheduler,
    LearningRateFinder,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from lightning.pytorch.loggers import CSVLogger
from lrbs_testing import quiet_trainer, run_script
from packaging.version import Version
from test_adascale import _expected_gain, _Regression, measure_step
from torch.utils.data import DataLoader

from lightning_lrbs import BatchScalingCallback, scale_for_batch
from lightning_lrbs.adascale import ScaleInvariantSchedule
from lightning_lrbs.warmup import warmup_factor

S = 4.0  # 8 per step x 4 accumulation / base 8


class _TwoSchedulers(_Regression):
    """ExponentialLR(0.9) per step and MultiplicativeLR(0.5) per epoch on one SGD: both chainable."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        per_step = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
        per_epoch = torch.optim.lr_scheduler.MultiplicativeLR(optimizer, lambda epoch: 0.5)
        return [optimizer], [
            {"scheduler": per_step, "interval": "step"},
            {"scheduler": per_epoch, "interval": "epoch"},
        ]


def _fit(
    tmp_path: Path, model: _Regression, ckpt: str | None = None, invariant: bool = True, **kwargs: Any
) -> tuple[pl.Trainer, Any]:
    callback = BatchScalingCallback(base_batch_size=8, rule="adascale", scale_invariant=invariant, warmup_steps=2)
    options: dict[str, Any] = {
        "max_epochs": 2,
        "limit_train_batches": 16,  # 4 optimizer steps an epoch: 8 planned
        "accumulate_grad_batches": 4,
        **kwargs,
    }
    trainer = quiet_trainer(tmp_path, callbacks=[callback, *options.pop("callbacks", [])], **options)
    trainer.fit(model, ckpt_path=ckpt)
    return trainer, callback


def test_schedulers_follow_the_summed_gains_and_the_run_ends_when_the_planned_work_is_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _TwoSchedulers()
    logger = CSVLogger(tmp_path, name="log")
    with caplog.at_level(logging.INFO):
        trainer, callback = _fit(tmp_path, model, logger=logger, log_every_n_steps=1)
    gains = [1.0] + [_expected_gain(st, 8, S) for st in model.stats[:-1]]  # r_t: the previous step's statistics
    assert all(1.0 <= g < S for g in gains)
    progress = [sum(gains[:t]) for t in range(len(gains) + 1)]  # tau before step t, in base-batch steps
    expected = [
        0.05
        * 0.9 ** math.floor(progress[t] / S + 1e-9)  # per step: one scheduler step per S base steps
        * 0.5 ** math.floor(progress[t] / (4 * S) + 1e-9)  # per epoch: 4 optimizer steps planned an epoch
        * warmup_factor(t, 2, 1 / S)
        * gains[t]
        for t in range(len(gains))
    ]
    assert model.used == pytest.approx(expected, rel=1e-9)
    planned = 8 * S  # 8 optimizer steps at batch 32 = 32 base-batch steps
    assert progress[-2] < planned <= progress[-1]  # ended at the first step that completed the planned work
    assert trainer.global_step == len(gains) > 8  # more optimizer steps than planned, since r_t < S
    per_step, per_epoch = (config.scheduler for config in trainer.lr_scheduler_configs)
    assert per_step.last_epoch == 8  # the planned 8 steps of the per-step schedule, no more
    assert per_epoch.last_epoch == 2  # the planned 2 epochs
    assert callback.adascale.progress == pytest.approx(progress[-1], rel=1e-12)
    # the Trainer's limits and the schedulers' frequencies are the user's again
    assert (trainer.max_epochs, trainer.max_steps) == (2, -1)
    assert [config.frequency for config in trainer.lr_scheduler_configs] == [1, 1]
    assert "scale-invariant iterations" in callback.summary
    assert "Σ r_t = 32 base-batch steps" in callback.summary
    assert (
        f"the planned work is done: Σ r_t = {progress[-1]:.6g} ≥ 32 base-batch steps after {len(gains)} optimizer"
        in (caplog.text)
    )
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        column = [r["lrbs/scale_invariant_progress"] for r in csv.DictReader(f)]
    logged = [float(v) for v in column if v]
    assert logged[-1] == pytest.approx(progress[-2], rel=1e-12)  # logged at the last step's start
    assert logged == sorted(logged)


def test_resume_from_a_checkpoint_inside_the_run_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    # at epoch ends: a mid-epoch resume restarts a plain DataLoader's epoch (other batches), with or without lrbs
    every = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1, filename="{epoch}-{step}")
    full = _TwoSchedulers()
    trainer, _ = _fit(tmp_path, full, callbacks=[every], enable_checkpointing=True)
    assert trainer.global_step > 8  # past the planned 8 steps, and the checkpoint there
    resumed = _TwoSchedulers()
    trainer2, callback = _fit(tmp_path / "resumed", resumed, ckpt=str(tmp_path / "ckpt" / "epoch=1-step=8.ckpt"))
    assert resumed.used == pytest.approx(full.used[8:], rel=1e-9)
    assert trainer2.global_step == trainer.global_step
    assert [c.scheduler.last_epoch for c in trainer2.lr_scheduler_configs] == [8, 2]
    assert (trainer2.max_epochs, trainer2.max_steps) == (2, -1)


def test_with_gains_equal_to_s_it_steps_once_per_step_bit_for_bit() -> None:
    """ScaleInvariantSchedule alone, in the linear limit r_t = S with an S whose sum is inexact in floating point: one
    scheduler step per optimizer step, as a loop calling ``scheduler.step()`` would (OneCycleLR, not chainable)."""

    def schedules() -> tuple[list[float], Any, Any]:
        w = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.9)
        one_cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=24)
        return [], optimizer, one_cycle

    used, optimizer, one_cycle = schedules()
    for _ in range(24):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        one_cycle.step()
    si_used, si_optimizer, si_cycle = schedules()
    invariant = ScaleInvariantSchedule([si_cycle], periods=[2.7], total=24 * 2.7)
    progress = 0.0
    steps = 0
    while not invariant.done(progress):
        si_used.append(si_optimizer.param_groups[0]["lr"])
        si_optimizer.step()
        progress += 2.7  # r_t = S = 2.7 (not a power of two: the sum is inexact in floating point)
        invariant.advance(progress)
        steps += 1
    assert steps == 24
    assert si_used == used  # bit for bit


def test_a_raw_loop_counts_the_same_way_with_adascale_progress() -> None:
    """scale_for_batch(rule="adascale") + ScaleInvariantSchedule, as the loop docs show it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    result = scale_for_batch(
        optimizer, scheduler, per_device_batch_size=8, accumulation=4, base_batch_size=8, rule="adascale"
    )
    assert result.noise is not None
    assert result.adascale is not None
    planned = 6  # optimizer steps planned at batch 32
    invariant = ScaleInvariantSchedule([scheduler], periods=[S], total=planned * S)
    used: list[float] = []
    optimizer.register_step_pre_hook(lambda o, *_: used.append(float(o.param_groups[0]["lr"])))  # after ours
    gains = []
    while not invariant.done(result.adascale.progress):
        measure_step(model, result.noise)
        gains.append(result.adascale.gain)
        optimizer.step()
        optimizer.zero_grad()
        invariant.advance(result.adascale.progress)
    progress = [sum(gains[:t]) for t in range(len(gains) + 1)]
    assert used == pytest.approx(
        [0.05 * 0.9 ** math.floor(progress[t] / S + 1e-9) * gains[t] for t in range(len(gains))], rel=1e-9
    )
    assert len(gains) > planned
    assert scheduler.last_epoch == planned
    result.adascale.remove()
    result.noise.remove()


class _OneCycle(_TwoSchedulers):
    """OneCycleLR (not chainable) over the planned steps, and MultiplicativeLR per epoch."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        total = int(self.trainer.estimated_stepping_batches)
        one_cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total)
        per_epoch = torch.optim.lr_scheduler.MultiplicativeLR(optimizer, lambda epoch: 0.5)
        return [optimizer], [
            {"scheduler": one_cycle, "interval": "step"},
            {"scheduler": per_epoch, "interval": "epoch"},
        ]


@pytest.mark.parametrize("model_cls", [_TwoSchedulers, _OneCycle])
@pytest.mark.parametrize(
    "limits",
    [
        {"max_epochs": 3, "limit_val_batches": 2},
        {"max_epochs": -1, "max_steps": 7},  # ends inside an epoch
        {"max_epochs": 2, "limit_train_batches": 15, "min_epochs": 1},  # a last, short accumulation window
    ],
)
def test_at_s_one_the_gain_is_one_and_the_fit_equals_lightnings_own_stepping(
    tmp_path: Path, model_cls: type[_Regression], limits: dict[str, Any]
) -> None:
    """Base 16, batch 8 × 2 accumulation: S = 1, so r_t = 1 = S at every step, and a scale-invariant fit must equal the
    same fit without the flag, where Lightning steps the schedulers and stops the run, step for step and bit for bit."""
    runs = []
    for invariant in (False, True):
        model = model_cls()
        callback = BatchScalingCallback(base_batch_size=16, rule="adascale", scale_invariant=invariant)
        options = {"limit_train_batches": 16, "accumulate_grad_batches": 2, **limits}
        trainer = quiet_trainer(tmp_path / str(invariant), callbacks=[callback], **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the factor-1 warning
            trainer.fit(model)
        states = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
        runs.append((model.used, trainer.global_step, trainer.current_epoch, states, trainer.max_steps))
    assert runs[1][0] == runs[0][0]  # bit for bit
    assert runs[1][1:] == runs[0][1:]
    assert runs[0][4] == limits.get("max_steps", -1)


class _Recording(_TwoSchedulers):
    """Records the validation runs and the epoch ends as (global_step, epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int, int]] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def val_dataloader(self) -> Any:
        return DataLoader(self.data, batch_size=8)

    def on_validation_end(self) -> None:
        self.events.append(("val", self.trainer.global_step, self.current_epoch))

    def on_train_epoch_end(self) -> None:
        self.events.append(("epoch_end", self.trainer.global_step, self.current_epoch))


def test_at_s_one_a_resume_of_a_max_steps_plan_restarts_as_lightning_does(tmp_path: Path) -> None:
    """A checkpoint written at validation end, resumed under a plan by `max_steps`: the same validations, epoch ends
    and LRs with the flag as without it (Lightning restarts by steps when `max_steps` is set), and the LRs of the
    uninterrupted run. Before 2.5 Lightning's own resume from there steps the per-epoch scheduler once more (the
    flag's stepping does not), so only the second holds there."""
    runs = []
    for invariant in (False, True):
        root = tmp_path / str(invariant)
        every = ModelCheckpoint(dirpath=str(root / "ckpt"), every_n_epochs=1, save_top_k=-1, filename="{epoch}")
        options: dict[str, Any] = {
            "max_epochs": -1,
            "max_steps": 10,
            "limit_train_batches": 8,  # 4 steps an epoch
            "limit_val_batches": 1,
            "accumulate_grad_batches": 2,
            "enable_checkpointing": True,
        }
        first = _Recording()
        callback = BatchScalingCallback(base_batch_size=16, rule="adascale", scale_invariant=invariant)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the factor-1 warning
            quiet_trainer(root, callbacks=[callback, every], **options).fit(first)
            resumed = _Recording()
            callback = BatchScalingCallback(base_batch_size=16, rule="adascale", scale_invariant=invariant)
            trainer = quiet_trainer(root / "resumed", callbacks=[callback], **options)
            trainer.fit(resumed, ckpt_path=str(root / "ckpt" / "epoch=0.ckpt"))
        states = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
        runs.append((first.events, first.used, resumed.events, resumed.used, trainer.global_step, states))
    flag_first_used, flag_resumed_used = runs[1][1], runs[1][3]
    assert flag_resumed_used == pytest.approx(flag_first_used[4:], rel=1e-12)  # the uninterrupted run's LRs
    assert runs[1][2]  # the resumed fit trained and validated
    if Version(pl.__version__) >= Version("2.5"):
        assert runs[1] == runs[0]


def test_resuming_at_another_scale_is_refused(tmp_path: Path) -> None:
    done = _TwoSchedulers()
    trainer, _ = _fit(tmp_path, done, max_epochs=1)
    path = str(tmp_path / "s4.ckpt")
    trainer.save_checkpoint(path)
    other = _TwoSchedulers()
    with pytest.raises(ValueError, match=r"checkpoint, S = 4, and this fit has S = 2: resume with the same"):
        _fit(tmp_path / "other", other, ckpt=path, accumulate_grad_batches=2)
    assert other.used == []
    assert other.trainer.max_epochs == 2


def test_resuming_a_finished_run_trains_nothing(tmp_path: Path) -> None:
    done = _TwoSchedulers()
    trainer, _ = _fit(tmp_path, done)
    path = str(tmp_path / "done.ckpt")
    trainer.save_checkpoint(path)
    again = _TwoSchedulers()
    trainer2, callback = _fit(tmp_path / "again", again, ckpt=path)
    assert again.used == []
    assert trainer2.global_step == trainer.global_step
    assert [c.scheduler.last_epoch for c in trainer2.lr_scheduler_configs] == [8, 2]
    assert (trainer2.max_epochs, trainer2.max_steps) == (2, -1)


def test_resuming_with_a_larger_max_epochs_trains_on_to_the_new_plan(tmp_path: Path) -> None:
    done = _TwoSchedulers()
    trainer, _ = _fit(tmp_path, done)
    path = str(tmp_path / "done.ckpt")
    trainer.save_checkpoint(path)
    more = _TwoSchedulers()
    trainer2, callback = _fit(tmp_path / "more", more, ckpt=path, max_epochs=3)
    assert len(more.used) > 0
    assert callback.adascale.progress >= 12 * S > callback.adascale.progress - S  # 3 epochs × 4 steps × S
    assert [c.scheduler.last_epoch for c in trainer2.lr_scheduler_configs] == [12, 3]
    assert trainer2.max_epochs == 3


def test_min_epochs_do_not_carry_the_schedulers_past_the_plan(tmp_path: Path) -> None:
    plain = _TwoSchedulers()
    trainer, _ = _fit(tmp_path, plain)
    held = _TwoSchedulers()
    trainer2, _ = _fit(tmp_path / "min", held, min_epochs=10, min_steps=100)
    assert held.used == pytest.approx(plain.used, rel=1e-12)
    assert trainer2.global_step == trainer.global_step
    assert [c.scheduler.last_epoch for c in trainer2.lr_scheduler_configs] == [8, 2]


def test_a_fit_that_starts_past_step_zero_without_scale_invariant_state_is_refused(tmp_path: Path) -> None:
    plain = _TwoSchedulers()
    trainer, _ = _fit(tmp_path, plain, invariant=False, max_epochs=1)
    path = str(tmp_path / "plain.ckpt")
    trainer.save_checkpoint(path)  # written without scale_invariant: no progress in it
    resumed = _TwoSchedulers()
    with pytest.raises(ValueError, match="starts at global step 4 without it"):
        _fit(tmp_path / "resumed", resumed, ckpt=path)
    assert resumed.used == []
    assert resumed.trainer.max_epochs == 2
    again = _TwoSchedulers()
    trainer3, _ = _fit(tmp_path / "again", again)
    with pytest.raises(ValueError, match="or a second `fit` of the same Trainer"):
        trainer3.fit(again)


class _Plateau(_Regression):
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "train_loss"}}


class _EveryOtherStep(_Regression):
    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        config["lr_scheduler"]["frequency"] = 2
        return config


class _OwnSchedulerStep(_Regression):
    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step()


class _Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        torch.manual_seed(1)
        while True:
            x = torch.randn(4)
            yield x, x.sum(0, keepdim=True)


class _Iterable(_Regression):
    def train_dataloader(self) -> Any:
        return DataLoader(_Stream(), batch_size=8)


class _IterablePerEpoch(_Iterable):
    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        config["lr_scheduler"]["interval"] = "epoch"
        return config


@pytest.mark.parametrize(
    ("model_cls", "kwargs", "match"),
    [
        (_Plateau, {}, "ReduceLROnPlateau follows a metric"),
        (_EveryOtherStep, {}, "supports `frequency=1`, got frequency=2"),
        (_OwnSchedulerStep, {}, "_OwnSchedulerStep overrides `lr_scheduler_step`"),
        (_Regression, {"max_epochs": -1}, "needs `max_steps`, or `max_epochs` with a train loader of known length"),
        (_Iterable, {"limit_train_batches": 1.0}, "needs `max_steps`, or `max_epochs` with a train loader of known"),
        (
            _IterablePerEpoch,
            {"limit_train_batches": 1.0, "max_epochs": -1, "max_steps": 6},
            "needs a train loader with a length \\(ExponentialLR is per epoch\\)",
        ),
    ],
)
def test_what_it_cannot_follow_exactly_is_refused_before_anything_changes(
    tmp_path: Path, model_cls: type[_Regression], kwargs: dict[str, Any], match: str
) -> None:
    model = model_cls()
    before = copy.deepcopy(model.state_dict())
    callback = BatchScalingCallback(base_batch_size=8, rule="adascale", scale_invariant=True)
    options: dict[str, Any] = {"max_epochs": 2, "limit_train_batches": 8, "accumulate_grad_batches": 2, **kwargs}
    trainer = quiet_trainer(tmp_path, callbacks=[callback], **options)
    with pytest.raises(ValueError, match=match):
        trainer.fit(model)
    assert model.used == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.max_epochs == options["max_epochs"]


def test_needs_rule_adascale_and_a_bool() -> None:
    with pytest.raises(ValueError, match="`scale_invariant=True` .* needs rule='adascale', got rule='linear'"):
        BatchScalingCallback(rule="linear", scale_invariant=True)
    with pytest.raises(ValueError, match="scale_invariant"):
        BatchScalingCallback(rule="adascale", scale_invariant=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("callback", "match"),
    [
        (StochasticWeightAveraging(swa_lrs=0.01), "StochasticWeightAveraging starts and anneals by epoch number"),
        (GradientAccumulationScheduler({0: 2, 1: 4}), "which a GradientAccumulationScheduler changes"),
    ],
)
def test_callbacks_that_need_the_epoch_limit_or_change_the_plan_are_refused(
    tmp_path: Path, callback: pl.Callback, match: str
) -> None:
    model = _Regression()
    before = copy.deepcopy(model.state_dict())
    lrbs = BatchScalingCallback(base_batch_size=8, rule="adascale", scale_invariant=True)
    extra = {} if isinstance(callback, GradientAccumulationScheduler) else {"accumulate_grad_batches": 2}
    trainer = quiet_trainer(tmp_path, callbacks=[lrbs, callback], max_epochs=2, limit_train_batches=8, **extra)
    with pytest.raises(ValueError, match=match):
        trainer.fit(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.max_epochs == 2


class _Finder(_Regression):
    def __init__(self) -> None:
        super().__init__(gamma=None)
        self.lr = 0.05

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def test_a_learning_rate_finder_in_the_fit_sweeps_first_and_the_run_then_counts_its_own_steps(tmp_path: Path) -> None:
    model = _Finder()
    lrbs = BatchScalingCallback(base_batch_size=8, rule="adascale", scale_invariant=True)
    finder = LearningRateFinder(num_training_steps=6, early_stop_threshold=None)
    trainer = quiet_trainer(
        tmp_path, callbacks=[lrbs, finder], max_epochs=2, limit_train_batches=16, accumulate_grad_batches=4
    )
    trainer.fit(model)
    assert lrbs._adascale is not None
    assert finder.optimal_lr is not None  # it swept
    assert len(model.used) == trainer.global_step > 8  # the finder put its steps back
    assert lrbs._adascale.progress >= 8 * S  # the planned work, counted from the fit's own steps only
    assert lrbs._adascale.progress - S < 8 * S
    assert (trainer.max_epochs, trainer.max_steps) == (2, -1)


@pytest.mark.slow
def test_ddp_two_processes_step_and_stop_together(tmp_path: Path) -> None:
    """2 devices, no accumulation (S = 2): both ranks apply the same gains, step the scheduler at the same steps and
    stop at the same step, once the planned 8 steps' work (16 base-batch steps) is done."""
    ranks = run_script("adascale_ddp.py", tmp_path, "si")
    assert ranks[0] == ranks[1]
    result = ranks[0]
    gains = [1.0] + [_expected_gain(tuple(st), 8, 2.0) for st in result["stats"][:-1]]
    progress = [sum(gains[:t]) for t in range(len(gains) + 1)]
    expected = [0.05 * 0.9 ** math.floor(progress[t] / 2 + 1e-9) * gains[t] for t in range(len(gains))]
    assert result["used"] == pytest.approx(expected, rel=1e-9)
    assert result["steps"] == len(gains) > 8
    assert progress[-2] < 16 <= progress[-1] == pytest.approx(result["progress"], rel=1e-12)
    assert result["scheduler_steps"] == 8
    assert result["max_epochs"] == 1


class _FailsAtStep(_Regression):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.trainer.global_step == 3:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_an_exception_gives_the_trainer_its_limits_and_frequencies_back(tmp_path: Path) -> None:
    model = _FailsAtStep()
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, model)
    trainer = model.trainer
    assert (trainer.max_epochs, trainer.max_steps) == (2, -1)
    assert [config.frequency for config in trainer.lr_scheduler_configs] == [1]


class _GrowingBatch(_TwoSchedulers):
    """The loader's batch goes 8 → 16 at epoch 1 (reloaded every epoch); records the LR at each epoch's end."""

    def __init__(self) -> None:
        super().__init__()
        self.at_epoch_end: list[float] = []

    def train_dataloader(self) -> Any:
        return DataLoader(self.data, batch_size=8 if self.trainer.current_epoch == 0 else 16)

    def on_train_epoch_end(self) -> None:
        self.at_epoch_end.append(float(self.trainer.optimizers[0].param_groups[0]["lr"]))


def test_a_reloaded_loader_with_another_batch_size_is_refused_before_it_changes_anything(tmp_path: Path) -> None:
    # The schedulers' periods and the planned work were counted at S = 8 × 2 / 8 = 2; a batch of 16 would make S = 4.
    model = _GrowingBatch()
    with pytest.raises(ValueError, match=r"started with, S = 2, and the effective batch is now 32 \(S = 4, epoch 1\)"):
        _fit(tmp_path, model, accumulate_grad_batches=2, reload_dataloaders_every_n_epochs=1, limit_train_batches=8)
    assert len(model.used) == 4  # epoch 0's steps, none at the new batch
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == model.at_epoch_end[0]  # not rescaled
    assert model.trainer.max_epochs == 2  # the lifted limits are back
