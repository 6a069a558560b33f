"""benchmarks/gpu_check.py, the one call that checks on a lent GPU what CI cannot, runs the checks a CPU can run."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_the_cpu_checks_pass_and_the_others_say_why_they_are_skipped(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = out.read_text()
    assert "| cuda | ok: ‖G‖², tr Σ of 8 steps equal the CPU's (1e-3) |" in table
    if hasattr(importlib.import_module("lightning.pytorch.strategies"), "ModelParallelStrategy"):
        assert "| fsdp2 | ok: ‖G‖², tr Σ and the adascale (Adam) LR of 8 steps equal DDP's (1e-3) |" in table
    for name in ("fsdp", "deepspeed", "bf16", "fp16"):
        assert f"| {name} | skipped: " in table
