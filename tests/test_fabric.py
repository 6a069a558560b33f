"""``scale_for_batch``: batch scaling for Lightning Fabric and plain PyTorch loops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_lrbs import LinearWarmup, ScalingResult, scale_for_batch, warmup_factor

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def _sgd(lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def _cosine(optimizer: torch.optim.Optimizer, eta_min: float = 0.01) -> Any:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10, eta_min=eta_min)


def _run(optimizer: torch.optim.Optimizer, scheduler: Any, steps: int) -> list[float]:
    """A plain loop: the LR each optimizer step runs with (warmup included), stepping the scheduler after it."""
    used: list[float] = []
    handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    for _ in range(steps):
        for parameter in optimizer.param_groups[0]["params"]:
            parameter.grad = torch.ones_like(parameter)
        optimizer.step()
        scheduler.step()
    handle.remove()
    return used


class TestPlainLoop:
    def test_scaled_run_equals_a_fresh_one_at_the_scaled_lr(self) -> None:
        optimizer = _sgd()
        scheduler = _cosine(optimizer)
        result = scale_for_batch(optimizer, scheduler, per_device_batch_size=32, world_size=4, base_batch_size=64)
        assert isinstance(result, ScalingResult)
        assert (result.effective_batch_size, result.base_batch_size, result.scale_factor) == (128, 64, 2.0)
        assert result.warmup is None
        fresh = _sgd(lr=0.2)
        assert _run(optimizer, scheduler, 8) == pytest.approx(_run(fresh, _cosine(fresh, eta_min=0.02), 8))

    def test_warmup_per_optimizer_step(self) -> None:
        optimizer = _sgd()
        scheduler = _cosine(optimizer)
        result = scale_for_batch(
            optimizer, [scheduler], per_device_batch_size=16, world_size=2, accumulation=2, warmup_steps=4
        )
        assert result.scale_factor == 4.0
        assert isinstance(result.warmup, LinearWarmup)
        fresh = _sgd(lr=0.4)
        scheduled = _run(fresh, _cosine(fresh, eta_min=0.04), 6)
        expected = [lr * warmup_factor(t, 4, 0.25) for t, lr in enumerate(scheduled)]
        assert _run(optimizer, scheduler, 6) == pytest.approx(expected)
        assert expected[0] == pytest.approx(0.1)  # starts from the unscaled LR
        # The warmup never leaks into the stored LR: after the run the group holds the scheduled value.
        assert optimizer.param_groups[0]["lr"] == pytest.approx(scheduler.get_last_lr()[0])

    @pytest.mark.parametrize(
        ("kwargs", "factor", "start"),
        [
            ({"rule": "sqrt"}, 2.0, 0.5),
            ({"rule": "none"}, 1.0, 0.0),
            ({"rule": lambda r: r**0.25}, 2**0.5, 2**-0.5),
            ({"warmup_start_factor": 0.1}, 4.0, 0.1),
            ({"base_batch_size": 64}, 0.5, 0.0),
        ],
    )
    def test_rules_and_start_factor(self, kwargs: dict[str, Any], factor: float, start: float) -> None:
        optimizer = _sgd()
        result = scale_for_batch(optimizer, per_device_batch_size=8, world_size=4, warmup_steps=2, **kwargs)
        assert result.scale_factor == pytest.approx(factor)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * factor)
        assert result.warmup is not None
        assert result.warmup.factor(0) == pytest.approx(start)
        result.warmup.remove()

    def test_auto_rule_per_optimizer(self) -> None:
        sgd, adam = _sgd(), torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        result = scale_for_batch([sgd, adam], per_device_batch_size=8, world_size=4, rule="auto")
        assert result.scale_factors == (4.0, 2.0)
        assert result.scale_factor == (4.0, 2.0)
        assert result.rules == ("linear", "sqrt")
        assert adam.param_groups[0]["lr"] == pytest.approx(2e-3)
        assert "SGD linear ×4: 0.1 → 0.4; Adam sqrt ×2: 0.001 → 0.002" in result.summary

    def test_uneven_ranks(self) -> None:
        result = scale_for_batch(_sgd(), per_device_batch_size=[8, 4], accumulation=2, base_batch_size=6)
        assert (result.effective_batch_size, result.scale_factor) == (24, 4.0)
        assert result.summary.startswith("effective batch 24 = (8 + 4) over ranks × 2 accumulation; base 6")

    def test_summary(self) -> None:
        result = scale_for_batch(
            _sgd(), per_device_batch_size=32, world_size=2, accumulation=4, warmup_steps=100, warmup_start_factor=0.5
        )
        assert result.summary == (
            "effective batch 256 = 32 per device × 2 devices × 4 accumulation; base 32; rule linear → LR ×8: "
            "SGD 0.1 → 0.8; warmup 100 steps from ×0.5"
        )

    def test_opted_out_group_is_kept(self) -> None:
        w1, w2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([{"params": [w1]}, {"params": [w2], "lrbs_scale": False}], lr=0.1)
        result = scale_for_batch(optimizer, per_device_batch_size=4, world_size=2)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.1])
        assert "SGD 0.1, 0.1 → 0.2, 0.1 (kept)" in result.summary


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"per_device_batch_size": 0}, ValueError, "`per_device_batch_size` must be a positive int, got 0"),
            ({"per_device_batch_size": [8, 0]}, ValueError, "`per_device_batch_size` must be a positive int, got 0"),
            ({"per_device_batch_size": []}, ValueError, "`per_device_batch_size` must not be empty"),
            ({"per_device_batch_size": [8, 8], "world_size": 4}, ValueError, "lists 2 ranks but `world_size` is 4"),
            ({"world_size": 0}, ValueError, "`world_size` must be a positive int, got 0"),
            ({"accumulation": 1.5}, ValueError, "`accumulation` must be a positive int, got 1.5"),
            ({"base_batch_size": 0}, ValueError, "`base_batch_size` must be a positive int, got 0"),
            ({"rule": "cubic"}, ValueError, "`rule` must be one of 'linear', 'sqrt', 'auto', 'none'"),
            ({"rule": lambda r: -1.0}, ValueError, "must return a finite positive factor, got -1.0"),
            ({"warmup_steps": -1}, ValueError, "`warmup_steps` must be a non-negative int, got -1"),
            ({"warmup_start_factor": 2.0}, ValueError, r"`warmup_start_factor` must be in \[0, 1\], got 2.0"),
        ],
    )
    def test_bad_argument_changes_nothing(self, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
        optimizer = _sgd()
        scheduler = _cosine(optimizer)
        hooks = len(optimizer._optimizer_step_pre_hooks)
        arguments: dict[str, Any] = {"per_device_batch_size": 8, "world_size": 2, **kwargs}
        with pytest.raises(error, match=match):
            scale_for_batch(optimizer, scheduler, **arguments)
        assert optimizer.param_groups[0]["lr"] == 0.1
        assert scheduler.base_lrs == [0.1]
        assert scheduler.eta_min == 0.01
        assert len(optimizer._optimizer_step_pre_hooks) == hooks

    def test_scheduler_of_another_optimizer(self) -> None:
        optimizer, other = _sgd(), _sgd()
        with pytest.raises(ValueError, match="belongs to an optimizer that is not in `optimizers`"):
            scale_for_batch(optimizer, _cosine(other), per_device_batch_size=8, world_size=2)
        assert optimizer.param_groups[0]["lr"] == 0.1

    def test_not_an_optimizer(self) -> None:
        with pytest.raises(TypeError, match="must hold torch.optim.Optimizer instances, got Linear"):
            scale_for_batch([torch.nn.Linear(1, 1)], per_device_batch_size=8)  # type: ignore[list-item]

    def test_no_optimizer(self) -> None:
        with pytest.raises(ValueError, match="`optimizers` must hold at least one optimizer"):
            scale_for_batch([], per_device_batch_size=8)


class TestFabricWrappedOptimizer:
    """``fabric.setup`` returns a wrapper sharing the optimizer's param groups; schedulers may be built on either."""

    @pytest.mark.parametrize("scheduler_on", ["optimizer", "wrapper"])
    @pytest.mark.parametrize("given", ["optimizer", "wrapper"])
    def test_accepted_either_way(self, scheduler_on: str, given: str) -> None:
        from lightning.fabric import Fabric

        fabric = Fabric(accelerator="cpu", devices=1)
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, wrapper = fabric.setup(model, optimizer)
        scheduler = _cosine(optimizer if scheduler_on == "optimizer" else wrapper)
        result = scale_for_batch(
            optimizer if given == "optimizer" else wrapper,
            scheduler,
            per_device_batch_size=4,
            world_size=fabric.world_size,
            accumulation=2,
            warmup_steps=2,
        )
        assert result.scale_factor == 2.0
        assert scheduler.base_lrs == [pytest.approx(0.2)]
        assert scheduler.eta_min == pytest.approx(0.02)
        used: list[float] = []
        wrapper.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
        for _ in range(3):
            fabric.backward(model(torch.ones(4, 2)).sum())
            wrapper.step()
            wrapper.zero_grad()
            scheduler.step()
        fresh = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
        scheduled = _run(fresh, _cosine(fresh, eta_min=0.02), 3)
        assert used == pytest.approx([lr * warmup_factor(t, 2, 0.5) for t, lr in enumerate(scheduled)])

    def test_schedulers_on_both_is_refused(self) -> None:
        from lightning.fabric import Fabric

        fabric = Fabric(accelerator="cpu", devices=1)
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        _, wrapper = fabric.setup(torch.nn.Linear(2, 1), optimizer)
        with pytest.raises(ValueError, match="built on both the optimizer and the wrapper"):
            scale_for_batch(wrapper, [_cosine(optimizer), _cosine(wrapper)], per_device_batch_size=4, world_size=2)
        assert optimizer.param_groups[0]["lr"] == 0.1


