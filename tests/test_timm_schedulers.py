"""Schedulers that are not torch's: timm's are rescaled exactly like torch's, any other class is refused unless it
names its LR attributes (``lrbs_lr_attributes``).

A fit with the callback at factor 4 gives the same LR at every optimizer step as the same module built by hand with
4x its LRs, 4x timm's ``warmup_lr_init`` and 4x its ``lr_min`` floors, without the callback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import seed_everything
from lrbs_testing import LR, LRModel, flat, quiet_trainer
from torch.optim import lr_scheduler as S

from lightning_lrbs import BatchScalingCallback, rescale_, scale_for_batch

timm_scheduler = pytest.importorskip("timm.scheduler")

FACTOR = 4
STEPS = 12  # 3 epochs x 4 batches


class TimmModel(LRModel):
    """``LRModel`` stepping a timm scheduler as Lightning documents: ``lr_scheduler_step`` overridden, with timm's
    convention (``step_update(num_updates)`` after each update, ``step(epoch + 1)`` at the end of an epoch)."""

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if self.interval == "epoch":
            scheduler.step(epoch=self.current_epoch + 1, metric=metric)
        elif isinstance(scheduler, timm_scheduler.PlateauLRScheduler):  # it only steps by `step`
            scheduler.step(self.global_step, metric)
        else:
            scheduler.step_update(num_updates=self.global_step, metric=metric)


def _builders(f: float, interval: str) -> dict[str, Callable[[torch.optim.Optimizer], Any]]:
    """Each timm scheduler with its own warmup and floor, built for LRs and floors ``f`` times the originals."""
    step = interval == "step"
    t = STEPS if step else 3  # the schedule's length in its unit
    warm = {"warmup_t": 3 if step else 1, "warmup_lr_init": 0.004 * f}
    common = {"t_in_epochs": not step, **warm}
    builders: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
        "CosineLRScheduler": lambda o: timm_scheduler.CosineLRScheduler(
            o, t_initial=t - 4 if step else 2, lr_min=0.01 * f, cycle_limit=2, noise_range_t=t - 3, **common
        ),
        "StepLRScheduler": lambda o: timm_scheduler.StepLRScheduler(
            o, decay_t=2 if step else 1, decay_rate=0.5, **common
        ),
        "MultiStepLRScheduler": lambda o: timm_scheduler.MultiStepLRScheduler(
            o, decay_t=[2, 5] if step else [1, 2], decay_rate=0.3, **common
        ),
        "PlateauLRScheduler": lambda o: timm_scheduler.PlateauLRScheduler(
            o, decay_rate=0.5, patience_t=0, lr_min=0.02 * f, mode="min", noise_range_t=t - 2, **warm
        ),
        "PolyLRScheduler": lambda o: timm_scheduler.PolyLRScheduler(
            o, t_initial=t - 3 if step else 2, power=2.0, lr_min=0.01 * f, **common
        ),
        "TanhLRScheduler": lambda o: timm_scheduler.TanhLRScheduler(
            o, t_initial=t - 3 if step else 2, lr_min=0.005 * f, **common
        ),
    }
    if hasattr(timm_scheduler, "WSDLRScheduler"):
        builders["WSDLRScheduler"] = lambda o: timm_scheduler.WSDLRScheduler(
            o, t_initial=t - 3 if step else 2, decay_t=4 if step else 2, lr_min=0.01 * f, **common
        )
    return builders


NAMES = list(_builders(1.0, "step"))


def _fit(tmp_path: Path, name: str, interval: str, f: float, callbacks: list[Any]) -> list[float]:
    seed_everything(7)
    extra = {"monitor": "plateau", "reduce_on_plateau": True} if name == "PlateauLRScheduler" else {}
    model = TimmModel(lr=LR * f, scheduler=_builders(f, interval)[name], interval=interval, extra=extra)
    quiet_trainer(tmp_path, max_epochs=3, callbacks=callbacks).fit(model)
    assert len(model.lrs) == STEPS
    return flat(model.lrs)


@pytest.mark.filterwarnings("ignore:PlateauLRScheduler is deprecated:FutureWarning")
@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("name", NAMES)
def test_timm_rescaled_fit_equals_fit_built_at_scaled_lr(tmp_path: Path, name: str, interval: str) -> None:
    scaled = _fit(tmp_path, name, interval, 1.0, [BatchScalingCallback(base_batch_size=8 // FACTOR)])
    by_hand = _fit(tmp_path, name, interval, float(FACTOR), [])
    unscaled = _fit(tmp_path, name, interval, 1.0, [])
    assert scaled == pytest.approx(by_hand, rel=1e-9, abs=0.0)
    # the comparison can fail: the schedule moved (warmup, then decay), and scaling changed the LR
    assert len(set(by_hand[::2])) > 2
    assert scaled[0] == pytest.approx(FACTOR * unscaled[0], rel=1e-9)


@pytest.mark.filterwarnings("ignore:PlateauLRScheduler is deprecated:FutureWarning")
def test_timm_rescale_by_hand_mid_schedule_equals_building_scaled() -> None:
    """The pure function, mid-schedule (after warmup started), for every timm scheduler at epoch interval."""
    for name in NAMES:

        def build(f: float, name: str = name) -> tuple[torch.optim.Optimizer, Any]:
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))], lr=LR * f)
            return opt, _builders(f, "epoch")[name](opt)

        a_opt, a_sched = build(1.0)
        b_opt, b_sched = build(float(FACTOR))
        for epoch in range(1, 6):
            if epoch == 2:
                rescale_(a_opt, [a_sched], FACTOR)
            a_sched.step(epoch, metric=1.0)
            b_sched.step(epoch, metric=1.0)
            if epoch >= 2:
                got = [g["lr"] for g in a_opt.param_groups]
                assert got == pytest.approx([g["lr"] for g in b_opt.param_groups], rel=1e-9, abs=0.0), name


class PeakScheduler(S.LRScheduler):
    """A scheduler of one's own that keeps an LR outside ``base_lrs``: ``peak_lr`` until ``switch``, then base."""

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, switch: int = 3) -> None:
        self.peak_lr, self.switch = peak_lr, switch
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        if self.last_epoch < self.switch:
            return [self.peak_lr * (i + 1) for i in range(len(self.base_lrs))]
        return list(self.base_lrs)


