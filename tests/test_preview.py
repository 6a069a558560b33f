"""The preview (``lightning_lrbs.preview``) equals the LRs a real fit with the same settings uses, step for step."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lrbs_testing import quiet_trainer
from torch.optim import lr_scheduler as S
from torch.utils.data import DataLoader

from lightning_lrbs import BatchScalingCallback
from lightning_lrbs.preview import SchedulerSpec, preview, preview_schedule

LR = 0.1
REL = 1e-9
SAMPLES = 64  # 8 batches of 8 per epoch


class ScheduledModel(BoringModel):
    """SGD (or ``optimizer``) over two param groups (``lr``, ``lr / 2``) with an optional scheduler config."""

    def __init__(
        self,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        interval: str = "step",
        frequency: int = 1,
        optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.scheduler, self.interval, self.frequency, self.name = scheduler, interval, frequency, name
        self.make_optimizer = optimizer or (lambda groups: torch.optim.SGD(groups, lr=LR, momentum=0.9))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        self.log("plateau", 1.0, on_step=True, on_epoch=True)
        return out

    def configure_optimizers(self) -> Any:
        groups = [{"params": [self.layer.weight], "lr": LR}, {"params": [self.layer.bias], "lr": LR / 2}]
        optimizer = self.make_optimizer(groups)
        if self.scheduler is None:
            return optimizer
        config: dict[str, Any] = {
            "scheduler": self.scheduler(optimizer),
            "interval": self.interval,
            "frequency": self.frequency,
            "monitor": "plateau",
        }
        if self.name:
            config["name"] = self.name
        return {"optimizer": optimizer, "lr_scheduler": config}

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, SAMPLES), batch_size=8)


class Recorder(pl.Callback):
    """The LRs of each group at each optimizer step: scheduled (before the warmup's pre-hook) and applied (after)."""

    def __init__(self) -> None:
        self.scheduled: list[list[float]] = []
        self.applied: list[list[float]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.optimizers[0].register_step_pre_hook(
            lambda o, a, k: self.scheduled.append([float(g["lr"]) for g in o.param_groups])
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # after the warmup's hooks
        trainer.optimizers[0].register_step_pre_hook(
            lambda o, a, k: self.applied.append([float(g["lr"]) for g in o.param_groups])
        )


def _columns(rows: list[list[float]]) -> list[list[float]]:
    return [list(column) for column in zip(*rows)]


# (scheduler, interval, frequency, accumulation, batches per epoch, epochs, callback kwargs)
CASES: dict[str, tuple[Callable[[torch.optim.Optimizer], Any], str, int, int, int, int, dict[str, Any]]] = {
    "StepLR-step-warmup": (lambda o: S.StepLR(o, 3, 0.5), "step", 1, 1, 8, 2, {"warmup_steps": 5}),
    "StepLR-epoch-accumulation": (lambda o: S.StepLR(o, 1, 0.5), "epoch", 1, 2, 8, 3, {"warmup_epochs": 0.5}),
    "OneCycleLR-step-accumulation-warmup": (
        lambda o: S.OneCycleLR(o, max_lr=[1.0, 0.5], total_steps=13),
        "step",
        1,
        2,
        6,
        4,
        {"warmup_steps": 4},
    ),
    "CosineAnnealingLR-epoch-frequency-uneven-accumulation": (
        lambda o: S.CosineAnnealingLR(o, T_max=3, eta_min=0.01),
        "epoch",
        2,
        3,
        8,
        5,
        {"warmup_steps": 5},
    ),
    "LambdaLR-step-frequency": (
        lambda o: S.LambdaLR(o, lambda e: 1.0 / (1.0 + e)),
        "step",
        3,
        1,
        5,
        2,
        {"warmup_steps": 2, "warmup_start_factor": 0.1},
    ),
    "SequentialLR-step-accumulation-warmup-epochs": (
        lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.5, total_iters=2), S.ExponentialLR(o, 0.8)], milestones=[3]),
        "step",
        1,
        2,
        8,
        3,
        {"warmup_epochs": 1},
    ),
    "SequentialLR-epoch": (
        lambda o: S.SequentialLR(o, [S.ConstantLR(o, 0.5, total_iters=1), S.ExponentialLR(o, 0.7)], milestones=[2]),
        "epoch",
        1,
        1,
        4,
        4,
        {},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_preview_equals_a_real_fit(tmp_path: Path, case: str) -> None:
    scheduler, interval, frequency, accumulation, batches, epochs, kwargs = CASES[case]
    model = ScheduledModel(scheduler, interval, frequency)
    weights = copy.deepcopy(model.state_dict())
    # batch 8 per device over base 2: factor 4 × accumulation
    shown = preview(
        model,
        batches_per_epoch=batches,
        max_epochs=epochs,
        per_device_batch_size=8,
        accumulation=accumulation,
        base_batch_size=2,
        **kwargs,
    )
    # the module was not touched: same weights, no trainer, and its optimizers are still built at the base LR
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert model._trainer is None

    recorder = Recorder()
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=epochs,
        limit_train_batches=batches,
        accumulate_grad_batches=accumulation,
        callbacks=[BatchScalingCallback(base_batch_size=2, **kwargs), recorder],
    )
    trainer.fit(ScheduledModel(scheduler, interval, frequency))
    callback = trainer.callbacks[0]
    assert isinstance(callback, BatchScalingCallback)

    assert shown.summary == callback.summary
    assert shown.warmup_steps == callback.state_dict()["warmup_steps"]
    assert list(shown.scheduled) == ["lr-SGD/pg1", "lr-SGD/pg2"]
    assert len(shown.steps) == len(recorder.scheduled) == trainer.global_step
    for name, column in zip(shown.scheduled, _columns(recorder.scheduled)):
        assert shown.scheduled[name] == pytest.approx(column, rel=REL, abs=0.0), name
    for name, column in zip(shown.applied, _columns(recorder.applied)):
        assert shown.applied[name] == pytest.approx(column, rel=REL, abs=0.0), name
    # the comparison can fail: the schedule moved, and the warmup made applied differ from scheduled
    assert len(set(shown.scheduled["lr-SGD/pg1"])) > 1
    if shown.warmup_steps:
        assert shown.applied != shown.scheduled


def test_max_steps_stops_mid_epoch_like_the_fit(tmp_path: Path) -> None:
    def build(o: torch.optim.Optimizer) -> Any:
        return S.StepLR(o, 2, 0.5)

    shown = preview(
        ScheduledModel(build), batches_per_epoch=8, max_steps=11, per_device_batch_size=8, base_batch_size=4
    )
    recorder = Recorder()
    trainer = quiet_trainer(
        tmp_path, max_epochs=None, max_steps=11, limit_train_batches=8, callbacks=[BatchScalingCallback(4), recorder]
    )
    trainer.fit(ScheduledModel(build))
    assert len(shown.steps) == len(recorder.scheduled) == 11
    assert shown.scheduled["lr-SGD/pg1"] == pytest.approx([r[0] for r in recorder.scheduled], rel=REL)


def test_plateau_is_held_and_said(tmp_path: Path) -> None:
    shown = preview(
        ScheduledModel(lambda o: S.ReduceLROnPlateau(o, patience=0), interval="epoch"),
        batches_per_epoch=4,
        max_epochs=3,
        per_device_batch_size=8,
        base_batch_size=4,
    )
    assert shown.scheduled["lr-SGD/pg1"] == [2 * LR] * 12
    assert shown.notes == ["ReduceLROnPlateau steps on a metric the preview does not have: its LR is held constant"]


def test_names_follow_learning_rate_monitor_and_the_config_name(tmp_path: Path) -> None:
    shown = preview(
        ScheduledModel(lambda o: S.StepLR(o, 1), name="backbone"),
        batches_per_epoch=2,
        max_epochs=1,
        per_device_batch_size=8,
    )
    assert list(shown.scheduled) == ["backbone/pg1", "backbone/pg2"]
    assert "rule linear → LR ×1: backbone 0.1, 0.05 → 0.1, 0.05" in shown.summary


def test_pure_preview_leaves_optimizer_and_scheduler_alone() -> None:
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = S.CosineAnnealingLR(optimizer, T_max=4, eta_min=0.01)
    before = (copy.deepcopy(optimizer.state_dict()), copy.deepcopy(scheduler.state_dict()))
    shown = preview_schedule(
        optimizer,
        [SchedulerSpec(scheduler, interval="step")],
        batches_per_epoch=4,
        max_epochs=2,
        per_device_batch_size=16,
        devices=2,
        nodes=2,
        base_batch_size=32,
        warmup_steps=2,
    )
    assert shown.scale_factors == (2.0,)
    assert shown.scheduled["lr-SGD"][0] == pytest.approx(0.2)
    scheduled = shown.scheduled["lr-SGD"]
    assert shown.applied["lr-SGD"][:3] == pytest.approx([scheduled[0] * 0.5, scheduled[1] * 0.75, scheduled[2]])
    assert (optimizer.state_dict(), scheduler.state_dict()) == before
    assert torch.equal(weight.detach(), torch.ones(2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batches_per_epoch": 0, "max_epochs": 1}, r"`batches_per_epoch` must be a positive int, got 0"),
        ({"batches_per_epoch": 4}, r"give `max_epochs` or `max_steps`"),
        ({"batches_per_epoch": 4, "max_steps": 0}, r"`max_steps` must be a positive int or -1 \(no limit\), got 0"),
        ({"batches_per_epoch": 4, "max_epochs": 1, "accumulation": 0}, r"`accumulation` must be a positive int"),
        ({"batches_per_epoch": 4, "max_epochs": 1, "rule": "cubic"}, r"`rule` must be one of"),
        (
            {"batches_per_epoch": 4, "max_epochs": 1, "warmup_steps": 2, "warmup_epochs": 1.0},
            r"give either `warmup_steps` or `warmup_epochs`",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preview(BoringModel(), per_device_batch_size=8, **kwargs)


def test_manual_optimization_and_trainer_dependent_modules_are_refused() -> None:
    class Manual(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    class NeedsTrainer(BoringModel):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            total = self.trainer.estimated_stepping_batches
            return {"optimizer": optimizer, "lr_scheduler": S.OneCycleLR(optimizer, 1.0, total_steps=int(total))}

    class NoOptimizer(BoringModel):
        def configure_optimizers(self) -> Any:
            return None

    class TwoOptimizers(BoringModel):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    with pytest.raises(ValueError, match=r"`configure_optimizers` of NoOptimizer returned no optimizer"):
        preview(NoOptimizer(), batches_per_epoch=2, max_epochs=1, per_device_batch_size=8)
    with pytest.raises(ValueError, match=r"of TwoOptimizers returned 2 optimizers"):
        preview(TwoOptimizers(), batches_per_epoch=2, max_epochs=1, per_device_batch_size=8)
    with pytest.raises(ValueError, match=r"Manual uses manual optimization"):
        preview(Manual(), batches_per_epoch=2, max_epochs=1, per_device_batch_size=8)
    with pytest.raises(ValueError, match=r"`configure_optimizers` of NeedsTrainer needs a Trainer"):
        preview(NeedsTrainer(), batches_per_epoch=2, max_epochs=1, per_device_batch_size=8)


@pytest.mark.slow  # a fresh interpreter importing Lightning: 4-15 s on the shared 2-core machine
def test_command_prints_the_summary_and_writes_the_plot(tmp_path: Path) -> None:
    png = tmp_path / "lr.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_lrbs",
            "preview",
            "lightning.pytorch.demos.boring_classes.BoringModel",
            "--batches-per-epoch=8",
            "--max-epochs=2",
            "--batch-size=2",
            "--devices=4",
            "--warmup-steps=4",
            f"--plot={png}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "effective batch 8 = 2 per device × 4 devices; base 2; rule linear → LR ×4: SGD 0.1 → 0.4" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


REPO = Path(__file__).resolve().parents[1]


def test_readme_command_and_a_lightning_cli_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_lrbs.__main__ import main

    monkeypatch.chdir(REPO)
    png = tmp_path / "preview.png"
    # the README's command for docs/preview.png, writing elsewhere
    argv = [
        "preview", "examples.preview_model.CosineSGD", "--init-args", '{"total_steps": 1000}',
        "--batches-per-epoch", "100", "--max-epochs", "10", "--batch-size", "32", "--devices", "8",
        "--base-batch-size", "64", "--warmup-epochs", "2", f"--plot={png}",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "effective batch 256 = 32 per device × 8 devices; base 64; rule linear → LR ×4: SGD 0.1, 0.05 → 0.4, 0.2; "
        "warmup 200 steps from ×0.25\n1000 optimizer steps"
    )
    assert png.is_file()

    # the module's init arguments, the batch size and the callback's arguments from the MNIST LightningCLI config
    argv = ["preview", "examples.mnist.MNISTConvNet", "--config", "examples/mnist_cli.yaml", "--batches-per-epoch=100"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "effective batch 64 = 64 per device; base 8; rule linear → LR ×8: SGD 0.01 → 0.08; warmup 10 steps from ×0.125"
    )
    assert "\n100 optimizer steps" in out  # trainer.max_epochs: 1


def test_importing_the_preview_does_not_import_lightning() -> None:
    code = (
        "import sys, lightning_lrbs.preview, lightning_lrbs.summary, lightning_lrbs.__main__\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'lightning', 'pytorch_lightning'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_adascale_is_refused_not_previewed_at_factor_one() -> None:
    """The AdaScale gain is measured while training: a preview at factor 1 would be silently wrong."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lightning_lrbs.preview import preview

    with pytest.raises(ValueError, match=r"rule='adascale' cannot be previewed.*rule='linear'"):
        preview(BoringModel(), batches_per_epoch=4, max_epochs=1, per_device_batch_size=32, devices=4, rule="adascale")
