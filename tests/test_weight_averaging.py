"""Weight averaging next to the callback (issue 9, points 4 and 7).

- ``StochasticWeightAveraging``'s ``swa_lrs`` are LRs tuned like the module's: the callback scales them by the same
  factor, also when the factor changes later. A fit with the callback at factor 2 uses, at every optimizer step, the
  LR of a fit without it whose module and ``swa_lrs`` were written at 2× by hand.
- Its BatchNorm pass (an extra epoch with ``accumulate_grad_batches`` set to the epoch's length) is no batch change:
  no new summary, no rescale, whatever the callback order.
- ``EMAWeightAveraging`` keeps working.

Each LR is recorded by the module's ``on_before_optimizer_step`` (inside ``optimizer.step``, after the step pre-hooks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch.callbacks as pl_callbacks
import pytest
import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler, StochasticWeightAveraging
from lrbs_testing import LRModel, quiet_trainer

from lightning_lrbs import BatchScalingCallback

REL = 1e-9


class BatchNormModel(LRModel):
    """LRModel with a BatchNorm in front of its layer, so SWA runs its BatchNorm pass after the last epoch."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.norm = torch.nn.BatchNorm1d(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.norm(x))


def swa_fit(tmp_path: Path, lr: float, swa_lrs: float, callbacks: list[Any], **kwargs: Any) -> list[list[float]]:
    torch.manual_seed(0)
    model = BatchNormModel(lr=lr)
    swa = StochasticWeightAveraging(swa_lrs=swa_lrs, swa_epoch_start=2, annealing_epochs=2)
    ordered = [swa, *callbacks] if kwargs.pop("swa_first", True) else [*callbacks, swa]
    quiet_trainer(tmp_path, max_epochs=4, callbacks=ordered, **kwargs).fit(model)
    return model.lrs


@pytest.mark.parametrize("swa_first", [True, False])
def test_swa_lrs_are_scaled_and_its_batchnorm_pass_is_no_batch_change(
    tmp_path: Path, swa_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Batch 8, base 4: ×2. SWA from epoch 2 anneals to swa_lrs; then its BatchNorm pass (epoch 4)."""
    expected = swa_fit(tmp_path / "by_hand", lr=0.2, swa_lrs=0.1, callbacks=[])
    callback = BatchScalingCallback(base_batch_size=4)
    with caplog.at_level(logging.INFO):
        got = swa_fit(tmp_path / "scaled", lr=0.1, swa_lrs=0.05, callbacks=[callback], swa_first=swa_first)
    assert len(got) == len(expected) > 16
    for t, (g, e) in enumerate(zip(got, expected)):
        assert g == pytest.approx(e, rel=REL), f"step {t}"
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("effective batch")]
    assert len(summaries) == 1, summaries  # no line for SWA's BatchNorm pass
    assert callback.effective_batch_size == 8
    assert callback.scale_factor == 2.0
    assert callback.summary.endswith("; StochasticWeightAveraging swa_lrs 0.05 → 0.1")


@pytest.mark.parametrize("swa_first", [True, False])
def test_swa_lrs_follow_a_later_change_of_the_factor(tmp_path: Path, swa_first: bool) -> None:
    """Accumulation 2 from epoch 3, inside the SWA phase: ×2 then ×4, on the module's LRs and on the SWA LRs."""

    def run(lr: float, swa_lrs: float, callbacks: list[Any], path: str) -> list[list[float]]:
        accumulation = GradientAccumulationScheduler({3: 2})
        return swa_fit(tmp_path / path, lr, swa_lrs, [*callbacks, accumulation], swa_first=swa_first)

    callback = BatchScalingCallback(base_batch_size=4)
    got = run(0.1, 0.05, [callback], "scaled")
    before = run(0.2, 0.1, [], "by_hand_x2")
    # Up to epoch 3 (3 epochs of 4 steps) the ×2 run; then ×4: SWALR anneals from the LR it holds towards
    # swa_lrs, so the ×4 part equals 2 × the ×2 run's LRs (every stored LR doubled at once).
    assert len(got) == len(before)
    for t, g in enumerate(got):
        want = before[t] if t < 12 else [2 * v for v in before[t]]
        assert g == pytest.approx(want, rel=REL), f"step {t}"
    assert callback.scale_factor == 4.0


@pytest.mark.skipif(not hasattr(pl_callbacks, "EMAWeightAveraging"), reason="EMAWeightAveraging: lightning >= 2.6")
def test_ema_weight_averaging_keeps_working(tmp_path: Path) -> None:
    """×2 with a warmup of 4 steps from ×1/2; the EMA callback averages every step and leaves the LRs alone."""
    model = LRModel()
    ema = pl_callbacks.EMAWeightAveraging(decay=0.5)
    callback = BatchScalingCallback(base_batch_size=4, warmup_steps=4)
    quiet_trainer(tmp_path, callbacks=[ema, callback]).fit(model)
    w = [0.5 + 0.5 * min(1.0, t / 4) for t in range(8)]
    assert model.lrs == [pytest.approx([0.2 * w[t], 0.1 * w[t]], rel=REL) for t in range(8)]
    averaged = ema._average_model
    assert averaged is not None
    assert int(averaged.n_averaged) == 8
    # At the end of training EMA copies the average into the module.
    for mine, theirs in zip(model.parameters(), averaged.module.parameters()):
        assert torch.equal(mine, theirs)
