"""``benchmarks/batch_noise.py``: the study's ``noise`` batch schedule rule (doubles on the measured noise scale, never
shrinks, up to the target) and the numbers it refuses. Study code: the package does not ship it (docs/ramp.md)."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def noise_doubling(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("batch_noise").NoiseDoubling  # type: ignore[no-any-return]


def test_doubles_only_past_k_times_the_batch_and_stops_at_the_target(noise_doubling: type) -> None:
    rule = noise_doubling(start=64, k=4.0, warm=2)
    assert rule.batch(64, 192, 1000.0, 1) == 64  # warming up
    assert rule.batch(64, 192, 255.0, 2) == 64
    assert rule.batch(64, 192, 256.0, 2) == 128
    assert rule.batch(128, 192, 1e9, 9) == 192  # the last step lands on a target that is not a power of 2
    assert rule.batch(192, 192, math.inf, 9) == 192
    assert rule.batch(128, 192, None, 9) == 128


@pytest.mark.parametrize(
    ("args", "check", "match"),
    [
        ((0,), None, r"`batch_noise start` must be a positive int, got 0"),
        ((32, math.nan), None, r"`batch_noise k` must be a finite positive number, got nan"),
        ((32, 8.0, 0), None, r"`batch_noise warm` must be a positive int, got 0"),
        ((256,), (128, 32, 1), r"start 256 is larger than the target batch 128"),
        ((48,), (128, 32, 1), r"must be multiples of the micro-batch round 32"),
        ((32,), (128, 32, 1), r"needs at least two micro-batch gradients per step; .* start at 64"),
    ],
)
def test_refusals_name_the_numbers(
    noise_doubling: type, args: tuple[float, ...], check: tuple[int, int, int] | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        noise_doubling(*args).check(*check) if check else noise_doubling(*args)  # type: ignore[arg-type]


def test_two_replicas_give_two_micro_batch_gradients(noise_doubling: type) -> None:
    noise_doubling(32).check(target=128, round_size=32, replicas=2)  # 16 per device on 2 ranks: measurable
