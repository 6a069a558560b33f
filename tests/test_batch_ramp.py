"""``batch_ramp``: the batch grows during training by accumulation, where Lightning's windows align; the LR and the time
constants follow every change from the module's own values, per-step schedulers and ``max_steps`` follow the samples,
resume is exact, and what cannot follow is refused before anything changes."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import math
import subprocess
import sys
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback, GradientAccumulationScheduler, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.loggers import CSVLogger
from lrbs_testing import SCRIPTS, quiet_trainer, rank_results, script_env
from torch.utils.data import DataLoader

from lightning_lrbs import BatchScalingCallback
from lightning_lrbs.batch_ramp import BatchRamp, aligned
from lightning_lrbs.preview import preview

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
        self.groups: list[dict[str, Any]] = []  # group 0's lr, betas, eps and weight decay at each step

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        elif self.optimizer_name == "adamw":
            optimizer = torch.optim.AdamW(self.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        if self.scheduler_kind is None:
            return optimizer
        if self.scheduler_kind == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "train_loss"}}
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
        frequency = 2 if self.scheduler_kind == "every-2-steps" else 1
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": frequency},
        }

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
        group = optimizer.param_groups[0]
        self.groups.append({k: group[k] for k in ("lr", "betas", "eps", "weight_decay") if k in group})

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

    def test_adamw_time_constants_and_weight_decay_are_those_of_a_fit_at_each_batch(self, tmp_path: Path) -> None:
        """rule="sde" with AdamW (weight decay 0.05): at every step of the ramp, the LR, betas, eps and decoupled
        weight decay in force are those a fit at that fixed batch (no ramp, the accumulation as the Trainer's) runs
        with: with kappa = B_t / 4, lr × sqrt(kappa), betas ** kappa, eps / sqrt(kappa), weight decay × sqrt(kappa)."""
        model = Ramped(optimizer="adamw", scheduler=None)
        ramp_fit(tmp_path / "ramp", model, callback={"rule": "sde"})
        assert model.accumulations == ACCUMULATIONS
        fixed = {}
        for accumulation in sorted(set(ACCUMULATIONS)):
            at = Ramped(optimizer="adamw", scheduler=None)
            options = {"callback": {"rule": "sde", "batch_ramp": None}, "accumulate_grad_batches": accumulation}
            ramp_fit(tmp_path / str(accumulation), at, max_steps=1, **options)
            fixed[accumulation] = at.groups[0]
        at_fixed = [fixed[a] for a in ACCUMULATIONS]
        # betas, eps and weight decay come from the module's own values: bit for bit; the LR is rescaled by the ratio
        # of the factors (a scheduler may have moved it), to the last bit or so
        assert [{k: v for k, v in g.items() if k != "lr"} for g in model.groups] == [
            {k: v for k, v in g.items() if k != "lr"} for g in at_fixed
        ]
        assert [g["lr"] for g in model.groups] == pytest.approx([g["lr"] for g in at_fixed], rel=REL)
        for accumulation, group in fixed.items():
            k = float(accumulation)
            assert group["lr"] == pytest.approx(0.01 * math.sqrt(k), rel=REL)
            assert group["betas"] == pytest.approx((0.8**k, 0.99**k), rel=REL)
            assert group["eps"] == pytest.approx(1e-6 / math.sqrt(k), rel=REL)
            assert group["weight_decay"] == pytest.approx(0.05 * math.sqrt(k), rel=REL)

    def test_the_logged_effective_batch_is_the_batch_of_every_step(self, tmp_path: Path) -> None:
        """With a CSVLogger and ``log_every_n_steps=1``, every step has ``lrbs/effective_batch_size`` rows, and each
        is the batch that step trains with (a change is logged at the step it first applies to)."""
        model = Ramped(scheduler=None)
        logger = CSVLogger(tmp_path, name="log")
        ramp_fit(tmp_path, model, logger=logger, log_every_n_steps=1)
        logged: dict[int, set[float]] = {}
        with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
            for row in csv.DictReader(file):
                if row.get("lrbs/effective_batch_size"):
                    logged.setdefault(int(row["step"]), set()).add(float(row["lrbs/effective_batch_size"]))
        assert model.effective == [4 * a for a in ACCUMULATIONS]
        assert logged == {step: {float(batch)} for step, batch in enumerate(model.effective)}

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

    @pytest.mark.parametrize(
        ("step", "optimizer", "rule"),
        [(15, "sgd", "linear"), (12, "sgd", "linear"), (15, "adam", "sde")],
        ids=["pending-mid-epoch", "pending-at-the-epochs-last-batch", "pending-mid-epoch-sde-adam"],
    )
    def test_resume_mid_epoch_while_a_change_waits_to_align_equals_the_uninterrupted_run(
        self, tmp_path: Path, step: int, optimizer: str, rule: str
    ) -> None:
        """Step 15 is batch 9 of epoch 1: 100 samples ask for accumulation 4, but 9 is not a multiple of 4, so 3 stays
        until batch 12. Step 12 is epoch 0's last batch: 64 samples ask for 3, which waits for epoch 1. A checkpoint
        saved there resumes with the accumulation in force and changes where the uninterrupted run does."""
        scheduler = "exponential" if optimizer == "sgd" else None
        options = {"callback": {"rule": rule}}
        whole = Ramped(optimizer, scheduler)
        ramp_fit(tmp_path / "whole", whole, **options)
        saver = ModelCheckpoint(dirpath=tmp_path, filename="mid", every_n_train_steps=step, save_top_k=-1)
        first = Ramped(optimizer, scheduler)
        ramp_fit(tmp_path / "first", first, callbacks=[saver], enable_checkpointing=True, **options)
        resumed = Ramped(optimizer, scheduler)
        ramp_fit(tmp_path / "resumed", resumed, ckpt=str(tmp_path / "mid.ckpt"), **options)
        assert resumed.accumulations == whole.accumulations[step:]
        assert resumed.effective == whole.effective[step:]
        assert resumed.lrs == pytest.approx(whole.lrs[step:], rel=REL)
        assert resumed.scheduler_steps == whole.scheduler_steps[step:]
        flat = [[b for betas in run for b in betas] for run in (resumed.betas, whole.betas[step:])]
        assert flat[0] == pytest.approx(flat[1], rel=REL)

    def test_resume_from_a_checkpoint_saved_inside_an_accumulation_window(self, tmp_path: Path) -> None:
        """Saved one batch after step 15 (a window of 3 has one batch in it): the step in progress keeps its
        accumulation and samples, and every later step equals the uninterrupted run's."""

        class SaveInsideWindow(Callback):
            def __init__(self) -> None:
                self.seen = 0

            def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
                if trainer.global_step == 15:
                    self.seen += 1
                    if self.seen == 2:
                        trainer.save_checkpoint(tmp_path / "inside.ckpt")

        whole = Ramped(scheduler="exponential")
        ramp_fit(tmp_path / "whole", whole)
        ramp_fit(tmp_path / "first", Ramped(scheduler="exponential"), callbacks=[SaveInsideWindow()])
        resumed = Ramped(scheduler="exponential")
        ramp_fit(tmp_path / "resumed", resumed, ckpt=str(tmp_path / "inside.ckpt"))
        assert resumed.accumulations == whole.accumulations[15:]
        assert resumed.effective == whole.effective[15:]
        assert resumed.lrs == pytest.approx(whole.lrs[15:], rel=REL)
        assert resumed.scheduler_steps == whole.scheduler_steps[15:]


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

    def test_a_per_step_scheduler_stepped_every_other_step_is_refused_before_anything_changes(
        self, tmp_path: Path
    ) -> None:
        model = Ramped(scheduler="every-2-steps")
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(ValueError, match=r"`batch_ramp` .* `frequency=1`, got frequency=2 for ExponentialLR"):
            ramp_fit(tmp_path, model)
        assert model.lrs == []
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert model.trainer.accumulate_grad_batches == 4
        assert model.trainer.lr_scheduler_configs[0].frequency == 2  # Lightning's stepping not taken over

    def test_an_overridden_lr_scheduler_step_is_refused_before_anything_changes(self, tmp_path: Path) -> None:
        class OwnStepping(Ramped):
            def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
                scheduler.step()

        model = OwnStepping()
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(ValueError, match=r"`batch_ramp` steps the per-step schedulers .* OwnStepping overrides "):
            ramp_fit(tmp_path, model)
        assert model.lrs == []
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert model.trainer.accumulate_grad_batches == 4
        assert model.trainer.lr_scheduler_configs[0].frequency == 1

    def test_a_batch_size_finder_is_refused_before_it_searches(self, tmp_path: Path) -> None:
        from lightning.pytorch.callbacks import BatchSizeFinder

        class Sized(Ramped):
            def __init__(self) -> None:
                super().__init__(scheduler=None)
                self.batch_size = 4
                self.training_steps = 0

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                self.training_steps += 1
                return super().training_step(batch, batch_idx)

            def train_dataloader(self) -> DataLoader[Any]:
                return DataLoader(RandomDataset(32, 64), batch_size=self.batch_size)

        model = Sized()
        before = [p.detach().clone() for p in model.parameters()]
        finder = BatchSizeFinder(max_trials=2, steps_per_trial=1)
        with pytest.raises(ValueError, match=r"`batch_ramp` sets the accumulation .* a BatchSizeFinder in the same"):
            ramp_fit(tmp_path, model, callbacks=[finder])
        assert model.training_steps == 0  # the finder did not search (it trains a few steps at each size it tries)
        assert model.batch_size == 4
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


class TestPreview:
    def test_the_preview_of_a_ramp_equals_the_fit(self, tmp_path: Path) -> None:
        model = Ramped()
        ramp_fit(tmp_path, model, callback={"warmup_steps": 3})
        shown = preview(
            Ramped(),
            batches_per_epoch=16,
            max_epochs=3,
            per_device_batch_size=4,
            accumulation=4,
            base_batch_size=4,
            warmup_steps=3,
            batch_ramp=(4, 4, 96),
        )
        assert shown.effective_batch_sizes == model.effective
        assert shown.applied["lr-SGD"] == pytest.approx(model.lrs, rel=REL)
        assert shown.summary.endswith("; batch ramp 4 → 16: +4 every 32 samples (96 samples)")

    def test_the_preview_stops_at_max_steps_of_the_target_batch(self) -> None:
        shown = preview(
            Ramped(scheduler=None),
            batches_per_epoch=16,
            max_steps=5,
            per_device_batch_size=4,
            accumulation=4,
            batch_ramp=(4, 4, 96),
        )
        consumed = list(accumulate(shown.effective_batch_sizes))
        assert consumed[-1] >= 80 > consumed[-2]  # 5 × 16 samples

    def test_the_command_line_takes_a_ramp(self, capsys: pytest.CaptureFixture[str]) -> None:
        from lightning_lrbs.__main__ import main

        argv = ["preview", "test_batch_ramp.Ramped", "--batches-per-epoch", "16", "--max-epochs", "3"]
        argv += ["--batch-size", "4", "--accumulation", "4", "--base-batch-size", "4", "--batch-ramp", "4", "4", "96"]
        assert main(argv) == 0
        printed = capsys.readouterr().out
        assert "effective batch 4 = 4 per device; base 4; rule linear → LR ×1" in printed
        assert "batch ramp 4 → 16: +4 every 32 samples (96 samples)" in printed
        assert f"{len(ACCUMULATIONS)} optimizer steps" in printed


@pytest.mark.slow
def test_ddp_ranks_grow_the_batch_together_as_the_preview_shows(tmp_path: Path) -> None:
    """2 processes, 8 per device, accumulation 4 (batch 64), ramp 16 → 64 by 16 every 64 samples: both ranks change the
    accumulation at the same steps, and every step's LR is the preview's."""
    callback = {"base_batch_size": 16, "batch_ramp": [16, 16, 192], "log_lr": False}
    config = {"strategy": "ddp", "dp": 2, "accumulation": 4, "max_steps": 6, "callback": callback}
    command = [sys.executable, str(SCRIPTS / "parallel_fit.py"), str(tmp_path), json.dumps(config)]
    subprocess.run(command, env=script_env(), check=True, timeout=600)
    ranks = rank_results(tmp_path)
    assert ranks[0]["lrs"] == ranks[1]["lrs"]
    assert ranks[0]["accumulations"] == ranks[1]["accumulations"]
    assert ranks[0]["accumulations"][0] == 1
    assert ranks[0]["accumulations"][-1] == 4
    spec = importlib.util.spec_from_file_location("parallel_fit", SCRIPTS / "parallel_fit.py")
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shown = preview(
        script.MLP(config), batches_per_epoch=32, max_steps=6, per_device_batch_size=8, devices=2, accumulation=4,
        base_batch_size=16, batch_ramp=(16, 16, 192),
    )  # fmt: skip
    assert [size // 16 for size in shown.effective_batch_sizes] == ranks[0]["accumulations"]
    assert shown.applied["lr-SGD"] == pytest.approx(ranks[0]["lrs"], rel=REL)


class TestNextToLightning:
    def test_an_exception_gives_the_trainer_its_accumulation_and_max_steps_back(self, tmp_path: Path) -> None:
        class Fails(Ramped):
            def training_step(self, batch: Any, batch_idx: int) -> Any:
                if self.trainer.global_step == 9:
                    raise RuntimeError("boom")
                return super().training_step(batch, batch_idx)

        model = Fails()
        with pytest.raises(RuntimeError, match="boom"):
            ramp_fit(tmp_path, model, max_epochs=-1, max_steps=20)
        assert model.accumulations[-1] == 2  # it failed while the ramp had the accumulation at 2
        assert model.trainer.accumulate_grad_batches == 4
        assert model.trainer.max_steps == 20

    def test_a_learning_rate_finder_sweeps_first_then_the_ramp_runs(self, tmp_path: Path) -> None:
        from lightning.pytorch.callbacks import LearningRateFinder

        model = Ramped(scheduler=None)
        finder = LearningRateFinder(num_training_steps=5, early_stop_threshold=None, update_attr=False)
        ramp_fit(tmp_path, model, callbacks=[finder])
        assert finder.optimal_lr is not None  # it swept
        # then the ramp ran from its start (Lightning < 2.5's sweep also uses up batches of the first epoch, so the
        # epochs' lengths, and with them where the accumulation changes, depend on the version)
        assert model.accumulations[0] == 1
        assert model.accumulations[-1] == 4
        assert model.accumulations == sorted(model.accumulations)
        assert model.lrs == pytest.approx([0.1 * a for a in model.accumulations], rel=REL)

    def test_a_group_added_by_backbone_finetuning_follows_the_ramp(self, tmp_path: Path) -> None:
        from lightning.pytorch.callbacks import BackboneFinetuning

        class Backbone(Ramped):
            def __init__(self) -> None:
                super().__init__(scheduler=None)
                self.backbone = torch.nn.Linear(32, 32)
                self.all_lrs: list[list[float]] = []

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.layer(self.backbone(x))

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.layer.parameters(), lr=0.1)

            def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
                super().on_before_optimizer_step(optimizer)
                self.all_lrs.append([float(g["lr"]) for g in optimizer.param_groups])

        model = Backbone()
        finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.1, verbose=False)
        ramp_fit(tmp_path, model, callbacks=[finetuning])
        # epoch 1 starts at accumulation 3 (LR 0.3): the backbone group is added at 0.1 × that, then the ramp's step
        # to 4 scales both by 4/3
        epoch_one = model.all_lrs[12:]
        assert epoch_one[0] == pytest.approx([0.3, 0.03], rel=REL)
        assert epoch_one[4] == pytest.approx([0.4, 0.04], rel=REL)

    @pytest.mark.skipif(not hasattr(importlib.import_module("lightning.pytorch.callbacks"), "EMAWeightAveraging"),
                        reason="EMAWeightAveraging came with Lightning 2.6")  # fmt: skip
    def test_an_ema_decay_follows_every_change(self, tmp_path: Path) -> None:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        from lightning_lrbs.sde import averaged_model_ema

        decays: list[float] = []

        class Recorded(Ramped):
            def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
                super().on_before_optimizer_step(optimizer)
                average = self.trainer.callbacks[1]._average_model  # type: ignore[attr-defined]
                decays.append(averaged_model_ema(average)[1])  # type: ignore[index]

        ramp_fit(tmp_path, Recorded(scheduler=None), callbacks=[EMAWeightAveraging(decay=0.99)])
        assert decays == pytest.approx([0.99**a for a in ACCUMULATIONS], rel=REL)  # kappa = B_t / 4


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(importlib.import_module("lightning.pytorch.strategies"), "ModelParallelStrategy"),
    reason="ModelParallelStrategy came with Lightning 2.4",
)
def test_fsdp2_grows_the_batch_as_ddp_does(tmp_path: Path) -> None:
    callback = {"base_batch_size": 16, "batch_ramp": [16, 16, 192], "log_lr": False, "warmup_steps": 2}
    results = {}
    for kind in ("fsdp", "ddp"):
        config = {"strategy": kind, "dp": 2, "accumulation": 4, "max_steps": 6, "callback": callback}
        out = tmp_path / kind
        out.mkdir()
        subprocess.run(
            [sys.executable, str(SCRIPTS / "parallel_fit.py"), str(out), json.dumps(config)],
            env=script_env(),
            check=True,
            timeout=600,
        )
        results[kind] = rank_results(out)
    assert results["fsdp"][0]["accumulations"] == results["ddp"][0]["accumulations"]
    assert results["fsdp"][0]["lrs"] == pytest.approx(results["ddp"][0]["lrs"], rel=REL)
