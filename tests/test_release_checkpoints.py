"""Checkpoints written by the release before the component redesign load, and the fit resumed from them continues
exactly as that release continued it (``tests/release_checkpoints.py`` wrote them and recorded the continuation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from packaging.version import Version
from release_checkpoints import CASES, DATA, fit


def flat(values: Any) -> list[float]:
    return [x for v in values for x in flat(v)] if isinstance(values, list) else [float(values)]


EXPECTED: dict[str, Any] = json.loads((DATA / "expected.json").read_text())

pytestmark = pytest.mark.skipif(
    Version(pl.__version__) < Version("2.5"),
    reason="Lightning < 2.5 replays the last batch of a checkpoint written at an epoch end differently; the "
    f"checkpoints were written with Lightning {EXPECTED['lightning']}",
)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_release_checkpoint_resumes_exactly_as_the_release_continued(name: str, tmp_path: Path) -> None:
    expected = EXPECTED["cases"][name]
    model, trainer, callback = fit(name, tmp_path, ckpt_path=str(DATA / f"{name}.ckpt"))
    start = expected["global_step_at_checkpoint"]
    assert len(model.lrs) == len(expected["lrs"]) - start
    # AdaScale's LRs follow float32 noise statistics, which the estimator now sums in one go per step (issue 18):
    # the same values to float32 rounding
    rel = 1e-6 if name == "adascale_invariant" else 1e-9
    for key in ("lrs", "betas", "eps"):
        assert flat(getattr(model, key)) == pytest.approx(flat(expected[key][start:]), rel=rel, abs=0.0), key
    if expected["noise"] is None:
        assert callback.noise is None
    else:
        noise = callback.noise
        assert [noise.grad_sq_norm, noise.grad_var] == pytest.approx(expected["noise"][:2], rel=1e-6)
        assert noise.measurements == expected["noise"][2]
    assert trainer.global_step == len(expected["lrs"])


def test_the_files_were_written_by_the_release_before_the_redesign() -> None:
    assert EXPECTED["commit"] == "06944d12900ddcddeee77e39d8f2f500c1205292"
    assert set(EXPECTED["cases"]) == set(CASES)
    for name in CASES:
        state = EXPECTED["cases"][name]["callback_state"]
        assert state["scale_factors"] is not None  # each holds a scaled run's state, as the release wrote it


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_file_holds_the_state_the_release_recorded(name: str) -> None:
    """The committed checkpoint is the one the release wrote: its callback state is what the release recorded beside
    it in expected.json (the files had only ModelCheckpoint's machine paths stripped)."""
    checkpoint = torch.load(DATA / f"{name}.ckpt", weights_only=False, map_location="cpu")
    assert list(checkpoint["callbacks"]) == ["BatchScalingCallback"]
    state = json.loads(json.dumps(checkpoint["callbacks"]["BatchScalingCallback"], default=float))
    assert state == EXPECTED["cases"][name]["callback_state"]
