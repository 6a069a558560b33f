"""A step that raises never leaves the warmed LR behind: not in the optimizer, not in a checkpoint saved then, and a
run resumed from that checkpoint uses, at every later step, the LR of the run that was never interrupted.

In automatic optimization Lightning runs ``training_step`` inside ``optimizer.step`` (as its closure), after the
warmup's step pre-hook lowered the LR; an exception there skips the post-hook that puts the scheduled LR back.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback, OnExceptionCheckpoint
from lrbs_testing import LR, LRModel, flat, quiet_trainer
from torch.optim import lr_scheduler as S

from lightning_lrbs import BatchScalingCallback, LinearWarmup

WARMUP = 8  # longer than the step the tests fail at, so the failing step is warmed
STEPS = 12  # 3 epochs x 4 batches
FAIL_AT = 3


class Boom(RuntimeError):
    pass


class FailingModel(LRModel):
    """``LRModel`` with a chainable scheduler (StepLR reads ``param_group["lr"]``: a warmed LR left there would
    compound into every later step) that raises ``error`` in ``training_step`` at global step ``fail_at``."""

    def __init__(self, fail_at: int | None = None, error: type[BaseException] = Boom) -> None:
        super().__init__(scheduler=lambda o: S.StepLR(o, step_size=2, gamma=0.7))
        self.fail_at, self.error = fail_at, error

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.global_step == self.fail_at:
            if self.error is SignalTerm:
                os.kill(os.getpid(), signal.SIGTERM)  # Lightning's signal connector defers it to the batch's end
            else:
                raise self.error(f"failing at step {self.global_step}")
        return super().training_step(batch, batch_idx)


class SaveOnException(Callback):
    """A user's handler: not a ``Checkpoint`` (Lightning moves those to the end of the list), so it can run first."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        trainer.save_checkpoint(self.path)


class SignalTerm(BaseException):
    """Marker: send the process SIGTERM instead of raising."""


def _callback() -> BatchScalingCallback:
    return BatchScalingCallback(base_batch_size=2, warmup_steps=WARMUP)  # batch 8 over base 2: factor 4


def _scheduled(model: LRModel) -> list[float]:
    return [float(g["lr"]) for g in model.trainer.optimizers[0].param_groups]


