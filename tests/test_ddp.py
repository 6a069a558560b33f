"""Real distributed fits on CPU (gloo): DDP with 2 processes, and two "nodes" of one process each.

Under pytest, Lightning's ``ddp`` strategy would re-launch pytest itself, so each fit runs as a script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lrbs_testing import SCRIPTS, rank_results, run_script, script_env

SCRIPT = SCRIPTS / "ddp_fit.py"
pytestmark = pytest.mark.slow


def test_ddp_two_processes_double_the_lr_on_both_ranks(tmp_path: Path) -> None:
    ranks = run_script("ddp_fit.py", tmp_path, 1, 2)
    for result in ranks:
        assert result["world_size"] == 2
        assert result["effective"] == 16
        assert result["factor"] == 2.0
        assert result["lrs"][0] == pytest.approx([0.2, 0.1])
    assert ranks[0]["lrs"] == ranks[1]["lrs"]
    summary = ranks[0]["summary"]
    assert summary.startswith("effective batch 16 = 8 per device × 2 devices; base 8; rule linear → LR ×2")


def test_uneven_ranks_sum_their_batches_and_agree_on_one_factor(tmp_path: Path) -> None:
    ranks = run_script("ddp_fit.py", tmp_path, 1, 2, "uneven")
    for result in ranks:
        assert result["effective"] == 12  # 8 + 4, not 2 x the local size
        assert result["factor"] == 2.0
    assert ranks[0]["lrs"] == ranks[1]["lrs"]
    assert "effective batch 12 = (8 + 4) over ranks" in ranks[0]["summary"]


def test_two_nodes_give_world_size_two(tmp_path: Path) -> None:
    env = script_env()
    procs = [
        subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path), "2", "1"], env={**env, "NODE_RANK": str(node)})
        for node in (0, 1)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    ranks = rank_results(tmp_path)
    for result in ranks:
        assert result["world_size"] == 2
        assert result["effective"] == 16
        assert result["factor"] == 2.0
    assert "8 per device × 1 device × 2 nodes" in ranks[0]["summary"]
