"""The strategies large models train with (``ModelParallelStrategy``: FSDP2, tensor parallelism, both), on CPU with
gloo: the effective batch counts data-parallel replicas only, and the noise scale and AdaScale measure exactly what
DDP or one process measures on the same micro-batches. Each fit runs as its own script (tests/scripts/parallel_fit.py).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lrbs_testing import SCRIPTS, rank_results, script_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not hasattr(importlib.import_module("lightning.pytorch.strategies"), "ModelParallelStrategy"),
        reason="ModelParallelStrategy came with Lightning 2.4",
    ),
]

REL_STATS = 1e-3  # statistics: sums of floats in another order (sharded, tensor-parallel matmuls)
REL_LR = 1e-9  # LRs that do not depend on them


def fit(out: Path, ranks: int = 2, **config: Any) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(SCRIPTS / "parallel_fit.py"), str(out), json.dumps(config)]
    subprocess.run(command, env=script_env(), check=True, timeout=600)
    return rank_results(out, ranks)


def same_on_every_rank(results: list[dict[str, Any]], *keys: str) -> None:
    for key in keys:
        assert all(r[key] == results[0][key] for r in results), key


class TestEffectiveBatch:
    def test_tensor_parallel_ranks_feed_the_same_samples(self, tmp_path: Path) -> None:
        results = fit(tmp_path, strategy="tp", dp=1, tp=2, callback={"base_batch_size": 8})
        same_on_every_rank(results, "lrs", "summary")
        assert results[0]["effective"] == 8
        assert results[0]["factor"] == 1.0
        assert results[0]["lrs"] == pytest.approx([0.05] * 6, rel=REL_LR)
        assert results[0]["summary"].startswith(
            "effective batch 8 = 8 per device × 1 data-parallel (2 devices: tensor parallel 2); base 8"
        )

    def test_two_by_two_counts_the_two_data_parallel_replicas(self, tmp_path: Path) -> None:
        results = fit(tmp_path, ranks=4, strategy="fsdp_tp", dp=2, tp=2, callback={"base_batch_size": 8})
        same_on_every_rank(results, "lrs", "summary")
        assert results[0]["effective"] == 16
        assert results[0]["factor"] == 2.0
        assert results[0]["lrs"] == pytest.approx([0.1] * 6, rel=REL_LR)
        assert (
            "effective batch 16 = 8 per device × 2 data-parallel (4 devices: tensor parallel 2)"
            in (results[0]["summary"])
        )

    @pytest.mark.parametrize(
        "callback",
        [
            {"base_batch_size": 8, "rule": "linear", "warmup_steps": 3},
            {"base_batch_size": 8, "rule": "sqrt"},
            {"base_batch_size": 4, "rule": "sde"},
        ],
        ids=["linear+warmup", "sqrt", "sde"],
    )
    def test_fsdp2_scales_as_ddp_with_accumulation(self, tmp_path: Path, callback: dict[str, Any]) -> None:
        optimizer = "adam" if callback["rule"] == "sde" else "sgd"
        common = {"dp": 2, "accumulation": 2, "callback": callback, "optimizer": optimizer}
        fsdp = fit(tmp_path / "fsdp", strategy="fsdp", **common)
        ddp = fit(tmp_path / "ddp", strategy="ddp", **common)
        same_on_every_rank(fsdp, "lrs")
        assert fsdp[0]["effective"] == ddp[0]["effective"] == 32
        assert fsdp[0]["lrs"] == pytest.approx(ddp[0]["lrs"], rel=REL_LR)
        assert fsdp[0]["summary"] == ddp[0]["summary"]


class TestNoiseScale:
    """|G|², tr Σ and B_noise of each measured step, against DDP (FSDP2) or one process (tensor parallelism)."""

    @pytest.mark.parametrize("accumulation", [1, 2])
    def test_fsdp2_measures_what_ddp_measures(self, tmp_path: Path, accumulation: int) -> None:
        callback = {"noise_scale": True, "noise_every_n_steps": 1}
        common = {"dp": 2, "accumulation": accumulation, "callback": callback}
        fsdp = fit(tmp_path / "fsdp", strategy="fsdp", **common)
        ddp = fit(tmp_path / "ddp", strategy="ddp", **common)
        same_on_every_rank(fsdp, "noise")
        assert len(fsdp[0]["noise"]) == len(ddp[0]["noise"]) == 6
        for ours, theirs in zip(fsdp[0]["noise"], ddp[0]["noise"]):
            assert ours[0] == theirs[0]
            assert ours[3] == theirs[3] == 2 * accumulation  # micro-batches: 2 replicas x the accumulated ones
            assert ours[1:3] == pytest.approx(theirs[1:3], rel=REL_STATS)
        assert fsdp[0]["noise_scale"] == pytest.approx(ddp[0]["noise_scale"], rel=REL_STATS)

    @pytest.mark.parametrize(("strategy", "dp", "ranks"), [("tp", 1, 2), ("fsdp_tp", 2, 4)])
    def test_tensor_parallelism_measures_what_unsharded_runs_measure(
        self, tmp_path: Path, strategy: str, dp: int, ranks: int
    ) -> None:
        common = {"accumulation": 2, "callback": {"noise_scale": True, "noise_every_n_steps": 1}}
        sharded = fit(tmp_path / strategy, ranks=ranks, strategy=strategy, dp=dp, tp=2, **common)
        if dp == 1:
            reference = fit(tmp_path / "single", ranks=1, strategy="single", **common)
        else:
            reference = fit(tmp_path / "ddp", strategy="ddp", dp=dp, **common)
        same_on_every_rank(sharded, "noise")
        for ours, theirs in zip(sharded[0]["noise"], reference[0]["noise"]):
            assert ours[3] == theirs[3] == 2 * dp
            assert ours[1:3] == pytest.approx(theirs[1:3], rel=REL_STATS)
        assert len(sharded[0]["noise"]) == len(reference[0]["noise"]) == 6


class TestAdaScale:
    @pytest.mark.parametrize("optimizer", ["sgd", "adam"])
    def test_fsdp2_gain_and_lr_equal_ddp_at_every_step(self, tmp_path: Path, optimizer: str) -> None:
        common = {"dp": 2, "accumulation": 2, "optimizer": optimizer, "max_steps": 8}
        common["callback"] = {"base_batch_size": 8, "rule": "adascale", "warmup_steps": 2}
        fsdp = fit(tmp_path / "fsdp", strategy="fsdp", **common)
        ddp = fit(tmp_path / "ddp", strategy="ddp", **common)
        same_on_every_rank(fsdp, "lrs")
        assert fsdp[0]["lrs"] == pytest.approx(ddp[0]["lrs"], rel=REL_STATS)
        assert fsdp[0]["progress"] == pytest.approx(ddp[0]["progress"], rel=REL_STATS)
        base = 0.05 if optimizer == "sgd" else 0.01
        assert max(fsdp[0]["lrs"][2:]) > base * 1.05  # the gain moved off 1
        assert len(fsdp[0]["noise"]) >= 6

    def test_tensor_parallel_sgd_gain_equals_one_process(self, tmp_path: Path) -> None:
        common = {"accumulation": 4, "max_steps": 6, "callback": {"base_batch_size": 8, "rule": "adascale"}}
        sharded = fit(tmp_path / "tp", strategy="tp", dp=1, tp=2, **common)
        single = fit(tmp_path / "single", ranks=1, strategy="single", **common)
        assert sharded[0]["lrs"] == pytest.approx(single[0]["lrs"], rel=REL_STATS)
        assert max(sharded[0]["lrs"][1:]) > 0.05 * 1.05


class TestResume:
    def test_fsdp2_distributed_checkpoint_resumes_without_scaling_twice(self, tmp_path: Path) -> None:
        callback = {"base_batch_size": 8, "warmup_steps": 4}
        whole = fit(tmp_path / "whole", strategy="fsdp", dp=2, max_steps=8, callback=callback)
        ckpt = str(tmp_path / "half.ckpt")
        fit(tmp_path / "first", strategy="fsdp", dp=2, max_steps=4, callback=callback, ckpt_out=ckpt)
        assert Path(ckpt).is_dir()  # a distributed checkpoint is a folder
        resumed = fit(tmp_path / "resumed", strategy="fsdp", dp=2, max_steps=8, callback=callback, ckpt_in=ckpt)
        assert resumed[0]["lrs"] == pytest.approx(whole[0]["lrs"][4:], rel=REL_LR)
        assert "(resumed, already scaled)" in resumed[0]["summary"]

    def test_fsdp2_resumed_on_another_data_parallel_size_rescales_by_new_over_applied(self, tmp_path: Path) -> None:
        callback = {"base_batch_size": 8}
        ckpt = str(tmp_path / "dp2.ckpt")
        fit(tmp_path / "first", strategy="fsdp", dp=2, max_steps=4, callback=callback, ckpt_out=ckpt)
        resumed = fit(tmp_path / "tp", strategy="fsdp_tp", dp=1, tp=2, max_steps=8, callback=callback, ckpt_in=ckpt)
        assert resumed[0]["factor"] == 1.0
        assert resumed[0]["lrs"] == pytest.approx([0.05] * 4, rel=REL_LR)  # the checkpoint held 0.1 (×2)
        assert "(resumed at ×2, rescaled)" in resumed[0]["summary"]


class TestRefusals:
    def test_adascale_with_adam_under_tensor_parallelism_is_refused_at_fit_start(self, tmp_path: Path) -> None:
        config = {"strategy": "tp", "dp": 1, "tp": 2, "accumulation": 2, "optimizer": "adam"}
        config["callback"] = {"base_batch_size": 8, "rule": "adascale"}
        command = [sys.executable, str(SCRIPTS / "parallel_fit.py"), str(tmp_path), json.dumps(config)]
        result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode != 0
        assert "rule='adascale' measures Adam's noise on its preconditioned gradients, which is not supported " in (
            result.stderr
        )
        assert "under tensor parallelism (tensor_parallel_size > 1): use SGD" in result.stderr
        assert not (tmp_path / "rank0.json").exists()  # no fit ran
