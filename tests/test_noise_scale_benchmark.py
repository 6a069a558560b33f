"""benchmarks/noise_scale.py's ``overhead`` (docs/noise_scale.md's cost numbers), run small on real MNIST."""

from __future__ import annotations

import csv
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LRBS_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.mark.slow  # like the other studies' tiny runs; the benchmarks use today's Lightning
def test_overhead_times_every_variant_and_the_plain_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    noise_scale = importlib.import_module("noise_scale")
    argv = ["overhead", "--data-dir", str(DATA_DIR), "--rounds", "1", "--steps", "2", "--warmup", "1",
            "--paired-steps", "4", "--raw-rounds", "2", "--out-dir", str(tmp_path)]  # fmt: skip
    noise_scale.main(argv)
    with (tmp_path / "noise_scale_overhead.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == list(noise_scale.VARIANTS)
    assert "rule=adascale" in noise_scale.VARIANTS
    assert all(float(r["step_ms"]) > 0 for r in rows)
    page = (tmp_path / "noise_scale_overhead.md").read_text()
    assert "| rule=adascale |" in page
    assert "\nheap: " in page  # what was done to the allocator (--heap kept: glibc's malloc pinned, if it is glibc)
    raw_line = page.split("plain PyTorch", 1)[1]
    assert "in a rotating order, 2 rounds" in raw_line
    assert re.search(r"measured [+-]\d+\.\d{3} ms = [+-]\d+\.\d\d %", raw_line)
    assert re.search(r"adascale [+-]\d+\.\d{3} ms = [+-]\d+\.\d\d %", raw_line)
    with (tmp_path / "noise_scale_overhead_raw.csv").open() as f:
        raw = list(csv.DictReader(f))
    assert [r["round"] for r in raw] == ["0", "1"]
    assert all(float(r[f"{kind}_ms"]) > 0 for r in raw for kind in ("plain", "measured", "adascale"))
    assert all(int(r[f"{kind}_faults"]) >= 0 for r in raw for kind in ("plain", "measured", "adascale"))
    assert "page faults per step, median: plain " in raw_line


@pytest.mark.parametrize("variant", ["plain", "noise every step", "adascale"])
def test_step_instructions_worker_fits_each_variant(variant: str) -> None:
    """The fit benchmarks/step_instructions.py counts under callgrind runs (callgrind itself takes minutes)."""
    script = REPO / "benchmarks" / "step_instructions.py"
    result = subprocess.run(
        [sys.executable, str(script), "--worker", variant, "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_hook_probes_time_every_kind_and_every_parameter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """benchmarks/hook_probes.py (docs/noise_scale.md's account of the wall time), run small."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    probes = importlib.import_module("hook_probes")
    out = tmp_path / "probes.md"
    probes.main(["--rounds", "2", "--out", str(out)])
    page = out.read_text()
    for kind in probes.KINDS[1:]:
        assert re.search(rf"^\| {kind} \| [+-]\d+\.\d{{3}} \|", page, re.MULTILINE), kind
    assert page.count(" (µs) |") == 3
    assert len(re.findall(r"^\| \([\d, ]+\) \(\d\.\) \|", page, re.MULTILINE)) == 4  # the CNN's 4 parameter tensors
