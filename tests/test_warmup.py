"""Linear warmup (issue 3): the LR the optimizer really uses at optimizer step ``t`` is the scheduled LR times
``w(t) = s + (1 - s) * min(1, t / W)``, and the scheduler never sees a warmed value.

Every run is a real ``Trainer`` on a tiny ``BoringModel``. Three optimizer step hooks record each step:

- a pre-hook registered in ``on_fit_start``, before the warmup's (which is registered in ``on_train_start``): the
  *scheduled* LR;
- a pre-hook registered in ``on_train_start`` after the warmup's (the recorder comes after the callback in
  ``callbacks``): the *applied* LR;
- a post-hook registered after the warmup's: the LR right after the step, and, for plain SGD, the LR the update
  really used, measured as ``(param_before - param_after) / grad``.

``w(t)`` is computed here from the formula, never with the library's ``warmup_factor``.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler, LearningRateMonitor
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset, RandomIterableDataset
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.optim import lr_scheduler as S
from torch.utils.data import DataLoader

from lightning_lrbs import BatchScalingCallback, LinearWarmup
from lightning_lrbs.summary import lrbs_lr_names

LR = 0.1
BATCH = 4
REL = 1e-9


def w_expected(t: int, warmup: int, start: float) -> float:
    """The issue's formula, written out independently of the library."""
    return start + (1.0 - start) * min(1.0, t / warmup)


def make_trainer(tmp_path: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 3,
        "limit_train_batches": 8,
        "limit_val_batches": 0,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "logger": False,
        "callbacks": callbacks,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


class WarmupModel(BoringModel):
    """SGD (no momentum, so an update is exactly ``lr * grad``) over two groups, LRs ``LR`` and ``LR / 2``.

    Args:
        scheduler: ``(optimizer) -> scheduler`` or ``None``.
        interval: Lightning scheduler interval.
        lr: LR of the first group (a float or a tensor).
        batch_size: Train loader batch size.
    """

    def __init__(
        self,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        interval: str = "step",
        lr: float | torch.Tensor = LR,
        batch_size: int = BATCH,
    ) -> None:
        super().__init__()
        self.scheduler, self.interval, self.lr, self.batch_size = scheduler, interval, lr, batch_size
        self.optimizer: torch.optim.Optimizer | None = None

    def make_optimizer(self) -> torch.optim.Optimizer:
        second = self.lr / 2 if not isinstance(self.lr, torch.Tensor) else (self.lr / 2).clone()
        return torch.optim.SGD(
            [{"params": [self.layer.weight], "lr": self.lr}, {"params": [self.layer.bias], "lr": second}], lr=LR
        )

    def configure_optimizers(self) -> Any:
        self.optimizer = optimizer = self.make_optimizer()
        if self.scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": self.interval},
        }

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 256), batch_size=self.batch_size)