class DeclaredPeakScheduler(PeakScheduler):
    lrbs_lr_attributes = ("base_lrs", "_last_lr", "peak_lr")


def test_unknown_scheduler_class_is_refused_before_anything_changes(tmp_path: Path) -> None:
    model = LRModel(scheduler=lambda o: PeakScheduler(o, peak_lr=0.3))
    trainer = quiet_trainer(tmp_path, callbacks=[BatchScalingCallback(base_batch_size=2)])
    with pytest.raises(ValueError, match=r"cannot rescale the scheduler PeakScheduler \(from .*test_timm_schedulers\)"):
        trainer.fit(model)
    assert model.lrs == []
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [0.3, 0.6]  # untouched
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == [LR, LR / 2]
    # a subclass of a torch scheduler is a class of its own: it may keep LRs anywhere
    with pytest.raises(ValueError, match=r"lrbs_lr_attributes"):
        rescale_(trainer.optimizers[0], [type("MyStep", (S.StepLR,), {})(trainer.optimizers[0], 2)], 2.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    with pytest.raises(ValueError, match=r"cannot rescale the scheduler PeakScheduler"):
        scale_for_batch(opt, PeakScheduler(opt, peak_lr=0.3), per_device_batch_size=8, base_batch_size=2)
    assert opt.param_groups[0]["lr"] == 0.3


def test_scheduler_that_names_its_lr_attributes_is_rescaled_exactly(tmp_path: Path) -> None:
    def fit(f: float, callbacks: list[Any]) -> list[float]:
        seed_everything(7)
        model = LRModel(lr=LR * f, scheduler=lambda o: DeclaredPeakScheduler(o, peak_lr=0.3 * f))
        quiet_trainer(tmp_path, max_epochs=3, callbacks=callbacks).fit(model)
        return flat(model.lrs)

    scaled = fit(1.0, [BatchScalingCallback(base_batch_size=2)])
    assert scaled == pytest.approx(fit(float(FACTOR), []), rel=1e-9, abs=0.0)
    assert scaled[0] == pytest.approx(0.3 * FACTOR)
    assert scaled[-2] == pytest.approx(LR * FACTOR)


def test_empty_lr_attributes_declares_a_scheduler_that_only_reads_param_group_lr(tmp_path: Path) -> None:
    class Halving:
        """Not a torch scheduler: halves ``param_group["lr"]`` each step and stores no LR of its own."""

        lrbs_lr_attributes = ()

        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

        def step(self) -> None:
            for group in self.optimizer.param_groups:
                group["lr"] *= 0.5

        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            pass

    class HalvingModel(LRModel):
        def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
            scheduler.step()

    def fit(f: float, callbacks: list[Any]) -> list[float]:
        model = HalvingModel(lr=LR * f, scheduler=Halving)
        quiet_trainer(tmp_path, callbacks=callbacks).fit(model)
        return flat(model.lrs)

    assert fit(1.0, [BatchScalingCallback(base_batch_size=2)]) == pytest.approx(fit(4.0, []), rel=1e-9, abs=0.0)


def test_bad_lr_attributes_are_refused() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = DeclaredPeakScheduler(opt, peak_lr=0.3)
    sched.lrbs_lr_attributes = ("base_lrs", "missing")  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"`DeclaredPeakScheduler.lrbs_lr_attributes` names 'missing'"):
        rescale_(opt, [sched], 2.0)
    sched.lrbs_lr_attributes = "base_lrs"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"must be a tuple of attribute names"):
        rescale_(opt, [sched], 2.0)
    sched.lrbs_lr_attributes = ("base_lrs", "switch_name")  # type: ignore[assignment]
    sched.switch_name = "three"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"`DeclaredPeakScheduler.switch_name` named in .* got 'three'"):
        rescale_(opt, [sched], 2.0)
    sched.lrbs_lr_attributes = ("base_lrs", "peaks")  # type: ignore[assignment]
    sched.peaks = [0.1, 0.2]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"`DeclaredPeakScheduler.peaks` has 2 values for 1 param groups"):
        rescale_(opt, [sched], 2.0)
    assert opt.param_groups[0]["lr"] == 0.3
    assert sched.base_lrs == [LR]


