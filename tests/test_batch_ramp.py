"""``batch_ramp``: the batch grows during training by accumulation, where Lightning's windows align; the LR and the time
constants follow every change from the module's own values, per-step schedulers and ``max_steps`` follow the samples,
resume is exact, and what cannot follow is refused before anything changes."""

from __future__ import annotations

import math
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lrbs_testing import quiet_trainer
from torch.utils.data import DataLoader

from lightning_lrbs import BatchScalingCallback
from lightning_lrbs.batch_ramp import BatchRamp, aligned

REL = 1e-9
# Per-device batch 4, target accumulation 4 (batch 16), ramp 4 → 16 by 4 every 32 samples (96 samples); 16 batches an
# epoch. Epoch 0: 8 steps at 1 (32 samples), then 4 at 2. Epoch 1 starts at 3 (64 consumed); after 3 steps 100 samples
# ask for 4, but batch 9 is not a multiple of 4: one more window of 3, then 4 from batch 12. Epoch 2: 4 steps of 4.
ACCUMULATIONS = [1] * 8 + [2] * 4 + [3] * 4 + [4] * 1 + [4] * 4


class Ramped(BoringModel):
    """BoringModel with SGD (LR 0.1) and ExponentialLR(0.5) per step; records, at each optimizer step, the LR it uses,
    the accumulation and the effective batch the callback holds, and the scheduler's steps so far."""

    def __init__(self, optimizer: str = "sgd", scheduler: Any = "exponential") -> None:
        super().__init__()
        self.optimizer_name, self.scheduler_kind = optimizer, scheduler
        self.lrs: list[float] = []
        self.accumulations: list[int] = []
        self.effective: list[int] = []
        self.scheduler_steps: list[int] = []
        self.betas: list[tuple[float, float]] = []

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        if self.scheduler_kind is None:
            return optimizer
        if self.scheduler_kind == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "train_loss"}}
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        self.log("train_loss", out["loss"])
        return out

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        callback = next(c for c in self.trainer.callbacks if isinstance(c, BatchScalingCallback))
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))
        self.accumulations.append(self.trainer.accumulate_grad_batches)
        self.effective.append(int(callback.effective_batch_size or 0))
        configs = self.trainer.lr_scheduler_configs
        self.scheduler_steps.append(configs[0].scheduler.last_epoch if configs else 0)
        if "betas" in optimizer.param_groups[0]:
            self.betas.append(tuple(optimizer.param_groups[0]["betas"]))

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 64), batch_size=4)


def ramp_fit(tmp_path: Path, model: Ramped, ckpt: str | None = None, **kwargs: Any) -> tuple[Any, Any]:
    options: dict[str, Any] = {"rule": "linear", "base_batch_size": 4, "batch_ramp": (4, 4, 96), "log_lr": False}
    options.update(kwargs.pop("callback", {}))
    callback = BatchScalingCallback(**options)
    trainer_options: dict[str, Any] = {"max_epochs": 3, "limit_train_batches": 16, "accumulate_grad_batches": 4}
    trainer_options.update(kwargs)
    trainer = quiet_trainer(tmp_path, callbacks=[callback, *trainer_options.pop("callbacks", [])], **trainer_options)
    trainer.fit(model, ckpt_path=ckpt)
    return trainer, callback


