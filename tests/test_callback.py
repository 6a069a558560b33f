"""BatchScalingCallback on real CPU fits: the effective batch size, the factor, what users are told, resume and
bad input."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import GradientAccumulationScheduler, LearningRateMonitor
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import CombinedLoader
from lrbs_testing import LR, LRModel, flat, quiet_trainer
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_lrbs import BatchScalingCallback


class TestEffectiveBatchSize:
    def test_accumulation_multiplies_the_factor(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback()  # base = per-device batch: the factor is devices x nodes x accumulation
        model = LRModel()
        quiet_trainer(tmp_path, accumulate_grad_batches=4, callbacks=[callback]).fit(model)
        assert callback.per_device_batch_size == 8
        assert callback.effective_batch_size == 32
        assert callback.scale_factor == 4.0
        assert model.lrs[0] == pytest.approx([4 * LR, 2 * LR])

    @pytest.mark.parametrize(("rule", "factor"), [("linear", 4.0), ("sqrt", 2.0), ("none", 1.0)])
    def test_rules(self, tmp_path: Path, rule: str, factor: float) -> None:
        callback = BatchScalingCallback(base_batch_size=2, rule=rule)  # type: ignore[arg-type]
        model = LRModel()
        quiet_trainer(tmp_path, callbacks=[callback]).fit(model)
        assert callback.scale_factor == factor
        assert model.lrs[0][0] == pytest.approx(factor * LR)

    def test_callable_rule(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback(base_batch_size=2, rule=lambda r: r**0.25)
        model = LRModel()
        quiet_trainer(tmp_path, callbacks=[callback]).fit(model)
        assert callback.scale_factor == pytest.approx(math.sqrt(2))
        assert model.lrs[0][0] == pytest.approx(math.sqrt(2) * LR)

    @pytest.mark.parametrize("order", ["scheduler_first", "callback_first"])
    def test_accumulation_schedule_doubles_lr_from_its_epoch(self, tmp_path: Path, order: str) -> None:
        callbacks: list[Callback] = [GradientAccumulationScheduler({0: 1, 1: 2}), BatchScalingCallback()]
        if order == "callback_first":
            callbacks.reverse()
        model = LRModel()
        quiet_trainer(tmp_path, max_epochs=3, callbacks=callbacks).fit(model)
        # epoch 0: 4 steps at x1; epochs 1 and 2: 2 steps each at x2
        assert [step[0] for step in model.lrs] == pytest.approx([LR] * 4 + [2 * LR] * 4)

    def test_dict_of_loaders_counts_their_sum(self, tmp_path: Path) -> None:
        class DictModel(LRModel):
            def train_dataloader(self) -> Any:
                return {"a": DataLoader(RandomDataset(32, 64), batch_size=4), "b": DataLoader(RandomDataset(32, 64), 6)}

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                return super().training_step(batch["a"], batch_idx)

        callback = BatchScalingCallback(base_batch_size=5)
        quiet_trainer(tmp_path, callbacks=[callback]).fit(DictModel())
        assert callback.per_device_batch_size == 10
        assert callback.scale_factor == 2.0

    def test_combined_loader_counts_their_sum(self, tmp_path: Path) -> None:
        class CombinedModel(LRModel):
            def train_dataloader(self) -> Any:
                loaders = [DataLoader(RandomDataset(32, 64), batch_size=3), DataLoader(RandomDataset(32, 64), 9)]
                return CombinedLoader(loaders, mode="max_size_cycle")

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                return super().training_step(batch[0][0], batch_idx)

        callback = BatchScalingCallback(base_batch_size=4)
        quiet_trainer(tmp_path, callbacks=[callback]).fit(CombinedModel())
        assert callback.per_device_batch_size == 12
        assert callback.scale_factor == 3.0

    def test_custom_batch_sampler_without_batch_size_uses_first_batch(self, tmp_path: Path) -> None:
        class Pairs(Sampler[list[int]]):
            """Yields batches of 6 indices and does not say so."""

            def __init__(self, n: int) -> None:
                self.n = n

            def __iter__(self) -> Any:
                return iter([list(range(i, i + 6)) for i in range(0, self.n - 5, 6)])

            def __len__(self) -> int:
                return self.n // 6

        class SamplerModel(LRModel):
            def train_dataloader(self) -> Any:
                data = RandomDataset(32, 64)
                return DataLoader(data, batch_sampler=Pairs(len(data)))

        callback = BatchScalingCallback(base_batch_size=3)
        model = SamplerModel()
        quiet_trainer(tmp_path, callbacks=[callback]).fit(model)
        assert callback.per_device_batch_size == 6
        assert model.lrs[0][0] == pytest.approx(2 * LR)  # scaled before the first optimizer step

    def test_batch_size_override(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback(base_batch_size=4, batch_size=16)
        quiet_trainer(tmp_path, callbacks=[callback]).fit(LRModel())
        assert callback.effective_batch_size == 16
        assert callback.scale_factor == 4.0

    def test_auto_rule_picks_per_optimizer(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        class TwoOptimizers(BoringModel):
            def __init__(self) -> None:
                super().__init__()
                self.automatic_optimization = False
                self.other = torch.nn.Linear(32, 2)

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                for opt, layer in zip(self.optimizers(), (self.layer, self.other)):
                    opt.zero_grad()
                    self.manual_backward(layer(batch).sum())
                    opt.step()

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.Adam(self.other.parameters(), 1e-3)

            def train_dataloader(self) -> Any:
                return DataLoader(RandomDataset(32, 64), batch_size=16)

        callback = BatchScalingCallback(base_batch_size=4, rule="auto")
        with caplog.at_level(logging.INFO):
            quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(TwoOptimizers())
        assert callback.scale_factors == (4.0, 2.0)
        assert callback.scale_factor == (4.0, 2.0)
        assert "rule auto → SGD linear ×4: 0.1 → 0.4; Adam sqrt ×2: 0.001 → 0.002" in caplog.text


class TestUsersAreTold:
    def test_summary_line(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        callback = BatchScalingCallback(base_batch_size=4)
        with caplog.at_level(logging.INFO):
            quiet_trainer(tmp_path, accumulate_grad_batches=2, callbacks=[callback]).fit(LRModel())
        expected = (
            "effective batch 16 = 8 per device × 2 accumulation; base 4; rule linear → LR ×4: SGD 0.1, 0.05 → 0.4, 0.2"
        )
        assert callback.summary == expected
        assert caplog.text.count(expected) == 1

    def test_logged_to_the_trainer_logger(self, tmp_path: Path) -> None:
        logger = CSVLogger(tmp_path)
        callback = BatchScalingCallback(base_batch_size=2)
        quiet_trainer(tmp_path, logger=logger, log_every_n_steps=1, callbacks=[callback]).fit(LRModel())
        with open(Path(logger.log_dir) / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert any(row.get("lrbs/effective_batch_size") == "8.0" for row in rows)
        assert any(row.get("lrbs/scale_factor") == "4.0" for row in rows)
        lrs = [float(row["lrbs/lr-SGD/pg1"]) for row in rows if row.get("lrbs/lr-SGD/pg1")]
        assert len(lrs) == 8
        assert lrs[0] == pytest.approx(4 * LR)

    def test_warns_when_linear_scales_adaptive_optimizer(self, tmp_path: Path) -> None:
        model = LRModel(optimizer=lambda groups: torch.optim.AdamW(groups, lr=0.0))
        with pytest.warns(RuntimeWarning, match=r"linear rule scales the adaptive optimizer\(s\) AdamW.*rule='sqrt'"):
            quiet_trainer(tmp_path, callbacks=[BatchScalingCallback(base_batch_size=2)]).fit(model)

    def test_warns_when_factor_is_one(self, tmp_path: Path) -> None:
        with pytest.warns(RuntimeWarning, match=r"the LR factor is 1 \(effective batch 8, base 8, rule linear\)"):
            quiet_trainer(tmp_path, callbacks=[BatchScalingCallback()]).fit(LRModel())


class TestBadInput:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"base_batch_size": 0}, r"`base_batch_size` must be a positive int, got 0"),
            ({"base_batch_size": 8.0}, r"`base_batch_size` must be a positive int, got 8.0"),
            ({"base_batch_size": True}, r"`base_batch_size` must be a positive int, got True"),
            ({"batch_size": -4}, r"`batch_size` must be a positive int, got -4"),
            (
                {"rule": "cubic"},
                r"`rule` must be one of 'linear', 'sqrt', 'auto', 'none', 'sde', 'adascale', 'capped' .* got 'cubic'",
            ),
            ({"rule": 3}, r"`rule` must be one of .* got 3"),
        ],
    )
    def test_constructor(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            BatchScalingCallback(**kwargs)

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -2.0, "x", None])
    def test_callable_rule_returning_garbage_changes_nothing(self, tmp_path: Path, bad: Any) -> None:
        def rule(ratio: float) -> Any:
            return bad

        model = LRModel()
        trainer = quiet_trainer(tmp_path, callbacks=[BatchScalingCallback(base_batch_size=2, rule=rule)])
        with pytest.raises(ValueError, match=rf"`rule` 'rule' must return a finite positive factor, got {bad!r}"):
            trainer.fit(model)
        assert model.lrs == []
        assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [LR, LR / 2]

    def test_module_without_optimizer(self, tmp_path: Path) -> None:
        class NoOptimizer(BoringModel):
            def configure_optimizers(self) -> None:
                return None

        with pytest.raises(ValueError, match=r"`configure_optimizers` of NoOptimizer returned no optimizer"):
            quiet_trainer(tmp_path, callbacks=[BatchScalingCallback()]).fit(NoOptimizer())

    def test_loader_whose_batch_size_cannot_be_found(self, tmp_path: Path) -> None:
        class Opaque:
            """A batch with no tensor in it: nothing tells its size."""

        class Blobs(Dataset[Any]):
            def __len__(self) -> int:
                return 8

            def __getitem__(self, i: int) -> Any:
                return Opaque()

        class OpaqueModel(LRModel):
            def train_dataloader(self) -> Any:
                return DataLoader(Blobs(), batch_sampler=[[0, 1], [2, 3]], collate_fn=lambda items: items[0])

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                return super().training_step(torch.ones(2, 32), batch_idx)

        model = OpaqueModel()
        trainer = quiet_trainer(tmp_path, callbacks=[BatchScalingCallback(base_batch_size=2)])
        with pytest.raises(ValueError, match=r"could not find the per-device batch size .* pass `batch_size=`"):
            trainer.fit(model)
        assert model.lrs == []
        assert trainer.optimizers[0].param_groups[0]["lr"] == LR


def _resume_model(**kwargs: Any) -> LRModel:
    return LRModel(scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.01), **kwargs)


class _StopAt(Callback):
    """Saves a checkpoint after optimizer step ``step`` and stops the fit there (an interruption)."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True  # the fit ends after this batch