class LRRecorder(pl.Callback):
    """Records each optimizer step of the first optimizer; place it after ``BatchScalingCallback``."""

    def __init__(self, measure: bool = False) -> None:
        self.measure = measure
        self.steps: list[int] = []  # trainer.global_step seen by the applied pre-hook
        self.epochs: list[int] = []
        self.batches: list[int] = []  # train batches started so far, at each optimizer step
        self.scheduled: list[list[float]] = []
        self.applied: list[list[float]] = []
        self.after: list[list[float]] = []
        self.used: list[float] = []  # the LR the SGD update of group 0 really used
        self.batch_end: list[list[float]] = []  # LRs at every on_train_batch_end (after the scheduler)
        self._batches = 0
        self._before: torch.Tensor | None = None

    @staticmethod
    def _lrs(optimizer: torch.optim.Optimizer) -> list[float]:
        return [float(group["lr"]) for group in optimizer.param_groups]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.optimizers[0].register_step_pre_hook(lambda o, a, k: self.scheduled.append(self._lrs(o)))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]

        def pre(o: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.steps.append(trainer.global_step)
            self.epochs.append(trainer.current_epoch)
            self.batches.append(self._batches)
            self.applied.append(self._lrs(o))
            if self.measure:
                self._before = o.param_groups[0]["params"][0].detach().clone()

        def post(o: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.after.append(self._lrs(o))
            if self.measure and self._before is not None:
                param = o.param_groups[0]["params"][0]
                assert param.grad is not None
                grad = param.grad.detach()
                mask = grad.abs() > 1e-3
                self.used.append(float(((self._before - param.detach())[mask] / grad[mask]).median()))

        optimizer.register_step_pre_hook(pre)
        optimizer.register_step_post_hook(post)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._batches += 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.batch_end.append(self._lrs(trainer.optimizers[0]))


def run(
    tmp_path: Path, model: pl.LightningModule, callback: BatchScalingCallback, measure: bool = False, **kwargs: Any
) -> LRRecorder:
    recorder = LRRecorder(measure=measure)
    make_trainer(tmp_path, [callback, recorder], **kwargs).fit(model)
    return recorder


def flat(rows: list[list[float]]) -> list[float]:
    return [value for row in rows for value in row]


def assert_follows_formula(rec: LRRecorder, warmup: int, start: float) -> None:
    """Applied = scheduled × w(t) for every group, exactly scheduled from step W on, and restored after the step."""
    assert rec.applied, "no optimizer step was recorded"
    assert len(rec.applied) == len(rec.scheduled) == len(rec.after) == len(rec.steps)
    for t, scheduled, applied, after in zip(rec.steps, rec.scheduled, rec.applied, rec.after):
        w = w_expected(t, warmup, start)
        assert applied == pytest.approx([lr * w for lr in scheduled], rel=REL), f"step {t}"
        assert after == scheduled, f"step {t}: the scheduled LR was not put back"
        if t >= warmup:
            assert applied == scheduled, f"step {t}: w must be exactly 1 after the warmup"


SCHEDULERS: dict[str, tuple[Callable[[torch.optim.Optimizer], Any] | None, str]] = {
    "none": (None, "step"),
    "StepLR": (lambda o: S.StepLR(o, step_size=3, gamma=0.5), "step"),
    "ExponentialLR": (lambda o: S.ExponentialLR(o, gamma=0.7), "epoch"),
    "CosineAnnealingLR": (lambda o: S.CosineAnnealingLR(o, T_max=24, eta_min=0.001), "step"),
    "OneCycleLR": (lambda o: S.OneCycleLR(o, max_lr=[0.4, 0.2], total_steps=25, cycle_momentum=False), "step"),
    "LambdaLR": (lambda o: S.LambdaLR(o, lr_lambda=lambda e: 1.0 / (1.0 + e)), "step"),
}


class TestFormula:
    @pytest.mark.parametrize("accumulation", [1, 4])
    @pytest.mark.parametrize("name", list(SCHEDULERS))
    def test_applied_lr_is_scheduled_times_w(self, tmp_path: Path, name: str, accumulation: int) -> None:
        """Factor 4×accumulation on two groups; 8 optimizer steps per epoch, 3 epochs, warmup 10 steps from the
        unscaled LR. The scheduled sequence is identical to the same run without warmup (nothing compounds)."""
        scheduler, interval = SCHEDULERS[name]
        factor = BATCH * accumulation  # base_batch_size=1, linear rule
        kwargs = {"limit_train_batches": 8 * accumulation, "accumulate_grad_batches": accumulation}

        def fit(warmup: int, path: Path) -> LRRecorder:
            callback = BatchScalingCallback(base_batch_size=1, warmup_steps=warmup)
            return run(path, WarmupModel(scheduler, interval), callback, measure=True, **kwargs)

        plain = fit(0, tmp_path / "plain")
        warm = fit(10, tmp_path / "warm")

        assert warm.steps == list(range(24))
        assert warm.scheduled == plain.scheduled  # the warmup never reaches the scheduler
        assert warm.batch_end == plain.batch_end
        assert warm.applied != warm.scheduled
        assert_follows_formula(warm, warmup=10, start=1.0 / factor)
        # the update the optimizer made really used the applied LR (float32 parameters)
        assert warm.used == pytest.approx([lrs[0] for lrs in warm.applied], rel=1e-3)
        assert plain.used == pytest.approx([lrs[0] for lrs in plain.scheduled], rel=1e-3)
        # optimizer steps, not batches: the 10 warmup steps span 10 × accumulation batches
        assert warm.batches[:11] == [accumulation * (t + 1) for t in range(11)]
        assert warm.applied[0] == pytest.approx([s / factor for s in warm.scheduled[0]], rel=REL)

    def test_explicit_start_factor_without_scaling(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback(rule="none", warmup_steps=5, warmup_start_factor=0.3)
        rec = run(tmp_path, WarmupModel(), callback, max_epochs=1)
        assert_follows_formula(rec, warmup=5, start=0.3)
        assert rec.scheduled[0] == pytest.approx([LR, LR / 2], rel=REL)
        assert rec.applied[0] == pytest.approx([0.3 * LR, 0.3 * LR / 2], rel=REL)

    def test_default_start_is_zero_when_factor_is_one(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback(warmup_steps=4)  # base = per-device batch: factor 1
        with pytest.warns(RuntimeWarning, match="factor is 1"):
            rec = run(tmp_path, WarmupModel(), callback, max_epochs=1)
        assert rec.applied[0] == [0.0, 0.0]
        assert_follows_formula(rec, warmup=4, start=0.0)
        assert "warmup 4 steps from ×0" in callback.summary

    def test_tensor_lr_is_warmed_in_place(self, tmp_path: Path) -> None:
        lr = torch.tensor(LR, dtype=torch.float64)  # float64 so that rel 1e-9 holds
        seen: list[int] = []

        class Identity(pl.Callback):
            def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
                seen.append(id(trainer.optimizers[0].param_groups[0]["lr"]))

        model = WarmupModel(lambda o: S.StepLR(o, step_size=2, gamma=0.5), lr=lr)
        callback = BatchScalingCallback(base_batch_size=2, warmup_steps=5)
        recorder = LRRecorder()
        make_trainer(tmp_path, [callback, recorder, Identity()], max_epochs=1).fit(model)
        assert_follows_formula(recorder, warmup=5, start=0.5)
        assert seen == [id(lr)] * len(seen)

    def test_opted_out_group_is_not_warmed(self, tmp_path: Path) -> None:
        class Model(WarmupModel):
            def make_optimizer(self) -> torch.optim.Optimizer:
                groups = [
                    {"params": [self.layer.weight], "lr": LR},
                    {"params": [self.layer.bias], "lr": LR / 2, "lrbs_scale": False},
                ]
                return torch.optim.SGD(groups, lr=LR)

        callback = BatchScalingCallback(rule="none", warmup_steps=4, warmup_start_factor=0.5)
        rec = run(tmp_path, Model(), callback, max_epochs=1)
        for t, scheduled, applied in zip(rec.steps, rec.scheduled, rec.applied):
            assert applied[0] == pytest.approx(scheduled[0] * w_expected(t, 4, 0.5), rel=REL)
            assert applied[1] == scheduled[1] == LR / 2


class ManualModel(WarmupModel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(lambda o: S.StepLR(o, step_size=3, gamma=0.5), **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        opt = self.optimizers()
        opt.zero_grad()
        loss = self.loss(self(batch))
        self.manual_backward(loss)
        opt.step()
        self.lr_schedulers().step()
        return loss


class LBFGSModel(WarmupModel):
    """LBFGS with a StepLR; records the LR the closure (training_step) sees at every evaluation."""

    def __init__(self) -> None:
        super().__init__(lambda o: S.StepLR(o, step_size=3, gamma=0.5))
        self.closure_lrs: list[tuple[int, float]] = []

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(self.parameters(), lr=LR, max_iter=4, history_size=4)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.closure_lrs.append((self.trainer.global_step, float(self.trainer.optimizers[0].param_groups[0]["lr"])))
        return super().training_step(batch, batch_idx)


class TestOptimization:
    def test_manual_optimization(self, tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
        def fit(warmup: int, path: Path) -> LRRecorder:
            callback = BatchScalingCallback(base_batch_size=1, warmup_steps=warmup)
            return run(path, ManualModel(), callback, measure=True, max_epochs=2)

        plain, warm = fit(0, tmp_path / "plain"), fit(10, tmp_path / "warm")
        assert warm.steps == list(range(16))
        assert warm.scheduled == plain.scheduled
        assert_follows_formula(warm, warmup=10, start=1.0 / BATCH)
        assert warm.used == pytest.approx([lrs[0] for lrs in warm.applied], rel=1e-3)
        assert not [w for w in recwarn if "stepped twice" in str(w.message)]

    def test_manual_raw_optimizer_warns_that_the_warmup_is_stuck(self, tmp_path: Path) -> None:
        """Stepping the raw torch optimizer does not advance ``trainer.global_step``: the warmup cannot move on, and
        says so instead of training at the start factor forever."""

        class RawModel(ManualModel):
            def training_step(self, batch: Any, batch_idx: int) -> Any:
                opt = self.optimizers(use_pl_optimizer=False)
                opt.zero_grad()
                self.manual_backward(self.loss(self(batch)))
                opt.step()

        callback = BatchScalingCallback(rule="none", warmup_steps=4, warmup_start_factor=0.2)
        with pytest.warns(RuntimeWarning, match=r"stepped twice at warmup step 0: .*stuck at the factor 0\.2\b"):
            rec = run(tmp_path, RawModel(), callback, max_epochs=1)
        assert rec.steps == [0] * 8

    def test_lbfgs_applies_once_per_step(self, tmp_path: Path) -> None:
        def fit(warmup: int, path: Path) -> tuple[LRRecorder, LBFGSModel]:
            model = LBFGSModel()
            callback = BatchScalingCallback(base_batch_size=2, warmup_steps=warmup)
            return run(path, model, callback, max_epochs=1), model

        (plain, _), (warm, model) = fit(0, tmp_path / "plain"), fit(6, tmp_path / "warm")
        assert warm.scheduled == plain.scheduled
        assert_follows_formula(warm, warmup=6, start=0.5)
        calls: dict[int, list[float]] = {}
        for t, lr in model.closure_lrs:
            calls.setdefault(t, []).append(lr)
        assert sorted(calls) == warm.steps
        assert max(len(lrs) for lrs in calls.values()) > 1, "LBFGS should evaluate its closure several times"
        for t, scheduled in zip(warm.steps, warm.scheduled):
            # every evaluation inside the step sees scheduled × w once (never w², never unwarmed)
            assert calls[t] == pytest.approx([scheduled[0] * w_expected(t, 6, 0.5)] * len(calls[t]), rel=REL)

    def test_amp_skipped_step_leaves_nothing_warmed(self, tmp_path: Path) -> None:
        """fp16 AMP on CPU through the MixedPrecision plugin: an inf loss makes GradScaler skip ``optimizer.step``.
        The LR after a skipped step is the scheduled one, and later steps follow the formula in the Trainer's step
        count (which counts skipped steps)."""
        skipped = {2, 5}

        class InfModel(WarmupModel):
            def training_step(self, batch: Any, batch_idx: int) -> Any:
                out = super().training_step(batch, batch_idx)
                if self.trainer.global_step in skipped:
                    out["loss"] = out["loss"] * float("inf")
                return out

        def fit(warmup: int, path: Path) -> tuple[LRRecorder, pl.Trainer]:
            scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=10_000)
            callback = BatchScalingCallback(base_batch_size=2, warmup_steps=warmup)
            recorder = LRRecorder()
            trainer = make_trainer(
                path,
                [callback, recorder],
                max_epochs=1,
                plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
            )
            trainer.fit(InfModel(lambda o: S.StepLR(o, step_size=2, gamma=0.5)))
            return recorder, trainer

        (plain, _), (warm, trainer) = fit(0, tmp_path / "plain"), fit(6, tmp_path / "warm")
        assert trainer.precision_plugin.scaler is not None
        assert trainer.precision_plugin.scaler.get_scale() == 0.25  # halved at each of the two skips
        assert warm.steps == [t for t in range(8) if t not in skipped]  # the skipped steps ran no optimizer hook
        assert warm.batch_end == plain.batch_end  # the scheduled LR, also right after a skipped step
        assert_follows_formula(warm, warmup=6, start=0.5)


class StopAt(pl.Callback):
    """Saves a checkpoint after optimizer step ``step`` and stops the fit there."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


class TestResume:
    def test_resumed_mid_warmup_equals_uninterrupted(self, tmp_path: Path) -> None:
        def callback() -> BatchScalingCallback:
            return BatchScalingCallback(base_batch_size=1, warmup_steps=9)

        def model() -> WarmupModel:
            return WarmupModel(lambda o: S.StepLR(o, step_size=2, gamma=0.7))

        kwargs: dict[str, Any] = {"max_epochs": 2, "limit_train_batches": 6}
        full = run(tmp_path / "full", model(), callback(), **kwargs)
        assert full.steps == list(range(12))

        ckpt = tmp_path / "mid.ckpt"
        first = LRRecorder()
        make_trainer(tmp_path / "a", [callback(), first, StopAt(4, ckpt)], **kwargs).fit(model())
        assert first.steps == [0, 1, 2, 3]
        second_cb, second = callback(), LRRecorder()
        make_trainer(tmp_path / "b", [second_cb, second], **kwargs).fit(model(), ckpt_path=ckpt)

        assert second.steps == list(range(4, 12))
        assert flat(first.applied + second.applied) == pytest.approx(flat(full.applied), rel=REL)
        assert flat(first.scheduled + second.scheduled) == pytest.approx(flat(full.scheduled), rel=REL)
        assert_follows_formula(second, warmup=9, start=1.0 / BATCH)
        assert second_cb.state_dict()["warmup_steps"] == 9
        assert second_cb.state_dict()["warmup_start_factors"] == [1.0 / BATCH]

    def test_resume_keeps_the_length_resolved_from_epochs(self, tmp_path: Path) -> None:
        """``warmup_epochs`` is turned into steps once; a resume with another epoch length does not recompute it."""
        ckpt = tmp_path / "mid.ckpt"
        first_cb = BatchScalingCallback(base_batch_size=1, warmup_epochs=1.0)
        make_trainer(tmp_path / "a", [first_cb, StopAt(2, ckpt)], limit_train_batches=8).fit(WarmupModel())
        assert first_cb.state_dict()["warmup_steps"] == 8
        second_cb, rec = BatchScalingCallback(base_batch_size=1, warmup_epochs=1.0), LRRecorder()
        make_trainer(tmp_path / "b", [second_cb, rec], limit_train_batches=4).fit(WarmupModel(), ckpt_path=ckpt)
        assert rec.steps[0] == 2
        assert second_cb.state_dict()["warmup_steps"] == 8
        assert_follows_formula(rec, warmup=8, start=1.0 / BATCH)

    def test_effective_batch_change_does_not_restart(self, tmp_path: Path) -> None:
        """Accumulation 1 → 2 at epoch 1: the factor doubles, the warmup keeps its length, start and step count."""
        callback = BatchScalingCallback(base_batch_size=2, warmup_steps=10)
        recorder = LRRecorder()
        seen: list[Any] = []

        class Watch(pl.Callback):
            def on_train_epoch_end(self, trainer: pl.Trainer, *args: Any) -> None:
                seen.append(callback.warmup)

        accumulation = GradientAccumulationScheduler({0: 1, 1: 2})
        make_trainer(tmp_path, [callback, accumulation, recorder, Watch()], max_epochs=2).fit(WarmupModel())
        assert recorder.steps == list(range(12))
        assert seen[0] is seen[1] is not None
        assert callback.effective_batch_size == 2 * BATCH
        assert recorder.scheduled[7] == pytest.approx([LR * 2, LR])  # epoch 0: factor 2
        assert recorder.scheduled[8] == pytest.approx([LR * 4, LR * 2])  # epoch 1: factor 4
        assert_follows_formula(recorder, warmup=10, start=0.5)
        assert "warmup 10 steps from ×0.5" in callback.summary


class TestWarmupEpochs:
    @pytest.mark.parametrize(("batches", "accumulation", "per_epoch"), [(10, 1, 10), (10, 4, 3), (9, 2, 5), (7, 1, 7)])
    def test_half_epoch_is_half_the_optimizer_steps(
        self, tmp_path: Path, batches: int, accumulation: int, per_epoch: int
    ) -> None:
        callback = BatchScalingCallback(base_batch_size=1, warmup_epochs=0.5)
        rec = run(
            tmp_path,
            WarmupModel(),
            callback,
            max_epochs=2,
            limit_train_batches=batches,
            accumulate_grad_batches=accumulation,
        )
        assert rec.epochs.count(0) == per_epoch  # the optimizer steps of one epoch, a last partial window counted
        warmup = math.ceil(per_epoch / 2)
        assert callback.warmup is None  # removed at the end of the fit
        assert callback.state_dict()["warmup_steps"] == warmup
        assert_follows_formula(rec, warmup=warmup, start=1.0 / (BATCH * accumulation))
        assert f"warmup {warmup} steps from" in callback.summary

    def test_equal_to_the_same_number_of_steps(self, tmp_path: Path) -> None:
        by_epochs = run(tmp_path / "e", WarmupModel(), BatchScalingCallback(base_batch_size=1, warmup_epochs=0.5))
        by_steps = run(tmp_path / "s", WarmupModel(), BatchScalingCallback(base_batch_size=1, warmup_steps=4))
        assert by_epochs.applied == by_steps.applied

    def test_warmup_exposed_during_fit(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback(base_batch_size=1, warmup_epochs=0.5)
        lengths: list[int] = []

        class Read(pl.Callback):
            def on_train_batch_start(self, *args: Any) -> None:
                assert callback.warmup is not None
                lengths.append(callback.warmup.warmup_steps)

        make_trainer(tmp_path, [callback, Read()], max_epochs=1, limit_train_batches=6).fit(WarmupModel())
        assert lengths == [3] * 6

    def test_loader_without_length_fails_before_any_change(self, tmp_path: Path) -> None:
        class Model(WarmupModel):
            def train_dataloader(self) -> DataLoader[Any]:
                return DataLoader(RandomIterableDataset(32, 64), batch_size=BATCH)

        model = Model()
        callback = BatchScalingCallback(base_batch_size=1, warmup_epochs=0.5)
        trainer = make_trainer(tmp_path, [callback], max_epochs=-1, max_steps=4, limit_train_batches=None)
        with pytest.raises(ValueError, match=re.escape("`warmup_epochs=0.5` needs a train loader with a length")):
            trainer.fit(model)
        assert model.optimizer is not None
        assert [group["lr"] for group in model.optimizer.param_groups] == [LR, LR / 2]  # not scaled ×4
        assert callback.scale_factors == ()


class TestArguments:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"warmup_steps": -1}, "`warmup_steps` must be a non-negative int, got -1"),
            ({"warmup_steps": 2.5}, "`warmup_steps` must be a non-negative int, got 2.5"),
            ({"warmup_steps": True}, "`warmup_steps` must be a non-negative int, got True"),
            ({"warmup_epochs": -0.5}, "`warmup_epochs` must be a non-negative finite number, got -0.5"),
            ({"warmup_epochs": math.inf}, "`warmup_epochs` must be a non-negative finite number, got inf"),
            ({"warmup_epochs": math.nan}, "`warmup_epochs` must be a non-negative finite number, got nan"),
            ({"warmup_epochs": "1"}, "`warmup_epochs` must be a non-negative finite number, got '1'"),
            (
                {"warmup_steps": 10, "warmup_epochs": 0.5},
                "give either `warmup_steps` or `warmup_epochs`, not both: got warmup_steps=10 and warmup_epochs=0.5",
            ),
            ({"warmup_start_factor": -0.1}, "`warmup_start_factor` must be in [0, 1], got -0.1"),
            ({"warmup_start_factor": 1.5}, "`warmup_start_factor` must be in [0, 1], got 1.5"),
            ({"warmup_start_factor": math.nan}, "`warmup_start_factor` must be in [0, 1], got nan"),
            ({"warmup_start_factor": "0.5"}, "`warmup_start_factor` must be in [0, 1], got '0.5'"),
        ],
    )
    def test_bad_input(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=re.escape(message)):
            BatchScalingCallback(**kwargs)

    @pytest.mark.parametrize("start", [0, 0.0, 1, 1.0])
    def test_bounds_accepted(self, start: float) -> None:
        assert BatchScalingCallback(warmup_steps=3, warmup_start_factor=start).warmup_start_factor == float(start)

    def test_linear_warmup_bad_input(self) -> None:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
        with pytest.raises(ValueError, match=re.escape("`warmup_steps` must be a non-negative int, got -2")):
            LinearWarmup(opt, warmup_steps=-2)
        with pytest.raises(ValueError, match=re.escape("`start_factor` must be in [0, 1], got 2")):
            LinearWarmup(opt, warmup_steps=2, start_factor=2)
        with pytest.raises(ValueError, match=re.escape("`start_factor` has 2 values for 1 optimizers")):
            LinearWarmup(opt, warmup_steps=2, start_factor=[0.1, 0.2])
        assert not opt._optimizer_step_pre_hooks  # nothing was attached
        assert not opt._optimizer_step_post_hooks


class TestLogging:
    def test_logs_applied_lr_next_to_learning_rate_monitor(self, tmp_path: Path) -> None:
        logger = CSVLogger(tmp_path, name="logs")
        callback = BatchScalingCallback(base_batch_size=1, warmup_steps=5)
        recorder = LRRecorder()
        trainer = make_trainer(
            tmp_path,
            [callback, recorder, LearningRateMonitor(logging_interval="step")],
            max_epochs=1,
            logger=logger,
            log_every_n_steps=1,
        )
        trainer.fit(WarmupModel(lambda o: S.StepLR(o, step_size=3, gamma=0.5)))
        with open(Path(logger.log_dir) / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        ours: dict[int, list[float]] = {}
        monitor: dict[int, list[float]] = {}
        for row in rows:
            step = int(row["step"])
            if row.get("lrbs/lr-SGD/pg1"):
                ours[step] = [float(row["lrbs/lr-SGD/pg1"]), float(row["lrbs/lr-SGD/pg2"])]
            if row.get("lr-SGD/pg1"):
                monitor[step] = [float(row["lr-SGD/pg1"]), float(row["lr-SGD/pg2"])]
        assert sorted(ours) == sorted(monitor) == list(range(8))
        for t in range(8):
            # same names as LearningRateMonitor under `lrbs/`; the values are what the optimizer used
            assert ours[t] == pytest.approx(recorder.applied[t], rel=REL)
            assert monitor[t] == pytest.approx(recorder.scheduled[t], rel=REL)
            assert ours[t] == pytest.approx([lr * w_expected(t, 5, 1.0 / BATCH) for lr in monitor[t]], rel=REL)
            assert (ours[t] != monitor[t]) == (t < 5)

    def test_names_follow_learning_rate_monitor(self) -> None:
        layer = torch.nn.Linear(2, 2)
        single = torch.optim.SGD(layer.parameters(), lr=LR)
        named = torch.optim.Adam([{"params": [layer.weight], "name": "head"}, {"params": [layer.bias]}], lr=LR)
        again = torch.optim.SGD([{"params": [layer.weight]}, {"params": [layer.bias]}], lr=LR)
        names = lrbs_lr_names([single, named, again])
        assert names == [
            ["lrbs/lr-SGD"],
            ["lrbs/lr-Adam/head", "lrbs/lr-Adam/pg2"],
            ["lrbs/lr-SGD-1/pg1", "lrbs/lr-SGD-1/pg2"],
        ]


class TestSummary:
    def test_summary_line(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        callback = BatchScalingCallback(base_batch_size=1, warmup_steps=500)
        with caplog.at_level(logging.INFO):
            make_trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=1).fit(WarmupModel(batch_size=8))
        assert callback.summary.endswith("; warmup 500 steps from ×0.125")
        assert "warmup 500 steps from ×0.125" in caplog.text

    def test_explicit_start_and_no_warmup(self, tmp_path: Path) -> None:
        warm = BatchScalingCallback(base_batch_size=1, warmup_steps=10, warmup_start_factor=0.25)
        make_trainer(tmp_path, [warm], max_epochs=1, limit_train_batches=1).fit(WarmupModel())
        assert "warmup 10 steps from ×0.25" in warm.summary
        cold = BatchScalingCallback(base_batch_size=1)
        make_trainer(tmp_path, [cold], max_epochs=1, limit_train_batches=1).fit(WarmupModel())
        assert "warmup" not in cold.summary


class TestLinearWarmupStandalone:
    """The pure-PyTorch class without Lightning: it counts its own steps, and a state dict resumes the ramp."""

    def test_counts_steps_and_resumes(self) -> None:
        def steps(warmup: LinearWarmup, opt: torch.optim.Optimizer, n: int) -> list[float]:
            seen: list[float] = []
            handle = opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
            for _ in range(n):
                opt.step()
            handle.remove()
            return seen

        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=LR)
        warmup = LinearWarmup(opt, warmup_steps=6, start_factor=0.4)
        head = steps(warmup, opt, 3)
        state = warmup.state_dict()
        warmup.remove()

        opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
        resumed = LinearWarmup(opt2, warmup_steps=6, start_factor=0.4)
        resumed.load_state_dict(state)
        tail = steps(resumed, opt2, 5)
        assert head + tail == pytest.approx([LR * w_expected(t, 6, 0.4) for t in range(8)], rel=REL)
        assert opt2.param_groups[0]["lr"] == LR

    def test_remove_puts_back_a_warmed_lr(self) -> None:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
        warmup = LinearWarmup(opt, warmup_steps=4, start_factor=0.5)

        def boom(o: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            raise RuntimeError("interrupted")

        handle = opt.register_step_pre_hook(boom)
        with pytest.raises(RuntimeError, match="interrupted"):
            opt.step()
        handle.remove()
        assert opt.param_groups[0]["lr"] == LR * 0.5  # warmed, the step never finished
        warmup.remove()
        assert opt.param_groups[0]["lr"] == LR

    def test_warns_once_when_step_fn_does_not_advance(self) -> None:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
        warmup = LinearWarmup(opt, warmup_steps=4, start_factor=0.5, step_fn=lambda: 0)
        opt.step()

        def three_more_steps() -> None:
            for _ in range(3):
                opt.step()

        with pytest.warns(RuntimeWarning, match=r"optimizer 0 \(SGD\) stepped twice at warmup step 0") as record:
            three_more_steps()
        assert len([w for w in record if "stepped twice" in str(w.message)]) == 1  # once, not at every step
        warmup.remove()
