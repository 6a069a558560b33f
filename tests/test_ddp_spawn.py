"""``ddp_spawn`` (issue 9, point 9): the callback instance the user holds in the launching process reports what the
spawned workers applied (``effective_batch_size``, ``scale_factor``, ``summary``), as Lightning brings back
``ModelCheckpoint.best_model_path`` and the callback metrics.

A real 2-process ``ddp_spawn`` fit on CPU (gloo), run as a script (tests/scripts/ddp_spawn_fit.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lrbs_testing import run_script

pytestmark = pytest.mark.slow
REL = 1e-9


def test_launching_process_reports_what_the_workers_applied(tmp_path: Path) -> None:
    """Batch 8 per device × 2 devices × 2 accumulation = 32, base 8: ×4; warmup 3 steps from ×1/4."""
    workers = run_script("ddp_spawn_fit.py", tmp_path)
    for worker in workers:
        assert worker["world_size"] == 2
        assert len(worker["lrs"]) == 2  # 64 samples over 2 ranks: 4 batches of 8 each, 2 steps
        for t, lrs in enumerate(worker["lrs"]):
            w = 0.25 + 0.75 * min(1.0, t / 3)
            assert lrs == pytest.approx([0.4 * w, 0.2 * w], rel=REL), f"step {t}"
    main = json.loads((tmp_path / "main.json").read_text())
    assert main["effective"] == 32
    assert main["per_device"] == 8
    assert main["factor"] == 4.0
    assert main["factors"] == [4.0]
    assert main["summary"] == workers[0]["summary"]
    assert main["summary"].startswith("effective batch 32 = 8 per device × 2 devices × 2 accumulation; base 8")