class TestRamp:
    def test_megatron_semantics(self) -> None:
        ramp = BatchRamp(start=32, increment=32, samples=3000)
        assert [ramp.batch(c, 128) for c in (0, 999, 1000, 1999, 2000, 2999, 3000)] == [32, 32, 64, 64, 96, 96, 128]
        assert ramp.batch(10**9, 128) == 128
        assert ramp.batch(0, 32) == 32  # a ramp that starts at the target
        assert [aligned(n, 3) for n in range(7)] == [True, False, False, True, False, False, True]

    @pytest.mark.parametrize(
        ("ramp", "target", "round_size", "match"),
        [
            ((6, 8, 100), 32, 4, r"batch_ramp start 6 is not a multiple of the micro-batch round 4"),
            ((8, 6, 100), 32, 4, r"batch_ramp increment 6 is not a multiple of the micro-batch round 4"),
            ((8, 16, 100), 32, 8, r"increment 16 does not divide the way from the start 8 to the target batch 32"),
            ((64, 8, 100), 32, 8, r"start 64 is larger than the target batch 32"),
        ],
    )
    def test_numbers_that_do_not_divide_are_named(
        self, ramp: tuple[int, int, int], target: int, round_size: int, match: str
    ) -> None:
        with pytest.raises(ValueError, match=match):
            BatchRamp(*ramp).check(target, round_size)

    @pytest.mark.parametrize(
        ("value", "match"),
        [
            (16, r"`batch_ramp` must be \(start, increment, samples\), three positive ints, got 16"),
            ((16, 16), r"three positive ints, got \(16, 16\)"),
            ((16, 0, 100), r"`batch_ramp increment` must be a positive int, got 0"),
            ((16, 16, 1.5), r"`batch_ramp samples` must be a positive int, got 1.5"),
        ],
    )
    def test_bad_arguments_are_named(self, value: Any, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            BatchScalingCallback(batch_ramp=value)

    def test_not_together_with_scale_invariant(self) -> None:
        with pytest.raises(ValueError, match="give one of the two"):
            BatchScalingCallback(rule="adascale", scale_invariant=True, batch_ramp=(8, 8, 100))


class TestFit:
    def test_accumulation_grows_where_the_windows_align_and_the_lr_follows(self, tmp_path: Path) -> None:
        model = Ramped()
        trainer, callback = ramp_fit(tmp_path, model)
        assert model.accumulations == ACCUMULATIONS
        assert model.effective == [4 * a for a in ACCUMULATIONS]
        consumed = [0, *accumulate([4 * a for a in ACCUMULATIONS])]
        # per-step scheduler: one step per 16 samples (the target batch), from the samples before each step
        assert model.scheduler_steps == [c // 16 for c in consumed[:-1]]
        expected = [0.1 * a * 0.5 ** (c // 16) for a, c in zip(ACCUMULATIONS, consumed)]  # linear: ×B_t / 4
        assert model.lrs == pytest.approx(expected, rel=REL)
        assert trainer.accumulate_grad_batches == 4  # the Trainer's own accumulation back
        assert "batch ramp 4 → 16: +4 every 32 samples (96 samples)" in callback.summary

    def test_sqrt_rule_and_sde_time_constants_follow_each_change(self, tmp_path: Path) -> None:
        model = Ramped(optimizer="adam", scheduler=None)
        ramp_fit(tmp_path, model, callback={"rule": "sde"})
        kappas = list(ACCUMULATIONS)  # B_t / base
        assert model.lrs == pytest.approx([0.01 * math.sqrt(k) for k in kappas], rel=REL)
        assert [b for betas in model.betas for b in betas] == pytest.approx(
            [b for k in kappas for b in (0.9**k, 0.999**k)], rel=REL
        )

    def test_max_steps_counts_steps_at_the_target_batch(self, tmp_path: Path) -> None:
        model = Ramped(scheduler=None)
        trainer, _ = ramp_fit(tmp_path, model, max_epochs=-1, max_steps=5)  # 5 × 16 = 80 samples
        consumed = list(accumulate([4 * a for a in ACCUMULATIONS]))
        steps = next(i for i, c in enumerate(consumed) if c >= 80) + 1
        assert len(model.lrs) == steps == trainer.global_step
        assert trainer.max_steps == 5  # the Trainer's own limit back

    def test_warmup_counts_target_batch_steps(self, tmp_path: Path) -> None:
        model = Ramped(scheduler=None)
        ramp_fit(tmp_path, model, callback={"warmup_steps": 4, "warmup_start_factor": 0.2})
        consumed = [0, *accumulate([4 * a for a in ACCUMULATIONS])]
        warm = [0.2 + 0.8 * min(1.0, c / 16 / 4) for c in consumed[:-1]]
        assert model.lrs == pytest.approx([0.1 * a * w for a, w in zip(ACCUMULATIONS, warm)], rel=REL)

    def test_resume_mid_ramp_at_an_epoch_end_equals_the_uninterrupted_run(self, tmp_path: Path) -> None:
        whole = Ramped()
        ramp_fit(tmp_path / "whole", whole)
        first = Ramped()
        trainer, _ = ramp_fit(tmp_path / "first", first, max_epochs=1)
        path = str(tmp_path / "epoch1.ckpt")
        trainer.save_checkpoint(path)
        resumed = Ramped()
        ramp_fit(tmp_path / "resumed", resumed, ckpt=path)
        assert first.lrs + resumed.lrs == pytest.approx(whole.lrs, rel=REL)
        assert first.accumulations + resumed.accumulations == whole.accumulations
        assert first.scheduler_steps + resumed.scheduler_steps == whole.scheduler_steps


class TestRefusals:
    @pytest.mark.parametrize(
        ("model", "kwargs", "match"),
        [
            (Ramped(scheduler="plateau"), {}, "ReduceLROnPlateau follows a metric"),
            (Ramped(), {"callbacks": [GradientAccumulationScheduler({0: 1})]}, "GradientAccumulationScheduler"),
            (Ramped(), {"callback": {"batch_ramp": (4, 8, 96)}}, r"increment 8 does not divide .* 4 to .* 16"),
            (
                Ramped(),
                {"callback": {"batch_ramp": (6, 4, 96)}},
                "start 6 is not a multiple of the micro-batch round 4",
            ),
        ],
        ids=["plateau", "accumulation-scheduler", "target-does-not-divide", "start-not-a-round"],
    )
    def test_refused_before_anything_changes(
        self, tmp_path: Path, model: Ramped, kwargs: dict[str, Any], match: str
    ) -> None:
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(ValueError, match=match):
            ramp_fit(tmp_path, model, **kwargs)
        assert model.lrs == []
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert model.trainer.accumulate_grad_batches == 4

    def test_manual_optimization_is_refused(self, tmp_path: Path) -> None:
        class Manual(Ramped):
            def __init__(self) -> None:
                super().__init__(scheduler=None)
                self.automatic_optimization = False

            def training_step(self, batch: Any, batch_idx: int) -> None:
                optimizer = self.optimizers()
                self.manual_backward(self.layer(batch).sum())
                optimizer.step()  # type: ignore[union-attr]
                optimizer.zero_grad()  # type: ignore[union-attr]

        # Lightning refuses accumulate_grad_batches > 1 itself under manual optimization; the ramp, which would set it
        # while training, is refused at fit start
        with pytest.raises(ValueError, match="grows the batch through Lightning's gradient accumulation, and Manual"):
            ramp_fit(tmp_path, Manual(), accumulate_grad_batches=1, callback={"batch_ramp": (4, 4, 96)})
