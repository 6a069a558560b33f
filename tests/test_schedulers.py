"""Rescaling is exact for every torch scheduler: a fit with the callback at factor 4 gives the same LR at every
optimizer step as the same module built by hand at 4x its LRs and 4x its LR floors, without the callback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import seed_everything
from lrbs_testing import LR, LRModel, quiet_trainer
from torch.optim import lr_scheduler as S

from lightning_lrbs import BatchScalingCallback, rescale_

FACTOR = 4
STEPS = 12  # 3 epochs x 4 batches


def _builders(f: float) -> dict[str, Callable[[torch.optim.Optimizer], Any]]:
    """Each scheduler, built for a module whose LRs and LR floors are ``f`` times the originals."""
    return {
        "StepLR": lambda o: S.StepLR(o, step_size=2, gamma=0.5),
        "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[2, 5], gamma=0.3),
        "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.8),
        "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lr_lambda=lambda e: 0.9),
        "LambdaLR": lambda o: S.LambdaLR(o, lr_lambda=lambda e: 1.0 / (1.0 + e)),
        "LinearLR": lambda o: S.LinearLR(o, start_factor=0.25, total_iters=4),
        "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=2),
        "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=8, power=2.0),
        "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=5, eta_min=0.01 * f),
        "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.005 * f),
        "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=[0.5 * f, 0.25 * f], total_steps=STEPS + 1),
        "CyclicLR": lambda o: S.CyclicLR(o, base_lr=[0.01 * f, 0.005 * f], max_lr=[0.1 * f, 0.05 * f], step_size_up=2),
        "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=0, min_lr=0.02 * f),
        "SequentialLR": lambda o: S.SequentialLR(
            o, [S.LinearLR(o, start_factor=0.5, total_iters=2), S.ExponentialLR(o, gamma=0.8)], milestones=[2]
        ),
        "ChainedScheduler": lambda o: S.ChainedScheduler(
            [S.ConstantLR(o, factor=0.5, total_iters=2), S.ExponentialLR(o, gamma=0.9)]
        ),
        "nested": lambda o: S.SequentialLR(
            o,
            [
                S.ChainedScheduler([S.ConstantLR(o, factor=0.5, total_iters=2), S.ExponentialLR(o, gamma=0.9)]),
                S.CosineAnnealingLR(o, T_max=4, eta_min=0.01 * f),
            ],
            milestones=[3],
        ),
    }


NAMES = list(_builders(1.0))


def _fit(tmp_path: Path, name: str, interval: str, f: float, callbacks: list[Any]) -> list[float]:
    seed_everything(7)
    extra = {"monitor": "plateau"} if name == "ReduceLROnPlateau" else {}
    model = LRModel(lr=LR * f, scheduler=_builders(f)[name], interval=interval, extra=extra)
    quiet_trainer(tmp_path, max_epochs=3, callbacks=callbacks).fit(model)
    assert len(model.lrs) == STEPS
    return [lr for step in model.lrs for lr in step]  # flat: step-major, group-minor


@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("name", NAMES)
def test_rescaled_fit_equals_fit_built_at_scaled_lr(tmp_path: Path, name: str, interval: str) -> None:
    # batch 8 per device over base 2 with the linear rule: factor 4
    scaled = _fit(tmp_path, name, interval, 1.0, [BatchScalingCallback(base_batch_size=8 // FACTOR)])
    by_hand = _fit(tmp_path, name, interval, float(FACTOR), [])
    unscaled = _fit(tmp_path, name, interval, 1.0, [])
    assert scaled == pytest.approx(by_hand, rel=1e-9, abs=0.0)
    # the comparison can fail: the schedule moved, and the unscaled run differs from the scaled one
    assert len(set(by_hand[::2])) > 1
    assert scaled[0] == pytest.approx(FACTOR * unscaled[0], rel=1e-9)


def test_param_groups_keep_their_ratio_and_opt_out_group_is_left_alone(tmp_path: Path) -> None:
    model = LRModel(group_options={"lrbs_scale": False})
    quiet_trainer(tmp_path, callbacks=[BatchScalingCallback(base_batch_size=2)]).fit(model)
    assert model.lrs[0] == pytest.approx([LR * FACTOR, LR / 2])

    model = LRModel()
    quiet_trainer(tmp_path, callbacks=[BatchScalingCallback(base_batch_size=2)]).fit(model)
    assert model.lrs[0] == pytest.approx([LR * FACTOR, LR * FACTOR / 2])


def test_tensor_lr_is_scaled_in_place(tmp_path: Path) -> None:
    lr = torch.tensor(LR)
    model = LRModel(lr=lr, optimizer=lambda groups: torch.optim.SGD(groups, lr=0.0, foreach=False))
    seen: list[torch.Tensor] = []

    class Keep(BatchScalingCallback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])
            super().on_train_start(trainer, pl_module)

    quiet_trainer(tmp_path, callbacks=[Keep(base_batch_size=2)]).fit(model)
    group_lr = model.trainer.optimizers[0].param_groups[0]["lr"]
    assert group_lr is seen[0]
    assert float(group_lr) == pytest.approx(LR * FACTOR)


def test_rescale_twice_equals_once_with_the_product() -> None:
    def build() -> tuple[torch.optim.Optimizer, Any]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        return opt, S.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)

    a_opt, a_sched = build()
    b_opt, b_sched = build()
    for _ in range(3):
        a_opt.step(), a_sched.step(), b_opt.step(), b_sched.step()
    rescale_(a_opt, [a_sched], 2.0)
    rescale_(a_opt, [a_sched], 3.0)
    rescale_(b_opt, [b_sched], 6.0)
    for _ in range(8):
        a_opt.step(), a_sched.step(), b_opt.step(), b_sched.step()
        assert a_sched.get_last_lr() == pytest.approx(b_sched.get_last_lr(), rel=1e-12)


def test_rescale_rejects_bad_input_before_changing_anything() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    other = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    sched = S.StepLR(other, step_size=1)
    with pytest.raises(ValueError, match=r"`factor` must be a finite positive number, got nan"):
        rescale_(opt, [], float("nan"))
    with pytest.raises(ValueError, match=r"`factor` has 2 values for 1 optimizers"):
        rescale_(opt, [], [2.0, 3.0])
    with pytest.raises(ValueError, match=r"scheduler StepLR belongs to an optimizer that is not in `optimizers`"):
        rescale_(opt, [sched], 2.0)
    assert opt.param_groups[0]["lr"] == 0.1
    assert other.param_groups[0]["lr"] == 0.1
