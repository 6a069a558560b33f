"""Issue 21's study (benchmarks/auto_lr.py, docs/auto_lr.md): the secant it measures, its smallest configuration, the
LR finder baseline, and the page's generated block."""

from __future__ import annotations

import csv
import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LRBS_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture
def auto_lr(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("auto_lr")


def test_secant_along_the_step_is_exact_on_a_quadratic(auto_lr: ModuleType) -> None:
    """L = 1/2 w^T A w: one SGD step at LR 0.1, the probe gives g^T g / g^T A g exactly (the greedy step)."""
    a = torch.diag(torch.tensor([1.0, 4.0, 10.0], dtype=torch.float64))
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=0.1)
    trace: list[dict[str, float]] = []
    c = auto_lr.Controller(base_lr=0.1, batch=1, scale=1.0, probe_every=1, trace=trace)

    def loss() -> torch.Tensor:
        return 0.5 * w @ a @ w

    value = loss()
    value.backward()
    g = w.grad.detach().clone()
    c.before_step(opt, float(value))
    opt.step()
    c.after_step(opt, lambda: float(loss()))
    assert trace[0]["eta_star"] == pytest.approx(float(g @ g / (g @ a @ g)), rel=1e-9)
    assert c.extra_forward == 1


def test_mccandlish_factor_is_linear_below_and_capped_above(auto_lr: ModuleType) -> None:
    rule = auto_lr.Mccandlish(base_lr=0.1, batch=1, scale=1.0, cap=4.0)
    assert rule.lr_factor() == pytest.approx(1.0)
    rule.scale = 1e9
    assert rule.lr_factor() == pytest.approx(4.0)
    rule.scale, rule.p = 4.0, 2.0
    assert rule.lr_factor() == pytest.approx((1 / 16 + (1 - 1 / 16) / 4) ** -0.5)


@pytest.mark.slow
def test_smallest_configuration_and_the_lr_finder_run(auto_lr: ModuleType, tmp_path: Path) -> None:
    if not (DATA_DIR / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found in {DATA_DIR}: set LRBS_DATA_DIR")
    out = tmp_path / "runs.csv"
    base = ["--data-dir", str(DATA_DIR), "--setting", "mlp", "--scales", "4", "--out", str(out)]
    assert auto_lr.main([*base, "--rule", "ceiling", "--param", "c=1"]) == 0
    assert auto_lr.main([*base, "--rule", "lr_find"]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["rule"] for r in rows] == ["ceiling", "lr_find"]
    assert all(r["status"] in ("reached", "diverged", "slow") for r in rows)
    assert 0 < float(rows[0]["cost"]) < 0.01  # one forward of the batch
    assert float(rows[1]["cost"]) > 0.1  # the finder's sweep: 100 steps


def test_page_block_is_the_generator_output(auto_lr: ModuleType, tmp_path: Path) -> None:
    page = tmp_path / "auto_lr.md"
    page.write_text((REPO / "docs" / "auto_lr.md").read_text())
    assert auto_lr.report(REPO / "docs" / "auto_lr", page, figure=None) == (REPO / "docs" / "auto_lr.md").read_text()
