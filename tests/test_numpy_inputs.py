"""Numbers from config systems: NumPy integers and floats (and 0-d arrays) are accepted wherever a Python int or float
is, bools stay refused for sizes, and flags refuse strings such as ``"false"``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import seed_everything
from lrbs_testing import LR, LRModel, flat, quiet_trainer

from lightning_lrbs import BatchScalingCallback, LinearWarmup, effective_batch_size, rescale_, scale_for_batch
from lightning_lrbs.warmup import warmup_factor

np = pytest.importorskip("numpy")


def _fit(tmp_path: Path, callback: BatchScalingCallback) -> list[float]:
    seed_everything(5)
    model = LRModel(scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5))
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[callback]).fit(model)
    assert len(model.lrs) == 8
    return flat(model.lrs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_batch_size": np.int64(2), "batch_size": np.int32(8), "warmup_steps": np.int64(4)},
        {"base_batch_size": np.array(2), "warmup_steps": np.uint8(4), "warmup_start_factor": np.float32(0.5)},
        {"base_batch_size": np.int16(2), "warmup_epochs": np.float32(1.0), "warmup_start_factor": np.float64(0.5)},
        {"base_batch_size": 2, "warmup_epochs": np.array(1.0), "warmup_start_factor": np.array(0.5)},
        {"base_batch_size": 4, "rule": lambda r: np.float32(2 * r), "warmup_epochs": np.int64(1)},
        {"base_batch_size": 4, "rule": lambda r: np.array(2 * r), "warmup_steps": 4, "log_lr": np.bool_(True)},
    ],
)
def test_numpy_numbers_give_the_same_fit_as_python_numbers(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    def python(value: Any) -> Any:
        return value.item() if hasattr(value, "item") else value

    plain = {k: v if callable(v) and not hasattr(v, "item") else python(v) for k, v in kwargs.items()}
    if callable(kwargs.get("rule")):
        plain["rule"] = lambda r: 2.0 * r
    callback = BatchScalingCallback(**kwargs)
    scaled = _fit(tmp_path, callback)
    assert scaled == pytest.approx(_fit(tmp_path, BatchScalingCallback(**plain)), rel=1e-9, abs=0.0)
    # and the sequence is the one the README promises: factor 4, warmup over 4 steps, StepLR halving every 3 steps
    start = python(kwargs.get("warmup_start_factor", 0.25))
    expected = [4 * LR * 0.5 ** (t // 3) * warmup_factor(t, 4, start) * g for t in range(8) for g in (1.0, 0.5)]
    assert scaled == pytest.approx(expected, rel=1e-9, abs=0.0)
    assert callback.warmup is None  # removed at the end of the fit
    assert type(callback.effective_batch_size) is int
    assert callback.base_batch_size is None or type(callback.base_batch_size) is int
    assert type(callback.warmup_steps) is int
    assert type(callback.warmup_epochs) is float


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_batch_size": True}, r"`base_batch_size` must be a positive int, got True"),
        ({"base_batch_size": np.bool_(True)}, r"`base_batch_size` must be a positive int, got (np\.)?True_?"),
        ({"batch_size": np.array(True)}, r"`batch_size` must be a positive int, got array\(True\)"),
        ({"batch_size": np.float64(8.0)}, r"`batch_size` must be a positive int, got (np\.float64\()?8\.0"),
        ({"batch_size": np.int64(0)}, r"`batch_size` must be a positive int, got (np\.int64\()?0"),
        ({"warmup_steps": np.bool_(False)}, r"`warmup_steps` must be a non-negative int"),
        ({"warmup_steps": np.int64(-1)}, r"`warmup_steps` must be a non-negative int"),
        ({"warmup_epochs": np.bool_(True)}, r"`warmup_epochs` must be a non-negative finite number"),
        ({"warmup_epochs": np.float32("nan")}, r"`warmup_epochs` must be a non-negative finite number"),
        ({"warmup_epochs": "1"}, r"`warmup_epochs` must be a non-negative finite number, got '1'"),
        ({"warmup_start_factor": np.float32(1.5)}, r"`warmup_start_factor` must be in \[0, 1\]"),
        ({"warmup_start_factor": "0.5"}, r"`warmup_start_factor` must be in \[0, 1\], got '0.5'"),
        ({"log_lr": "false"}, r"`log_lr` must be a bool \(True or False\), got 'false'"),
        ({"log_lr": "False"}, r"`log_lr` must be a bool \(True or False\), got 'False'"),
        ({"log_lr": 0}, r"`log_lr` must be a bool \(True or False\), got 0"),
        ({"log_lr": None}, r"`log_lr` must be a bool \(True or False\), got None"),
        ({"log_lr": np.array([True])}, r"`log_lr` must be a bool \(True or False\)"),
    ],
)
def test_bad_numbers_and_flags_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchScalingCallback(**kwargs)


def test_callable_rule_returning_numpy_bool_or_nan_is_refused(tmp_path: Path) -> None:
    model = LRModel()
    callback = BatchScalingCallback(base_batch_size=2, rule=lambda r: np.bool_(True))
    with pytest.raises(ValueError, match=r"must return a finite positive factor, got (np\.)?True_?"):
        quiet_trainer(tmp_path, callbacks=[callback]).fit(model)
    assert model.lrs == []


def test_pure_api_accepts_numpy_numbers() -> None:
    def run(**kwargs: Any) -> tuple[Any, list[float]]:
        w = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([w], lr=LR)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.001)
        result = scale_for_batch(opt, sched, **kwargs)
        seen: list[float] = []
        opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
        for _ in range(6):
            opt.step()
            sched.step()
        assert result.warmup is not None
        result.warmup.remove()
        return result, seen

    numpy_result, numpy_lrs = run(
        per_device_batch_size=np.int64(32),
        world_size=np.int32(8),
        accumulation=np.array(2),
        base_batch_size=np.int64(64),
        warmup_steps=np.int64(4),
        warmup_start_factor=np.float32(0.25),
    )
    plain_result, plain_lrs = run(
        per_device_batch_size=32,
        world_size=8,
        accumulation=2,
        base_batch_size=64,
        warmup_steps=4,
        warmup_start_factor=0.25,
    )
    assert numpy_result.effective_batch_size == plain_result.effective_batch_size == 512
    assert type(numpy_result.effective_batch_size) is int
    assert numpy_lrs == pytest.approx(plain_lrs, rel=1e-9, abs=0.0)
    listed, _ = run(per_device_batch_size=[np.int64(32), np.int64(30)], base_batch_size=31, warmup_steps=1)
    assert listed.effective_batch_size == 62
    assert effective_batch_size(np.int64(32), accumulation=np.int64(2), world_size=np.int64(4)) == 256
    with pytest.raises(ValueError, match=r"`per_device_batch_size` must be a positive int, got (np\.)?True_?"):
        scale_for_batch(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR), per_device_batch_size=np.True_)

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    rescale_(opt, [], np.float32(2.0))
    assert opt.param_groups[0]["lr"] == pytest.approx(2 * LR)
    LinearWarmup(opt, np.int64(3), np.float32(0.5)).remove()


def test_numpy_floor_of_a_scheduler_is_scaled(tmp_path: Path) -> None:
    """A floor from a config system (``eta_min=np.float32(...)``) is scaled with the LRs, as a Python float is."""

    def fit(f: float, callbacks: list[Any]) -> list[float]:
        seed_everything(5)
        build = lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=3, eta_min=np.float32(0.02) * f)  # noqa: E731
        model = LRModel(lr=LR * f, scheduler=build)
        quiet_trainer(tmp_path, max_epochs=2, callbacks=callbacks).fit(model)
        return flat(model.lrs)

    scaled = fit(1.0, [BatchScalingCallback(base_batch_size=2)])
    assert scaled == pytest.approx(fit(4.0, []), rel=1e-9, abs=0.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3, eta_min=np.float32(0.01))
    rescale_(opt, [sched], 4.0)
    assert float(sched.eta_min) == pytest.approx(0.04)