@pytest.mark.filterwarnings("ignore:PlateauLRScheduler is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended.*")
def test_resumed_timm_plateau_which_saves_no_lrs_is_rescaled_again(tmp_path: Path) -> None:
    """timm's PlateauLRScheduler saves only its best metric and epoch: a resumed run rebuilds it at the module's LRs
    while the optimizer comes back scaled. The callback scales it again, so the resumed run equals the 4x module's."""

    def run(f: float, callbacks: Callable[[], list[Any]]) -> list[float]:
        def model() -> TimmModel:
            seed_everything(7)
            build = lambda o: timm_scheduler.PlateauLRScheduler(  # noqa: E731
                o, decay_rate=0.5, patience_t=0, lr_min=0.03 * f, mode="min", warmup_t=6, warmup_lr_init=0.004 * f
            )
            extra = {"monitor": "plateau", "reduce_on_plateau": True}
            return TimmModel(lr=LR * f, scheduler=build, interval="step", extra=extra)

        first = quiet_trainer(tmp_path / "first", max_epochs=1, callbacks=callbacks())
        first.fit(model())
        ckpt = tmp_path / f"plateau-{f}.ckpt"
        first.save_checkpoint(ckpt)
        resumed = model()
        quiet_trainer(tmp_path / "resumed", max_epochs=3, callbacks=callbacks()).fit(resumed, ckpt_path=ckpt)
        assert len(resumed.lrs) == STEPS - 4
        return flat(resumed.lrs)

    scaled = run(1.0, lambda: [BatchScalingCallback(base_batch_size=8 // FACTOR)])
    by_hand = run(float(FACTOR), lambda: [])
    assert scaled == pytest.approx(by_hand, rel=1e-9, abs=0.0)
    assert len(set(by_hand[::2])) > 2  # warmup, then the plateau decay down to the floor
    assert min(by_hand) == pytest.approx(0.03 * FACTOR)  # down to the floor