class TestResume:
    def test_interrupted_and_resumed_equals_uninterrupted(self, tmp_path: Path) -> None:
        seed_everything(3)
        full = _resume_model()
        quiet_trainer(tmp_path, max_epochs=3, callbacks=[BatchScalingCallback(base_batch_size=2)]).fit(full)

        seed_everything(3)
        ckpt = tmp_path / "mid.ckpt"
        first = _resume_model()
        stop = _StopAt(6, ckpt)
        quiet_trainer(tmp_path, max_epochs=3, callbacks=[BatchScalingCallback(base_batch_size=2), stop]).fit(first)
        second = _resume_model()
        resumed = BatchScalingCallback(base_batch_size=2)
        quiet_trainer(tmp_path, max_epochs=3, callbacks=[resumed]).fit(second, ckpt_path=ckpt)

        assert len(first.lrs) == 6
        assert flat(first.lrs + second.lrs) == pytest.approx(flat(full.lrs), rel=1e-9)
        assert resumed.summary.endswith("(resumed, already scaled)")

    def test_resume_with_more_accumulation_rescales_by_the_ratio(self, tmp_path: Path) -> None:
        seed_everything(3)
        full = _resume_model()
        quiet_trainer(tmp_path, max_epochs=3, callbacks=[BatchScalingCallback(base_batch_size=4)]).fit(full)

        ckpt = tmp_path / "mid.ckpt"
        first = _resume_model()
        stop = _StopAt(4, ckpt)
        quiet_trainer(tmp_path, max_epochs=3, callbacks=[BatchScalingCallback(base_batch_size=4), stop]).fit(first)
        # resume with accumulation 2 ("twice the GPUs"): factor 2 -> 4, so every later LR is 2x the x2 run's
        second = _resume_model()
        resumed = BatchScalingCallback(base_batch_size=4)
        trainer = quiet_trainer(tmp_path, max_epochs=3, accumulate_grad_batches=2, callbacks=[resumed])
        trainer.fit(second, ckpt_path=ckpt)
        assert resumed.scale_factor == 4.0
        assert "(resumed at ×2, rescaled)" in resumed.summary
        # the scheduler keeps counting optimizer steps: step t of the resumed run is step 4 + t of the full run
        expected = [[2 * lr for lr in step] for step in full.lrs[4 : 4 + len(second.lrs)]]
        assert len(second.lrs) == 4  # 8 batches left at accumulation 2
        assert flat(second.lrs) == pytest.approx(flat(expected), rel=1e-9)

    def test_checkpoint_without_callback_state_is_scaled_once(self, tmp_path: Path) -> None:
        ckpt = tmp_path / "plain.ckpt"
        quiet_trainer(tmp_path, max_epochs=1, callbacks=[_StopAt(2, ckpt)]).fit(LRModel())
        model = LRModel()
        quiet_trainer(tmp_path, max_epochs=1, callbacks=[BatchScalingCallback(base_batch_size=2)]).fit(
            model, ckpt_path=ckpt
        )
        assert model.lrs[0] == pytest.approx([4 * LR, 2 * LR])

    def test_state_dict_round_trip_tolerates_missing_keys(self) -> None:
        callback = BatchScalingCallback()
        callback.load_state_dict({})
        assert callback.state_dict()["scale_factors"] is None

    def test_reused_callback_starts_each_fit_from_the_modules_lrs(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback(base_batch_size=2)
        for _ in range(2):
            model = LRModel()
            quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(model)
            assert model.lrs[0] == pytest.approx([4 * LR, 2 * LR])


def test_learning_rate_monitor_sees_the_scaled_lr(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    monitor = LearningRateMonitor(logging_interval="step")
    callbacks = [monitor, BatchScalingCallback(base_batch_size=2)]
    quiet_trainer(tmp_path, logger=logger, log_every_n_steps=1, callbacks=callbacks).fit(LRModel())
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        first = next(float(row["lr-SGD/pg1"]) for row in csv.DictReader(f) if row.get("lr-SGD/pg1"))
    assert first == pytest.approx(4 * LR)


def test_warmup_start_factor_without_length_warns() -> None:
    with pytest.warns(RuntimeWarning, match=r"`warmup_start_factor=0.5` has no effect without `warmup_steps`"):
        BatchScalingCallback(warmup_start_factor=0.5)


def test_rule_none_does_not_warn_that_nothing_is_scaled(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    quiet_trainer(tmp_path, callbacks=[BatchScalingCallback(base_batch_size=2, rule="none")]).fit(LRModel())
    assert not [w for w in recwarn if "nothing to scale" in str(w.message)]
