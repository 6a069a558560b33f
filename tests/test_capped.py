"""The saturating rule of issue 21 (lightning_lrbs.capped): formula, defaults, the LR it applies, its state."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lrbs_testing import LR, SCRIPTS, LRModel, flat, quiet_trainer, rank_results, script_env

from lightning_lrbs import BatchScalingCallback, scale_factor, scale_for_batch
from lightning_lrbs.capped import DEFAULT_CAPS, CappedRule, capped_factor, capped_rule, optimizer_family


def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2))]


class TestFormula:
    @pytest.mark.parametrize(
        ("ratio", "cap", "exponent", "expected"),
        [
            (1.0, 2.83, 1.0, 1.0),  # the base batch keeps the base LR
            (4.0, 1.0, 1.0, 1.0),  # C = 1, the least ceiling: never scaled
            (4.0, 3.0, 1.0, 2.0),  # 1 / (1/3 + (2/3)/4) = 1 / 0.5
            (16.0, 2.0, 1.0, 32.0 / 17.0),  # 1 / (1/2 + (1/2)/16) = 1 / (17/32)
            (4.0, 2.0, 2.0, 1.0 / math.sqrt(0.25 + 0.75 / 4)),  # (1/4 + (3/4)/4) ** -1/2
            (16.0, 8.0, 2.0, 1.0 / math.sqrt(1 / 64 + (63 / 64) / 16)),
        ],
    )
    def test_hand_computed_values(self, ratio: float, cap: float, exponent: float, expected: float) -> None:
        assert capped_factor(ratio, cap, exponent) == pytest.approx(expected, rel=1e-12)

    def test_linear_below_the_cap_and_the_cap_above_it(self) -> None:
        assert capped_factor(1e-6, 1e6) == pytest.approx(1e-6, rel=1e-5)  # r << C: f(r) ~ r
        assert capped_factor(1e12, 2.83) == pytest.approx(2.83, rel=1e-9)  # r >> C: f -> C
        assert capped_factor(1e-6, 1e6, 2.0) == pytest.approx(1e-3, rel=1e-5)  # p = 2: f(r) ~ sqrt(r)
        values = [capped_factor(2.0**k, 2.83) for k in range(12)]
        assert values == sorted(values)  # increasing
        assert values[-1] < 2.83  # below the cap

    def test_is_adascale_gain_with_a_fixed_noise_scale(self) -> None:
        from lightning_lrbs.adascale import gain_from_noise_scale

        cap, base = 2.83, 32
        for batch in (64, 512, 8192):
            expected = gain_from_noise_scale((cap - 1) * base, base, batch)
            assert capped_factor(batch / base, cap) == pytest.approx(expected, rel=1e-12)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"ratio": 0.0, "cap": 2.0}, "`ratio` must be a finite number > 0, got 0.0"),
            ({"ratio": 2.0, "cap": 0.5}, "`cap` must be a finite number >= 1, got 0.5"),
            ({"ratio": 2.0, "cap": math.inf}, "`cap` must be a finite number >= 1, got inf"),
            ({"ratio": 2.0, "cap": 2.0, "exponent": -1.0}, "`exponent` must be a finite number > 0, got -1.0"),
        ],
    )
    def test_refuses_out_of_range(self, kwargs: dict[str, float], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            capped_factor(**kwargs)


class TestDefaults:
    def test_family_and_default_constants(self) -> None:
        sgd = torch.optim.SGD(params(), lr=0.1)
        momentum = torch.optim.SGD(params(), lr=0.1, momentum=0.9)
        adam = torch.optim.AdamW(params(), lr=1e-3)
        assert [optimizer_family(o) for o in (sgd, momentum, adam)] == ["sgd", "momentum", "adaptive"]
        assert (capped_rule(sgd).cap, capped_rule(sgd).exponent) == DEFAULT_CAPS["sgd"] == (2.83, 1.0)
        assert (capped_rule(momentum).cap, capped_rule(momentum).exponent) == (11.3, 1.0)
        assert (capped_rule(adam).cap, capped_rule(adam).exponent) == (8.0, 2.0)
        assert capped_rule(adam, cap=4.0).state_dict() == {"cap": 4.0, "exponent": 2.0}

    def test_needs_an_optimizer_or_both_constants(self) -> None:
        with pytest.raises(ValueError, match="needs the optimizer"):
            capped_rule(cap=2.0)
        assert capped_rule(cap=2.0, exponent=1.0)(1e9) == pytest.approx(2.0)


class TestAppliedLR:
    @pytest.mark.parametrize(("momentum", "world_size", "expected_family"), [(0.0, 16, "sgd"), (0.9, 256, "momentum")])
    def test_scale_for_batch_sets_exactly_the_factor(
        self, momentum: float, world_size: int, expected_family: str
    ) -> None:
        optimizer = torch.optim.SGD(params(), lr=0.2, momentum=momentum)
        rule = capped_rule(optimizer)
        result = scale_for_batch(
            optimizer, per_device_batch_size=32, world_size=world_size, base_batch_size=32, rule=rule
        )
        cap, exponent = DEFAULT_CAPS[expected_family]
        factor = capped_factor(world_size, cap, exponent)
        assert result.scale_factor == factor
        assert optimizer.param_groups[0]["lr"] == 0.2 * factor
        assert result.rules == (rule.__name__,) == (f"capped(C={cap:g}, p={exponent:g})",)

    def test_scheduler_follows_the_factor(self) -> None:
        optimizer = torch.optim.Adam(params(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        scale_for_batch(
            optimizer, scheduler, per_device_batch_size=512, base_batch_size=32, rule=capped_rule(optimizer)
        )
        factor = capped_factor(16, 8.0, 2.0)
        assert scheduler.base_lrs == [pytest.approx(1e-3 * factor, rel=1e-12)]
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3 * factor, rel=1e-12)


class TestInLightning:
    def test_callback_applies_the_rule(self, tmp_path: Path) -> None:
        """The callback takes the rule as a callable: 8 per device over a base of 2 is S = 4, f = 1 / (1/2 + 1/8)."""
        callback = BatchScalingCallback(base_batch_size=2, rule=CappedRule(cap=2.0))
        model = LRModel()
        quiet_trainer(tmp_path, callbacks=[callback]).fit(model)
        assert callback.scale_factor == pytest.approx(1.6)
        assert model.lrs[0] == pytest.approx([1.6 * LR, 0.8 * LR])

    def test_module_does_not_import_lightning(self) -> None:
        code = (
            "import sys, lightning_lrbs.capped\n"
            "roots = {'lightning', 'pytorch_lightning', 'lightning_fabric'}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in roots))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]"


class TestState:
    def test_state_dict_round_trip(self) -> None:
        saved = CappedRule(cap=5.66, exponent=2.0).state_dict()
        restored = CappedRule(cap=2.0)
        restored.load_state_dict(saved)
        assert restored.state_dict() == saved == {"cap": 5.66, "exponent": 2.0}
        assert restored(64.0) == capped_factor(64.0, 5.66, 2.0)

    def test_load_tolerates_a_missing_exponent_and_refuses_a_bad_cap(self) -> None:
        rule = CappedRule(cap=4.0, exponent=2.0)
        rule.load_state_dict({"cap": 3.0})
        assert rule.state_dict() == {"cap": 3.0, "exponent": 1.0}
        with pytest.raises(ValueError, match="`cap` must be"):
            rule.load_state_dict({"cap": 0.1})
        assert rule.state_dict() == {"cap": 3.0, "exponent": 1.0}  # unchanged


class TestByName:
    """``rule="capped"`` resolves per optimizer to :func:`capped_rule` with its family's default ceiling."""

    def test_each_optimizer_gets_its_familys_factor(self) -> None:
        sgd, momentum, adam = (torch.optim.SGD(params(), lr=0.1), torch.optim.SGD(params(), lr=0.1, momentum=0.9),
                               torch.optim.Adam(params(), lr=1e-3))  # fmt: skip
        result = scale_for_batch(
            [sgd, momentum, adam], per_device_batch_size=32, world_size=16, base_batch_size=32, rule="capped"
        )
        expected = tuple(capped_factor(16.0, *DEFAULT_CAPS[family]) for family in ("sgd", "momentum", "adaptive"))
        assert result.scale_factors == expected
        assert expected[0] < expected[2] < expected[1] < 16.0  # three different ceilings, all below linear
        assert result.rules == ("capped(C=2.83, p=1)", "capped(C=11.3, p=1)", "capped(C=8, p=2)")
        assert [o.param_groups[0]["lr"] for o in (sgd, momentum, adam)] == [
            0.1 * expected[0], 0.1 * expected[1], 1e-3 * expected[2]
        ]  # fmt: skip

    def test_needs_the_optimizer(self) -> None:
        with pytest.raises(ValueError, match=r"rule='capped'.*needs the optimizer"):
            scale_factor(4.0, "capped")

    def test_callback_by_name_and_its_summary(self, tmp_path: Path) -> None:
        """LRModel's SGD has momentum 0.9: C = 11.3; 8 per device over a base of 2 is S = 4."""
        callback = BatchScalingCallback(base_batch_size=2, rule="capped")
        model = LRModel()
        quiet_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(model)
        factor = capped_factor(4.0, 11.3)
        assert callback.scale_factor == pytest.approx(factor, rel=1e-12)
        assert model.lrs[0] == pytest.approx([factor * LR, factor * LR / 2], rel=1e-12)
        assert f"capped(C=11.3, p=1) ×{factor:.4g}" in callback.summary

    def test_from_the_environment(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LRBS_BASE_BATCH_SIZE", "2")
        monkeypatch.setenv("LRBS_RULE", "capped")
        model = LRModel()
        quiet_trainer(tmp_path, max_epochs=1).fit(model)
        assert model.lrs[0] == pytest.approx([capped_factor(4.0, 11.3) * LR, capped_factor(4.0, 11.3) * LR / 2])

    def test_preview_cli(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        from lightning_lrbs.__main__ import main

        monkeypatch.chdir(Path(__file__).resolve().parents[1])
        argv = [
            "preview", "examples.preview_model.CosineSGD", "--init-args", '{"total_steps": 100}',
            "--batches-per-epoch", "100", "--max-epochs", "1", "--batch-size", "32", "--devices", "8",
            "--base-batch-size", "32", "--rule", "capped",
        ]  # fmt: skip
        assert main(argv) == 0
        assert f"rule capped → SGD capped(C=11.3, p=1) ×{capped_factor(8.0, 11.3):.3g}" in capsys.readouterr().out


class _StopAt(Callback):
    """Saves a checkpoint after optimizer step ``step`` and stops the fit there (an interruption)."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _cosine_model() -> LRModel:
    return LRModel(scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.01))


def _capped() -> BatchScalingCallback:
    return BatchScalingCallback(base_batch_size=2, rule="capped")


def _interrupted(tmp_path: Path, stop: int, **resume: Any) -> tuple[LRModel, LRModel, LRModel, BatchScalingCallback]:
    """An uninterrupted fit, the same fit stopped after step ``stop`` with a checkpoint, and its resume (Trainer
    arguments ``resume``): the three models and the resumed callback."""
    full, first, second, resumed = _cosine_model(), _cosine_model(), _cosine_model(), _capped()
    quiet_trainer(tmp_path, max_epochs=3, callbacks=[_capped()]).fit(full)
    ckpt = tmp_path / "mid.ckpt"
    quiet_trainer(tmp_path, max_epochs=3, callbacks=[_capped(), _StopAt(stop, ckpt)]).fit(first)
    quiet_trainer(tmp_path, max_epochs=3, callbacks=[resumed], **resume).fit(second, ckpt_path=ckpt)
    return full, first, second, resumed


class TestResume:
    """``rule="capped"`` on resume: never applied twice, and on another batch rescaled by f(S_new) / f(S_old)."""

    def test_interrupted_and_resumed_equals_uninterrupted(self, tmp_path: Path) -> None:
        full, first, second, resumed = _interrupted(tmp_path, 6)
        assert len(first.lrs) == 6
        assert flat(first.lrs + second.lrs) == pytest.approx(flat(full.lrs), rel=1e-9)
        assert resumed.summary.endswith("(resumed, already scaled)")

    def test_resume_at_twice_the_batch_rescales_by_the_ratio_of_the_factors(self, tmp_path: Path) -> None:
        full, _, second, resumed = _interrupted(tmp_path, 4, accumulate_grad_batches=2)
        before, after = capped_factor(4.0, 11.3), capped_factor(8.0, 11.3)  # S = 8 / 2, then 16 / 2
        assert resumed.scale_factor == pytest.approx(after, rel=1e-12)
        expected = [[after / before * lr for lr in step] for step in full.lrs[4 : 4 + len(second.lrs)]]
        assert len(second.lrs) == 4
        assert flat(second.lrs) == pytest.approx(flat(expected), rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "lr", "family"), [("sgd", 0.05, "sgd"), ("adam", 0.01, "adaptive")])
def test_ddp_ranks_apply_their_familys_factor(tmp_path: Path, optimizer: str, lr: float, family: str) -> None:
    """Two DDP processes of 8 per device over a base of 4: S = 4 on both ranks (tests/scripts/parallel_fit.py)."""
    config = {"strategy": "ddp", "dp": 2, "optimizer": optimizer, "callback": {"base_batch_size": 4, "rule": "capped"}}
    command = [sys.executable, str(SCRIPTS / "parallel_fit.py"), str(tmp_path), json.dumps(config)]
    subprocess.run(command, env=script_env(), check=True, timeout=600)
    ranks = rank_results(tmp_path, 2)
    factor = capped_factor(4.0, *DEFAULT_CAPS[family])
    for result in ranks:
        assert result["effective"] == 16
        assert result["factor"] == pytest.approx(factor, rel=1e-12)
        assert result["lrs"] == pytest.approx([lr * factor] * len(result["lrs"]), rel=1e-9)
    assert ranks[0]["lrs"] == ranks[1]["lrs"]


def test_the_defaults_are_the_studys_frozen_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    """DEFAULT_CAPS is what benchmarks/auto_lr.py froze on the development settings (docs/auto_lr.md)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    auto_lr = importlib.import_module("auto_lr")
    name, constants = auto_lr.FROZEN
    assert name == "mccandlish"
    family = {"sgd": "sgd", "momentum": "momentum", "adam": "adaptive"}
    assert {family[k]: (v["cap"], v["p"]) for k, v in constants.items()} == DEFAULT_CAPS
