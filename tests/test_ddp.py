"""Real distributed fits on CPU (gloo): DDP with 2 processes, and two "nodes" of one process each.

Under pytest, Lightning's ``ddp`` strategy would re-launch pytest itself, so each fit runs as a script."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent / "scripts" / "ddp_fit.py"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), PYTHONWARNINGS="ignore", **extra)
    return env


def _results(out: Path, n: int) -> list[dict[str, Any]]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


def test_ddp_two_processes_double_the_lr_on_both_ranks(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "1", "2"], env=_env(), check=True, timeout=300)
    ranks = _results(tmp_path, 2)
    for result in ranks:
        assert result["world_size"] == 2
        assert result["effective"] == 16
        assert result["factor"] == 2.0
        assert result["lrs"][0] == pytest.approx([0.2, 0.1])
    assert ranks[0]["lrs"] == ranks[1]["lrs"]
    summary = ranks[0]["summary"]
    assert summary.startswith("effective batch 16 = 8 per device × 2 devices; base 8; rule linear → LR ×2")


def test_uneven_ranks_sum_their_batches_and_agree_on_one_factor(tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), str(tmp_path), "1", "2", "uneven"]
    subprocess.run(cmd, env=_env(), check=True, timeout=300)
    ranks = _results(tmp_path, 2)
    for result in ranks:
        assert result["effective"] == 12  # 8 + 4, not 2 x the local size
        assert result["factor"] == 2.0
    assert ranks[0]["lrs"] == ranks[1]["lrs"]
    assert "effective batch 12 = (8 + 4) over ranks" in ranks[0]["summary"]


def test_two_nodes_give_world_size_two(tmp_path: Path) -> None:
    env = _env()
    procs = [
        subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path), "2", "1"], env={**env, "NODE_RANK": str(node)})
        for node in (0, 1)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    ranks = _results(tmp_path, 2)
    for result in ranks:
        assert result["world_size"] == 2
        assert result["effective"] == 16
        assert result["factor"] == 2.0
    assert "8 per device × 1 device × 2 nodes" in ranks[0]["summary"]