@pytest.mark.slow
def test_fabric_ddp_two_processes(tmp_path: Path) -> None:
    """A real 2-process Fabric run (gloo on CPU): factor 2 and the same warmed-up LRs on both ranks."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK")}
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "fabric_ddp.py"), str(tmp_path)],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # 8 per device × 2 processes × 2 accumulation = 32, base 16: factor 2, warmup from 1/2 over 4 steps.
    for rank in ranks:
        assert rank["world_size"] == 2
        assert rank["effective_batch_size"] == 32
        assert rank["scale_factor"] == 2.0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    scheduled = _run(optimizer, _cosine_t8(optimizer), 8)  # 64 samples per rank / 8 / 2 = 4 steps × 2 epochs
    expected = [lr * warmup_factor(t, 4, 0.5) for t, lr in enumerate(scheduled)]
    assert ranks[0]["used"] == pytest.approx(expected)
    assert ranks[1]["used"] == ranks[0]["used"]
    assert ranks[1]["lr_after"] == ranks[0]["lr_after"]
    assert ranks[1]["weight"] == pytest.approx(ranks[0]["weight"])  # DDP kept the replicas in sync
    assert ranks[0]["summary"] == ranks[1]["summary"]
    assert ranks[0]["summary"].startswith("effective batch 32 = 8 per device × 2 devices × 2 accumulation; base 16")


def _cosine_t8(optimizer: torch.optim.Optimizer) -> Any:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8, eta_min=0.02)
