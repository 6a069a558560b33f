"""Optimizers without a numeric LR: a group with ``lr=None`` (transformers' ``Adafactor(relative_step=True)``) or
without an ``lr`` key is refused with a message that says so, unless it opts out with ``"lrbs_scale": False``, in
which case it is left alone while the other groups are scaled and warmed."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lrbs_testing import LR, LRModel, quiet_trainer

from lightning_lrbs import BatchScalingCallback, LinearWarmup, scale_for_batch
from lightning_lrbs.warmup import warmup_factor


class RelativeStep(torch.optim.Optimizer):
    """Behaves like ``Adafactor(relative_step=True)`` for this purpose: ``lr=None`` by default, and a group without a
    numeric LR steps by a size of its own, :math:`\\min(10^{-2}, 1/\\sqrt{t})`."""

    def __init__(self, params: Iterable[Any], lr: float | None = None) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                lr = group["lr"] if group["lr"] is not None else min(1e-2, 1 / math.sqrt(state["step"]))
                p.add_(p.grad, alpha=-lr)
        return loss


class NoLR(torch.optim.Optimizer):
    """An optimizer that has no learning rate at all (its groups lack an ``lr`` key)."""

    def __init__(self, params: Iterable[Any]) -> None:
        super().__init__(params, {"scale": 0.01})

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        return None if closure is None else closure()


class RecordingModel(LRModel):
    """Records ``group["lr"]`` as it is (``None`` stays ``None``)."""

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lrs.append([group["lr"] for group in optimizer.param_groups])


def test_lr_none_group_is_refused_before_anything_changes(tmp_path: Path) -> None:
    model = RecordingModel(optimizer=lambda groups: RelativeStep([{"params": g["params"]} for g in groups]))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(tmp_path, callbacks=[BatchScalingCallback(base_batch_size=2, warmup_steps=4)])
    with pytest.raises(ValueError, match=r"RelativeStep param group 0 has lr=None .*Adafactor.*'lrbs_scale': False"):
        trainer.fit(model)
    assert model.lrs == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_opted_out_lr_none_group_is_left_alone_and_others_are_scaled_and_warmed(tmp_path: Path) -> None:
    warmup = 4
    model = RecordingModel(
        group_options={"lr": None, "lrbs_scale": False},  # the second group steps by its own relative size
        optimizer=lambda groups: RelativeStep(groups),
    )
    trainer = quiet_trainer(
        tmp_path,
        callbacks=[BatchScalingCallback(base_batch_size=2, warmup_steps=warmup)],  # factor 4, logs lrbs/lr-*
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
    )
    trainer.fit(model)
    assert len(model.lrs) == 8
    expected = [4 * LR * warmup_factor(t, warmup, 0.25) for t in range(8)]
    assert [step[0] for step in model.lrs] == pytest.approx(expected, rel=1e-9, abs=0.0)
    assert [step[1] for step in model.lrs] == [None] * 8
    header = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "lrbs/lr-RelativeStep/pg1" in header
    assert "lrbs/lr-RelativeStep/pg2" not in header  # no LR to log for the group that sets its own


def test_optimizer_without_lr_key_gets_a_message_that_says_so(tmp_path: Path) -> None:
    model = LRModel(optimizer=lambda groups: NoLR([{"params": g["params"]} for g in groups]))
    with pytest.raises(ValueError, match=r"NoLR param group 0 has no 'lr' key \(the optimizer does not use a learning"):
        quiet_trainer(tmp_path, callbacks=[BatchScalingCallback(base_batch_size=2)]).fit(model)


def test_pure_api_refuses_lr_none() -> None:
    opt = RelativeStep([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match=r"RelativeStep param group 0 has lr=None"):
        scale_for_batch(opt, per_device_batch_size=8, base_batch_size=2)
    with pytest.raises(ValueError, match=r"RelativeStep param group 0 has lr=None"):
        LinearWarmup(opt, warmup_steps=4)
    LinearWarmup(opt, warmup_steps=0).remove()  # no warmup: nothing to warm, nothing refused
    assert opt.param_groups[0]["lr"] is None