def _checkpoint_lrs(path: Path) -> list[float]:
    state = torch.load(path, weights_only=False)
    return [float(g["lr"]) for g in state["optimizer_states"][0]["param_groups"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> list[list[float]]:
    seed_everything(3)
    model = FailingModel()
    quiet_trainer(tmp_path_factory.mktemp("full"), max_epochs=3, callbacks=[_callback()]).fit(model)
    assert len(model.lrs) == STEPS
    return model.lrs


@pytest.fixture
def _keep_signal_handlers() -> Iterator[None]:
    """Lightning ignores SIGINT after a KeyboardInterrupt (so a second Ctrl+C cannot break its shutdown)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)


def _resume(tmp_path: Path, ckpt: Path) -> list[list[float]]:
    seed_everything(3)
    model = FailingModel()
    quiet_trainer(tmp_path / "resumed", max_epochs=3, callbacks=[_callback()]).fit(model, ckpt_path=ckpt)
    return model.lrs


def _scheduled_at(uninterrupted: list[list[float]], step: int) -> list[float]:
    """The scheduled (unwarmed) LRs at ``step`` of the uninterrupted run: what it used divided by the warmup factor."""
    start = 1 / 4
    w = start + (1 - start) * min(1.0, step / WARMUP)
    return [lr / w for lr in uninterrupted[step]]


@pytest.mark.usefixtures("_keep_signal_handlers")
@pytest.mark.parametrize("saver_cls", [OnExceptionCheckpoint, SaveOnException])
@pytest.mark.parametrize("order", ["saver_first", "lrbs_first"])
@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_checkpoint_saved_on_exception_holds_scheduled_lr_and_resume_continues_exactly(
    tmp_path: Path, uninterrupted: list[list[float]], saver_cls: type, order: str, error: type[BaseException]
) -> None:
    seed_everything(3)
    ckpt = tmp_path / "on_exception.ckpt"
    saver = (
        OnExceptionCheckpoint(tmp_path, "on_exception") if saver_cls is OnExceptionCheckpoint else SaveOnException(ckpt)
    )
    ours = _callback()
    callbacks = [saver, ours] if order == "saver_first" else [ours, saver]
    model = FailingModel(fail_at=FAIL_AT, error=error)
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=callbacks, enable_checkpointing=True)
    with pytest.raises(SystemExit if error is KeyboardInterrupt else Boom):  # Lightning exits on Ctrl+C
        trainer.fit(model)

    expected = _scheduled_at(uninterrupted, FAIL_AT)
    assert flat(model.lrs) == pytest.approx(flat(uninterrupted[:FAIL_AT]), rel=1e-9, abs=0.0)
    assert _scheduled(model) == pytest.approx(expected, rel=1e-9)  # in memory
    assert _checkpoint_lrs(ckpt) == pytest.approx(expected, rel=1e-9)  # in the checkpoint
    # the failing step was warmed (so the test can fail): its LR differs from the scheduled one
    assert uninterrupted[FAIL_AT][0] != pytest.approx(expected[0], rel=1e-3)

    resumed = _resume(tmp_path, ckpt)
    assert len(resumed) == STEPS - FAIL_AT
    assert flat(resumed) == pytest.approx(flat(uninterrupted[FAIL_AT:]), rel=1e-9, abs=0.0)


def test_handler_saving_after_fit_raised_writes_scheduled_lr(tmp_path: Path, uninterrupted: list[list[float]]) -> None:
    seed_everything(3)
    model = FailingModel(fail_at=FAIL_AT)
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[_callback()])
    ckpt = tmp_path / "handler.ckpt"
    try:
        trainer.fit(model)
    except Boom:
        trainer.save_checkpoint(ckpt)
    assert _checkpoint_lrs(ckpt) == pytest.approx(_scheduled_at(uninterrupted, FAIL_AT), rel=1e-9)
    assert flat(_resume(tmp_path, ckpt)) == pytest.approx(flat(uninterrupted[FAIL_AT:]), rel=1e-9, abs=0.0)


@pytest.mark.usefixtures("_keep_signal_handlers")
def test_sigterm_is_deferred_to_the_end_of_the_step_and_resume_continues_exactly(
    tmp_path: Path, uninterrupted: list[list[float]]
) -> None:
    """What the callback relies on: Lightning's signal connector only notes a SIGTERM and raises at the end of the
    batch, after the optimizer step put the scheduled LR back; ``OnExceptionCheckpoint`` then saves a finished step."""
    seed_everything(3)
    model = FailingModel(fail_at=FAIL_AT, error=SignalTerm)
    saver = OnExceptionCheckpoint(dirpath=tmp_path, filename="on_exception")
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[saver, _callback()], enable_checkpointing=True)
    with pytest.raises(BaseException) as raised:  # noqa: PT011 - checked by name below
        trainer.fit(model)
    assert type(raised.value).__name__ == "SIGTERMException"
    assert flat(model.lrs) == pytest.approx(
        flat(uninterrupted[: FAIL_AT + 1]), rel=1e-9, abs=0.0
    )  # the signalled step ran
    ckpt = tmp_path / "on_exception.ckpt"
    assert _checkpoint_lrs(ckpt) == pytest.approx(_scheduled_at(uninterrupted, FAIL_AT + 1), rel=1e-9)
    assert flat(_resume(tmp_path, ckpt)) == pytest.approx(flat(uninterrupted[FAIL_AT + 1 :]), rel=1e-9, abs=0.0)


def test_linear_warmup_restore_after_a_step_raised() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.8)
    warmup = LinearWarmup(opt, warmup_steps=4, start_factor=0.25)
    seen: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))

    def failing() -> None:
        raise Boom

    with pytest.raises(Boom):
        opt.step(failing)
    assert warmup.pending
    assert opt.param_groups[0]["lr"] == 0.2  # warmed, left behind by the raise
    assert warmup.restore() is True
    assert not warmup.pending
    assert opt.param_groups[0]["lr"] == 0.8
    assert warmup.restore() is False  # idempotent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the retried step is not "stepped twice at the same warmup step"
        opt.step()
    assert seen == pytest.approx([0.2, 0.2])  # the failed step did not count
    assert opt.param_groups[0]["lr"] == 0.8
    warmup.remove()


def test_linear_warmup_unwarm_state_dict_keeps_tensor_lr_untouched() -> None:
    lr = torch.tensor(0.8)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, foreach=False)
    warmup = LinearWarmup(opt, warmup_steps=4, start_factor=0.25, step_fn=lambda: 0)
    states: list[dict[str, Any]] = []

    def closure() -> None:
        state = opt.state_dict()
        warmup.unwarm_state_dict(0, state)
        states.append(state)

    opt.step(closure)
    saved = states[0]["param_groups"][0]["lr"]
    assert float(saved) == pytest.approx(0.8)
    assert saved is not lr
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.8)  # restored after the step
    warmup.remove()


def test_step_that_raises_mid_training_leaves_lr_at_scheduled_value_without_checkpoint(tmp_path: Path) -> None:
    """A smaller model of the same: LR in memory is the scheduled one after any exception (LR before scaling x4)."""
    seed_everything(3)
    model = FailingModel(fail_at=0)
    with pytest.raises(Boom):
        quiet_trainer(tmp_path, callbacks=[_callback()]).fit(model)
    assert _scheduled(model) == pytest.approx([4 * LR, 2 * LR], rel=1e-9)


class ManualFailing(LRModel):
    """Manual optimization, the forward pass in the closure handed to ``opt.step`` (as LBFGS needs), raising at
    ``fail_at``: the same warmed-LR-left-behind situation as automatic optimization."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.fail_at = fail_at

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()

        def closure() -> torch.Tensor:  # `on_before_optimizer_step` records the LR after the backward pass
            if self.global_step == self.fail_at:
                raise Boom("failing inside the closure")
            loss = self.step(batch)
            self.manual_backward(loss)
            return loss

        opt.zero_grad()
        opt.step(closure=closure)

    def step(self, batch: Any) -> torch.Tensor:
        return self.layer(batch).sum()


def test_manual_optimization_closure_that_raises_leaves_scheduled_lr(tmp_path: Path) -> None:
    seed_everything(3)
    model = ManualFailing(fail_at=2)
    ckpt = tmp_path / "manual.ckpt"
    trainer = quiet_trainer(tmp_path, callbacks=[SaveOnException(ckpt), _callback()])
    with pytest.raises(Boom):
        trainer.fit(model)
    w = [0.25 + 0.75 * t / WARMUP for t in range(2)]
    assert flat(model.lrs) == pytest.approx([4 * LR * x * g for x in w for g in (1.0, 0.5)], rel=1e-9, abs=0.0)
    assert _scheduled(model) == pytest.approx([4 * LR, 2 * LR], rel=1e-9)
    assert _checkpoint_lrs(ckpt) == pytest.approx([4 * LR, 2 * LR], rel=1e-9)


class StoppingModel(FailingModel):
    """Stops at step ``stop_at`` by ``trainer.should_stop`` (the step finishes), or raises in the in-epoch validation
    (``val_check_interval``) that runs once ``stop_at`` steps finished."""

    def __init__(self, stop_at: int | None = None, how: str = "should_stop") -> None:
        super().__init__()
        self.stop_at, self.how = stop_at, how

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.how == "should_stop" and self.global_step == self.stop_at:
            self.trainer.should_stop = True
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        if self.how == "validation" and self.global_step == self.stop_at:
            raise Boom("failing in validation")
        return super().validation_step(batch, batch_idx)


@pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended.*")
@pytest.mark.parametrize(("how", "done"), [("should_stop", FAIL_AT + 1), ("validation", FAIL_AT)])
def test_stop_or_validation_error_after_a_step_resumes_exactly(
    tmp_path: Path, uninterrupted: list[list[float]], how: str, done: int
) -> None:
    """What the callback relies on: ``trainer.should_stop`` and an in-epoch validation take effect after the optimizer
    step finished, so nothing is pending; a checkpoint then resumes at the uninterrupted run's LRs."""
    seed_everything(3)
    model = StoppingModel(stop_at=FAIL_AT, how=how)
    ckpt = tmp_path / "stopped.ckpt"
    val = (
        {"limit_val_batches": 1, "val_check_interval": FAIL_AT, "num_sanity_val_steps": 0}
        if how == "validation"
        else {}
    )
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[_callback()], **val)
    try:
        trainer.fit(model)
    except Boom:
        assert how == "validation"
    trainer.save_checkpoint(ckpt)
    assert len(model.lrs) == done
    assert flat(model.lrs) == pytest.approx(flat(uninterrupted[:done]), rel=1e-9, abs=0.0)
    assert _scheduled(model) == pytest.approx(_scheduled_at(uninterrupted, done), rel=1e-9)
    assert flat(_resume(tmp_path, ckpt)) == pytest.approx(flat(uninterrupted[done:]), rel=1e-9, abs=0.0)


class FailingOnLastMicroBatch(FailingModel):
    """Raises in the last micro-batch of step ``fail_at``: the one whose ``training_step`` runs inside
    ``optimizer.step`` (the earlier micro-batches of an accumulated step run before it)."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.global_step == self.fail_at and batch_idx % 2 == 1:
            raise Boom(f"failing at step {self.global_step}")
        return LRModel.training_step(self, batch, batch_idx)


def test_adascale_step_that_raises_leaves_no_gain_in_memory_or_checkpoint(tmp_path: Path) -> None:
    """rule="adascale" multiplies the LR by its gain in a step pre-hook, like the warmup: a step that raises must not
    leave the gain in the optimizer, nor in a checkpoint a handler placed before the callback writes then."""
    seed_everything(3)
    ckpt = tmp_path / "adascale.ckpt"
    ours = BatchScalingCallback(base_batch_size=2, rule="adascale")  # 8 per step x 2 accumulation over 2: S = 8
    model = FailingOnLastMicroBatch(fail_at=FAIL_AT)
    trainer = quiet_trainer(tmp_path, max_epochs=3, accumulate_grad_batches=2, callbacks=[SaveOnException(ckpt), ours])
    with pytest.raises(Boom):
        trainer.fit(model)

    assert len(model.lrs) == FAIL_AT
    assert ours.scale_factor != pytest.approx(1.0)  # the failing step was scaled by a gain: the test can fail
    expected = [LR * 0.7, LR / 2 * 0.7]  # StepLR(step_size=2, gamma=0.7) after 3 steps, static factor 1
    assert _scheduled(model) == pytest.approx(expected, rel=1e-9)  # in memory
    assert _checkpoint_lrs(ckpt) == pytest.approx(expected, rel=1e-9)  # in the checkpoint
