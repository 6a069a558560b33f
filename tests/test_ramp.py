"""The batch-ramp study (benchmarks/ramp.py, docs/ramp.md) measures what ships: its plain-PyTorch loop applies, step
by step, the batch, the LR and Adam's time constants that a real ``Trainer`` with ``BatchScalingCallback(batch_ramp=
...)`` applies, including the epoch's short last window (it ends with the same weights), and its page is the output of
its generator."""

from __future__ import annotations

import csv
import importlib
import math
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from lrbs_testing import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_lrbs import BatchScalingCallback
from lightning_lrbs.batch_ramp import BatchRamp

REPO = Path(__file__).resolve().parents[1]
REL = 1e-9
# 15 micro-batches of 32 an epoch: the target accumulation 4 leaves a short window of 3 at each epoch's end, and the
# ramp 32 -> 128 by 32 every 160 samples asks for accumulations 2 and 3 where the windows do not always align.
SAMPLES, RAMP, TARGET, EPOCHS = 480, (32, 32, 480), 128, 4


@pytest.fixture
def ramp(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("ramp")


def tiny_data(ramp: ModuleType) -> Any:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(SAMPLES, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (SAMPLES,), generator=g)
    return ramp.Data(x, y, x[:64], y[:64], x[:64], y[:64])


class Module(pl.LightningModule):
    """The study's model and optimizer; records what each optimizer step uses."""

    def __init__(self, net: torch.nn.Module, optimizer: str, lr: float) -> None:
        super().__init__()
        self.net, self.optimizer_name, self.lr = net, optimizer, lr
        self.applied: list[dict[str, Any]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        callback = next(c for c in self.trainer.callbacks if isinstance(c, BatchScalingCallback))
        group = optimizer.param_groups[0]
        self.applied.append(
            {"batch": int(callback.effective_batch_size or 0), "accumulation": self.trainer.accumulate_grad_batches,
             **{k: group[k] for k in ("lr", "betas", "eps") if k in group}}
        )  # fmt: skip


@pytest.mark.parametrize(("optimizer", "rule", "lr"), [("sgd", "linear", 0.05), ("adam", "sde", 0.001)])
def test_study_loop_applies_what_the_callback_applies(
    ramp: ModuleType, tmp_path: Path, optimizer: str, rule: str, lr: float
) -> None:
    data = tiny_data(ramp)
    setting = ramp.Setting("mlp", optimizer, 0.0, lr, 64, (rule,), (rule,), 1000)
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in ramp.build_model("mlp").state_dict().items()}
    study = ramp.train(
        setting, data, init, ramp.Ramp(BatchRamp(*RAMP), TARGET), rule=rule, lr=lr, seed=0, target_loss=-1.0,
        target_accumulation=TARGET // 32, budget=10**9, cap_steps=10**6, cap_samples=EPOCHS * SAMPLES,
    )  # fmt: skip

    from mnist import EpochShuffleSampler  # examples/, on the path through benchmarks/frontier.py

    net = ramp.build_model("mlp")
    net.load_state_dict(init)
    module = Module(net, optimizer, lr)
    loader = DataLoader(
        TensorDataset(data.train_x, data.train_y), batch_size=32, sampler=EpochShuffleSampler(SAMPLES, seed=0)
    )
    callback = BatchScalingCallback(base_batch_size=32, rule=rule, batch_ramp=RAMP, log_lr=False)
    trainer = quiet_trainer(
        tmp_path, callbacks=[callback], max_epochs=EPOCHS, limit_train_batches=None,
        accumulate_grad_batches=TARGET // 32,
    )  # fmt: skip
    trainer.fit(module, loader)

    assert len(study.applied) == len(module.applied) == trainer.global_step
    accumulations = [a["accumulation"] for a in module.applied]
    assert [a["accumulation"] for a in study.applied] == accumulations
    assert {1, 2, 3, 4} <= set(accumulations)  # the whole ramp, in 4 epochs
    assert any(a["size"] < a["accumulation"] for a in study.applied)  # and short windows at the epochs' ends
    assert [a["batch"] for a in study.applied] == [a["batch"] for a in module.applied]
    for name in ("lr", "eps"):
        expected = [a[name] for a in module.applied if name in a]
        assert [a[name] for a in study.applied if name in a] == pytest.approx(expected, rel=REL)
    if optimizer == "adam":
        betas = [b for a in module.applied for b in a["betas"]]
        assert [b for a in study.applied for b in a["betas"]] == pytest.approx(betas, rel=REL)
        assert betas[-2:] == pytest.approx([0.9**4, 0.999**4], rel=REL)
    # the same gradients too: the same weights at the end (the loop draws a window as one batch)
    for ours, theirs in zip(study.model.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_noise_doubling_grows_by_two_only_past_k_times_the_batch(ramp: ModuleType) -> None:
    noise = ramp.NoiseDoubling("simple", k=4.0, target=128, smoothing=0.0, warm=2)
    for value, expected in [(1000.0, 1), (100.0, 1), (200.0, 2), (200.0, 2), (300.0, 4), (10**6, 4), (1.0, 4)]:
        noise.observe({"simple_num": value, "simple_den": 1.0, "consumed": 0.0})
        assert noise.wanted(0.0) == expected  # 4 x 32 = 128 and 4 x 64 = 256 are the thresholds; never shrinks
    assert math.isnan(ramp.NoiseDoubling("hessian", 4.0, 128).estimate)


def test_lower_bound_signal_grows_only_on_a_resolved_measurement(ramp: ModuleType) -> None:
    noise = ramp.NoiseDoubling("simple_lb", k=4.0, target=128, smoothing=0.5, warm=1)
    for _ in range(5):  # |G|^2 averages below 0 by more than 2 standard errors: no finite bound, no growth
        noise.observe({"simple_num": 1000.0, "simple_den": -1.0, "consumed": 0.0})
    assert noise.wanted(0.0) == 1
    assert noise.estimate == math.inf
    for _ in range(20):  # then a steady |G|^2 = 4, tr(Sigma) = 1000: B_simple = 250: >= 4 x 32, < 4 x 64
        noise.observe({"simple_num": 1000.0, "simple_den": 4.0, "consumed": 0.0})
    assert noise.wanted(0.0) == 2


def test_batch_noise_module_decides_as_the_studied_rule(ramp: ModuleType) -> None:
    """``benchmarks/batch_noise.py``'s ``NoiseDoubling`` (the candidate's math) on ``GradientNoiseScale``'s smoothed
    noise scale grows exactly where the study's ``simple`` runs grew."""
    from batch_noise import NoiseDoubling  # benchmarks/, on the path by the `ramp` fixture

    from lightning_lrbs.noise import BiasCorrectedEMA

    g = torch.Generator().manual_seed(5)
    reached = set()
    for _ in range(20):
        study = ramp.NoiseDoubling("simple", k=8.0, target=1024)
        rule = NoiseDoubling(start=32)
        var, sq = BiasCorrectedEMA(0.95), BiasCorrectedEMA(0.95)
        batch, scale = 32, 10 ** (2 * float(torch.rand(1, generator=g)) - 1)
        for n in range(1, 300):
            num = float(torch.rand(1, generator=g)) * 400 * n * scale / 100
            den = float(torch.randn(1, generator=g)) + 2.0
            study.observe({"simple_num": num, "simple_den": den, "consumed": 0.0})
            var.update(num)
            sq.update(den)
            assert var.value is not None
            assert sq.value is not None
            noise_scale = max(var.value, 0.0) / sq.value if sq.value > 0 else math.inf  # GradientNoiseScale's
            batch = rule.batch(batch, 1024, noise_scale, n)
            assert batch == study.wanted(0.0) * 32
        reached.add(batch)
    assert len(reached) > 2  # the sequences end at different batches: the rule was exercised


@pytest.fixture
def report(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("ramp_report")


@pytest.mark.slow
def test_tiny_study_writes_every_kind_of_run_and_the_page(ramp: ModuleType, report: ModuleType, tmp_path: Path) -> None:
    data_dir = Path(os.environ.get("LRBS_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found in {data_dir}: set LRBS_DATA_DIR")
    args = ["--setting", "mlp", "--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--train-subset", "3200"]
    args += ["--eval-subset", "500", "--target-loss", "0.8"]
    assert ramp.main([*args, "--groups", "core"]) == 0
    assert ramp.main([*args, "--resume", "--groups", "noise", "--noise-rules", "sqrt", "--noise-k", "1"]) == 0
    with (tmp_path / "ramp_mlp.csv").open() as f:
        rows = {row["label"]: row for row in csv.DictReader(f)}
    assert {"base 32", "fixed 128 linear", "fixed 128 sqrt", "noise sqrt simple k=1 -> 128"} <= set(rows)
    assert {row["kind"] for row in rows.values()} == {"base", "fixed", "ramp", "noise"}
    base = rows["base 32"]
    assert base["status"] == "reached"
    assert int(base["budget"]) == math.ceil(float(base["steps"])) * 32
    page = report.report(tmp_path, tmp_path / "page.md")
    assert "| base 32 |" in page
    assert (tmp_path / "ramp.png").stat().st_size > 10_000


def test_page_is_the_generator_output(report: ModuleType) -> None:
    assert report.render(REPO / "docs" / "ramp") == (REPO / "docs" / "ramp.md").read_text()
