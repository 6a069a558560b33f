"""The batch-size study of docs/frontier.md (benchmarks/frontier.py): its fit, a tiny real run, and the page."""

from __future__ import annotations

import csv
import importlib
import math
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LRBS_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture
def frontier(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("frontier")


@pytest.fixture
def report(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("frontier_report")


def test_mccandlish_fit_recovers_known_parameters(report: ModuleType) -> None:
    batches = [32 * 2**k for k in range(9)]
    s_min, b_crit = report.fit_mccandlish(batches, [150 * (1 + 700 / b) for b in batches])
    assert s_min == pytest.approx(150, rel=0.03)
    assert b_crit == pytest.approx(700, rel=0.03)


def test_eval_schedule_resolves_five_percent(frontier: ModuleType) -> None:
    due = [t for t in range(1, 5001) if frontier.eval_due(t)]
    assert due[:20] == list(range(1, 21))
    assert all((b - a) / a <= 0.1 for a, b in zip(due, due[1:], strict=False) if a >= 20)


@pytest.mark.slow
def test_tiny_study_writes_every_rule_and_the_page(frontier: ModuleType, report: ModuleType, tmp_path: Path) -> None:
    if not (DATA_DIR / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found in {DATA_DIR}: set LRBS_DATA_DIR")
    args = ["--model", "mlp", "--data-dir", str(DATA_DIR), "--out-dir", str(tmp_path), "--scales", "1", "2", "4"]
    args += ["--target-loss", "1.0", "--max-steps", "200", "--train-subset", "2000", "--eval-subset", "500"]
    assert frontier.main(args) == 0
    with (tmp_path / "frontier_mlp.csv").open() as f:
        rows = list(csv.DictReader(f))
    kinds = {row["kind"] for row in rows}
    assert {"grid", "linear", "sqrt", "linear + warmup"} <= kinds
    assert ("adascale" in kinds) == frontier.has_adascale()
    linear_s4 = next(r for r in rows if r["kind"] == "linear" and r["scale"] == "4")
    base = next(r for r in rows if r["kind"] == "linear" and r["scale"] == "1")
    assert float(linear_s4["lr"]) == pytest.approx(4 * float(base["lr"]), rel=1e-5)  # the shipped rule set the LR
    assert all(r["status"] in ("reached", "diverged", "slow") for r in rows)
    page = report.report(tmp_path, tmp_path / "page.md")
    assert "McCandlish fit" in page
    assert "| 4 | 128 |" in page
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    assert not math.isnan(report.analyse(rows)["frontier"][128].steps)
    # --resume runs only what the CSV lacks (e.g. rule='adascale' once installed): nothing here
    assert frontier.main([*args, "--resume"]) == 0
    with (tmp_path / "frontier_mlp.csv").open() as f:
        assert list(csv.DictReader(f)) == rows


def test_page_is_the_generator_output(report: ModuleType) -> None:
    out = REPO / "docs" / "frontier"
    assert report.render(out) == (REPO / "docs" / "frontier.md").read_text()
