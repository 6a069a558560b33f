"""rule="adascale": the gain against fairscale's AdaScale, the preconditioners against torch's own updates, the
bounds, and real fits (LR used = scheduled x warmup x gain, resume, refusals)."""

from __future__ import annotations

import copy
import csv
import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning.pytorch.loggers import CSVLogger
from lrbs_testing import quiet_trainer, run_script
from torch.utils.data import DataLoader, TensorDataset

from lightning_lrbs import BatchScalingCallback, scale_for_batch
from lightning_lrbs.adascale import (
    AdaScaleLR,
    adascale_gain,
    check_adascale_optimizer,
    gain_from_noise_scale,
    preconditioner,
    preconditioner_ready,
)
from lightning_lrbs.noise import GradientNoiseScale
from lightning_lrbs.warmup import LinearWarmup, warmup_factor

# ---------------------------------------------------------------------------------------------- gain vs fairscale


class _TwoBatchStatistics:
    """The two-batch estimates of McCandlish et al. (appendix A) with bias-corrected EMAs, computed here from
    per-micro-batch hooks, independently of fairscale, as the noise-scale estimator does it."""

    def __init__(self, params: list[torch.nn.Parameter], smoothing: float, accumulation: int) -> None:
        self.params, self.smoothing, self.accumulation = params, smoothing, accumulation
        self.micro: list[float] = []
        self._parts: list[float] = []
        self.sq_biased = self.var_biased = self.weight = 0.0
        self.raw: list[tuple[float, float]] = []  # each step's unsmoothed (|G|^2, tr Sigma)
        for p in params:
            p.register_hook(lambda g: self._parts.append(float((g.double() * self.accumulation).pow(2).sum())))

    def end_micro_batch(self) -> None:
        self.micro.append(sum(self._parts))
        self._parts = []

    def end_step(self, b: int) -> None:
        k = len(self.micro)
        mean_sq = sum(self.micro) / k
        sq_of_mean = sum(float(p.grad.double().pow(2).sum()) for p in self.params)
        big = k * b
        sq = (big * sq_of_mean - b * mean_sq) / (big - b)
        var = (mean_sq - sq_of_mean) / (1 / b - 1 / big)
        self.raw.append((sq, var))
        beta = self.smoothing
        self.sq_biased = beta * self.sq_biased + (1 - beta) * sq
        self.var_biased = beta * self.var_biased + (1 - beta) * var
        self.weight = beta * self.weight + (1 - beta)
        self.micro = []

    @property
    def grad_sq_norm(self) -> float:
        return self.sq_biased / self.weight

    @property
    def grad_var(self) -> float:
        return self.var_biased / self.weight


@pytest.mark.parametrize(("scale_over_k", "smoothing"), [(1.0, 0.9), (2.0, 0.5), (0.5, 0.99)])
def test_gain_equals_fairscale_adascale_on_identical_gradients(scale_over_k: float, smoothing: float) -> None:
    adascale_module = pytest.importorskip("fairscale.optim.adascale")
    torch.manual_seed(0)
    k, b = 4, 8  # micro-batches per step, samples per micro-batch
    scale = k * scale_over_k  # fairscale's S; its base batch is B_eff / S
    base_batch = k * b / scale
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    params = list(model.parameters())
    ours = _TwoBatchStatistics(params, smoothing, k)  # hooks registered on the same parameters: same gradients
    optimizer = adascale_module.AdaScale(
        torch.optim.SGD(params, lr=0.002), world_size=1, num_gradients_to_accumulate=k, scale=scale, smoothing=smoothing
    )
    gns = GradientNoiseScale(params, smoothing=smoothing)  # the estimator rule="adascale" uses
    target = torch.nn.Linear(6, 1)
    compared = 0
    clamped = False
    for _ in range(30):
        for _ in range(k):
            x = torch.randn(b, 6)
            y = target(x).detach() * 3 + 0.3 * torch.randn(b, 1)
            gns.micro_batch(b, loss_scale=1 / k)
            (torch.nn.functional.mse_loss(model(x), y) / k).backward()
            ours.end_micro_batch()
        ours.end_step(b)
        gns.step()
        sq, var = ours.raw[-1]
        # fairscale clamps each step's values (|G|^2 >= 0, variance >= 1e-6) before smoothing; compare where it didn't
        clamped = clamped or sq < 0 or var / base_batch < 1e-6
        if not clamped:
            expected = optimizer.gain()
            got = adascale_gain(ours.grad_sq_norm, ours.grad_var, base_batch, scale)
            assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)
            assert gns.grad_sq_norm is not None
            assert gns.grad_var is not None
            from_gns = adascale_gain(gns.grad_sq_norm, gns.grad_var, base_batch, scale)
            assert from_gns == pytest.approx(expected, rel=1e-6, abs=1e-6)
            noise = ours.grad_var / ours.grad_sq_norm
            assert gain_from_noise_scale(noise, base_batch, k * b) == pytest.approx(got, rel=1e-9)
            compared += 1
        optimizer.step()
        optimizer.zero_grad()
    optimizer.unhook()
    assert compared >= 20  # the data keep |G|^2 well above the noise: the clamps never act here


def test_gain_differs_from_fairscale_where_its_per_step_clamp_acts() -> None:
    """At a minimum (|G|^2 ~ 0), single steps estimate |G|^2 < 0: fairscale clamps them to 0 before smoothing, which
    biases its smoothed |G|^2 upwards; we smooth the unbiased values and clamp only the average."""
    adascale_module = pytest.importorskip("fairscale.optim.adascale")
    torch.manual_seed(0)
    k, b = 4, 8
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()  # the true minimum of y = noise: G = 0
    params = list(model.parameters())
    ours = _TwoBatchStatistics(params, 0.9, k)
    optimizer = adascale_module.AdaScale(
        torch.optim.SGD(params, lr=0.0), world_size=1, num_gradients_to_accumulate=k, smoothing=0.9
    )
    for _ in range(40):
        for _ in range(k):
            x = torch.randn(b, 3)
            (torch.nn.functional.mse_loss(model(x), torch.randn(b, 1)) / k).backward()
            ours.end_micro_batch()
        ours.end_step(b)
        optimizer.step()
        optimizer.zero_grad()
    optimizer.unhook()
    assert any(sq < 0 for sq, _ in ours.raw)
    ours_gain = adascale_gain(ours.grad_sq_norm, ours.grad_var, b, k)
    assert ours_gain > optimizer.gain()  # fairscale's clamp inflates |G|^2, so it gains less
    assert 1.0 <= optimizer.gain() <= k
    assert 1.0 <= ours_gain <= k


# ---------------------------------------------------------------------------------------------- formula and bounds


@pytest.mark.parametrize("scale", [0.25, 0.5, 1.0, 2.0, 8.0, 128.0])
def test_gain_lies_between_one_and_s_and_matches_the_noise_scale_form(scale: float) -> None:
    torch.manual_seed(1)
    for sq, var in torch.randn(200, 2).mul(10).tolist():
        gain = adascale_gain(sq, var, 16, scale)
        assert min(1.0, scale) <= gain <= max(1.0, scale)
        if sq > 0 and var > 0:
            assert gain == pytest.approx(gain_from_noise_scale(var / sq, 16, 16 * scale), rel=1e-12)
    assert adascale_gain(1.0, 1e12, 16, scale) == pytest.approx(scale, rel=1e-6)  # noise dominates: linear
    assert adascale_gain(1e12, 1.0, 16, scale) == pytest.approx(1.0, rel=1e-6)  # no noise: no gain


def test_bad_batch_sizes_are_refused_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="`base_batch_size`.*adascale.*0"):
        adascale_gain(1.0, 1.0, 0, 2)
    with pytest.raises(ValueError, match="`scale`.*adascale.*nan"):
        adascale_gain(1.0, 1.0, 8, math.nan)
    with pytest.raises(ValueError, match="finite"):
        adascale_gain(math.inf, 1.0, 8, 2)


# ---------------------------------------------------------------------------------------------- preconditioners


def _one_update(make: Any, steps: int = 3) -> tuple[torch.optim.Optimizer, torch.nn.Parameter, torch.Tensor, float]:
    torch.manual_seed(2)
    w = torch.nn.Parameter(torch.randn(5))
    opt = make([w])
    for _ in range(steps):
        w.grad = torch.randn(5)
        before = w.detach().clone()
        opt.step()
    return opt, w, w.detach() - before, float(opt.param_groups[0]["lr"])


@pytest.mark.parametrize(
    ("make", "numerator"),
    [
        (lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.8, 0.9), eps=1e-3), "adam"),
        (lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.8, 0.9), eps=1e-3, amsgrad=True), "adam"),
        (lambda p: torch.optim.AdamW(p, lr=0.1, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.0), "adam"),
        (lambda p: torch.optim.Adamax(p, lr=0.1, betas=(0.8, 0.9), eps=1e-3), "adam"),
        (lambda p: torch.optim.RMSprop(p, lr=0.1, alpha=0.9, eps=1e-3), "grad"),
        (lambda p: torch.optim.RMSprop(p, lr=0.1, alpha=0.9, eps=1e-3, centered=True), "grad"),
        (lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-3), "grad"),
    ],
)
def test_preconditioner_reproduces_the_optimizers_own_update(make: Any, numerator: str) -> None:
    """After a step, P from the optimizer's state is the denominator that step used: update = -lr * num / P."""
    opt, w, update, lr = _one_update(make)
    state = opt.state[w]
    transform = preconditioner(opt)
    assert transform is not None
    assert preconditioner_ready(opt)
    if numerator == "adam":
        beta1 = opt.param_groups[0]["betas"][0]
        num = state["exp_avg"] / (1 - beta1 ** float(state["step"]))
    else:
        num = w.grad
    torch.testing.assert_close(transform(w, num) * -lr, update, rtol=1e-5, atol=1e-7)


def test_preconditioner_needs_state_and_sgd_needs_none() -> None:
    w = torch.nn.Parameter(torch.zeros(2))
    adam = torch.optim.Adam([w])
    assert not preconditioner_ready(adam)
    transform = preconditioner(adam)
    assert transform is not None
    with pytest.raises(RuntimeError, match="before its first step"):
        transform(w, torch.ones(2))
    assert preconditioner(torch.optim.SGD([w], lr=0.1)) is None


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: torch.optim.LBFGS(p), "cannot scale LBFGS"),
        (lambda p: torch.optim.RAdam(p), "supports Adam.*got RAdam"),
        (lambda p: torch.optim.Adadelta(p), "got Adadelta"),
    ],
)
def test_unsupported_optimizers_are_refused(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_adascale_optimizer(make([torch.nn.Parameter(torch.zeros(1))]))


# ---------------------------------------------------------------------------------------------- the LR hooks


def test_hooks_apply_the_previous_steps_gain_over_the_warmup_and_restore_the_scheduled_lr() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.4)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    warmup = LinearWarmup(opt, warmup_steps=4, start_factor=0.25)  # registered first, as the callback does
    stats: list[float | None] = [None, None]
    scaler = AdaScaleLR(opt, lambda: (stats[0], stats[1]), base_batch_size=8, effective_batch_size=64)
    used: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: used.append(float(o.param_groups[0]["lr"])))
    expected = []
    gain_in_force = 1.0
    for t in range(8):
        stats[:] = [1.0, 8.0 * (t + 1)]  # step t's measurement: B_noise = 8 (t + 1)
        expected.append(0.4 * 0.9**t * warmup.factor(0, t) * gain_in_force)
        w.grad = torch.zeros(1)
        opt.step()
        scheduler.step()
        gain_in_force = gain_from_noise_scale(8.0 * (t + 1), 8, 64)
        assert scaler.gain == pytest.approx(gain_in_force, rel=1e-12)
    assert used == pytest.approx(expected, rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4 * 0.9**8, rel=1e-12)  # the scheduler never saw a factor
    scaler.remove()
    warmup.remove()


def test_adaptive_optimizer_gets_the_square_root_of_the_gain() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([w], lr=0.01)
    scaler = AdaScaleLR(opt, lambda: (0.0, 1.0), base_batch_size=8, effective_batch_size=32)  # noise only: r = S
    assert scaler.gain == 4.0
    assert scaler.factor == 2.0
    scaler.remove()


def test_hooks_leave_unscaled_groups_and_tensor_lrs_right() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": torch.tensor(0.1)}, {"params": [b], "lr": 0.2, "lrbs_scale": False}])
    scaler = AdaScaleLR(opt, lambda: (0.0, 1.0), base_batch_size=8, effective_batch_size=16)
    seen: list[tuple[float, float]] = []
    opt.register_step_pre_hook(lambda o, *_: seen.append((float(o.param_groups[0]["lr"]), o.param_groups[1]["lr"])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.grad, b.grad = torch.zeros(1), torch.zeros(1)
        opt.step()
    assert seen == [(pytest.approx(0.2), 0.2)]
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.1)
    assert opt.param_groups[1]["lr"] == 0.2
    scaler.remove()


# ---------------------------------------------------------------------------------------------- real fits


class _Regression(pl.LightningModule):
    """A small MLP on noisy random regression data, SGD (or ``optimizer``) with an optional per-step scheduler.

    Records, at each optimizer step, the LR the optimizer is about to use (``on_before_optimizer_step`` runs inside
    ``optimizer.step``, after the step pre-hooks and after the callback measured the step) and the callback's smoothed
    statistics after the step's measurement."""

    def __init__(self, gamma: float | None = 0.9, optimizer: Any = None, n: int = 256) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        x = torch.randn(n, 4)
        self.data = TensorDataset(x, x.sum(1, keepdim=True) + 0.5 * torch.randn(n, 1))
        self.gamma, self.make_optimizer = gamma, optimizer
        self.used: list[float] = []
        self.stats: list[tuple[float | None, float | None]] = []
        self.factors: list[float] = []  # callback.scale_factor at each step's start

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def train_dataloader(self) -> Any:
        return DataLoader(self.data, batch_size=8)

    def configure_optimizers(self) -> Any:
        optimizer = (self.make_optimizer or (lambda p: torch.optim.SGD(p, lr=0.05)))(self.parameters())
        if self.gamma is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        callback = next(c for c in self.trainer.callbacks if isinstance(c, BatchScalingCallback))
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self.factors.append(float(callback.scale_factor))  # type: ignore[arg-type]

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.used.append(float(optimizer.param_groups[0]["lr"]))
        noise = next(c for c in self.trainer.callbacks if isinstance(c, BatchScalingCallback)).noise
        self.stats.append((None, None) if noise is None else (noise.grad_sq_norm, noise.grad_var))


def _expected_gain(stats: tuple[float | None, float | None], base: float, s: float) -> float:
    sq, var = stats
    if sq is None or var is None:
        return 1.0
    sigma2, mu2 = max(var, 0.0) / base, max(sq, 0.0)
    return min(max((sigma2 + mu2) / (sigma2 / s + mu2), 1.0), s)


def test_fit_uses_scheduled_lr_times_warmup_times_the_previous_steps_gain(tmp_path: Path) -> None:
    model = _Regression()
    callback = BatchScalingCallback(base_batch_size=8, rule="adascale", warmup_steps=3)
    logger = CSVLogger(tmp_path, name="log")
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=32, accumulate_grad_batches=4, callbacks=[callback], logger=logger
    )
    trainer.log_every_n_steps = 1
    trainer.fit(model)
    s = 4.0  # 8 per step x 4 accumulation / base 8
    steps = len(model.used)
    assert steps == 8
    expected = [
        0.05 * 0.9**t * warmup_factor(t, 3, 1 / s) * (1.0 if t == 0 else _expected_gain(model.stats[t - 1], 8, s))
        for t in range(steps)
    ]
    assert model.used == pytest.approx(expected, rel=1e-9)
    gains = [_expected_gain(st, 8, s) for st in model.stats]
    assert len(set(gains)) > 3  # the gain moves with the noise
    assert all(1.0 < g < s for g in gains)
    assert model.factors == pytest.approx([1.0, *gains[:-1]], rel=1e-12)  # callback.scale_factor: the gain in force
    assert callback.scale_factor == pytest.approx(gains[-1], rel=1e-12)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.9**steps, rel=1e-12)  # scheduler
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged_factor = [float(r["lrbs/scale_factor"]) for r in rows if r.get("lrbs/scale_factor")]
    logged_lr = [float(r["lrbs/lr-SGD"]) for r in rows if r.get("lrbs/lr-SGD")]
    for gain in gains[:-1]:  # lrbs/scale_factor follows the gain
        assert any(v == pytest.approx(gain, rel=1e-9) for v in logged_factor)
    for used in model.used:  # lrbs/lr-SGD is the LR each step really used
        assert any(lr == pytest.approx(used, rel=1e-9) for lr in logged_lr)
    assert "rule adascale" in callback.summary
    assert "AdaScale gain in [1, 4]" in callback.summary


def test_resume_continues_from_the_checkpointed_statistics(tmp_path: Path) -> None:
    def fit(epochs: int, ckpt: str | None = None) -> tuple[_Regression, pl.Trainer]:
        model = _Regression(gamma=None)
        trainer = quiet_trainer(
            tmp_path,
            max_epochs=epochs,
            limit_train_batches=20,
            accumulate_grad_batches=4,
            callbacks=[BatchScalingCallback(base_batch_size=8, rule="adascale")],
        )
        trainer.fit(model, ckpt_path=ckpt)
        return model, trainer

    full, _ = fit(2)
    first, trainer = fit(1)
    path = str(tmp_path / "epoch1.ckpt")
    trainer.save_checkpoint(path)
    resumed, _ = fit(2, path)
    assert len(first.used) == len(resumed.used) == 5
    assert resumed.used[0] != pytest.approx(0.05)  # not from factor 1 again
    assert first.used + resumed.used == pytest.approx(full.used, rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "model_kwargs", "match"),
    [
        ({}, {}, "one device without gradient accumulation: set `accumulate_grad_batches>=2`"),
        ({"accumulate_grad_batches": 2}, {"optimizer": lambda p: torch.optim.LBFGS(p)}, "cannot scale LBFGS"),
        ({"accumulate_grad_batches": 2}, {"optimizer": lambda p: torch.optim.RAdam(p)}, "got RAdam"),
    ],
)
def test_refusals_at_fit_start_change_nothing(
    tmp_path: Path, kwargs: dict[str, Any], model_kwargs: dict[str, Any], match: str
) -> None:
    model = _Regression(gamma=None, **model_kwargs)
    before = copy.deepcopy(model.state_dict())
    callback = BatchScalingCallback(base_batch_size=8, rule="adascale")
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4, callbacks=[callback], **kwargs)
    with pytest.raises(ValueError, match=match):
        trainer.fit(model)
    assert model.used == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert callback.scale_factor is None


def test_adam_measures_preconditioned_gradients_and_uses_the_square_root(tmp_path: Path) -> None:
    model = _Regression(gamma=None, optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    callback = BatchScalingCallback(base_batch_size=8, rule="adascale")
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=32, accumulate_grad_batches=4, callbacks=[callback]
    )
    trainer.fit(model)
    assert callback.noise is not None
    assert callback.noise.measurements == 7  # not at step 0: Adam has no preconditioner before its first step
    assert model.stats[0] == (None, None)
    expected = [0.01 * (1.0 if t < 2 else _expected_gain(model.stats[t - 1], 8, 4.0) ** 0.5) for t in range(8)]
    assert model.used == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------------------------- raw loop / Fabric API


def measure_step(model: torch.nn.Module, noise: GradientNoiseScale, accumulation: int = 4) -> None:
    """One raw-loop optimizer step's backward passes on fresh noisy regression batches of 8, measured by ``noise``."""
    for _ in range(accumulation):
        x = torch.randn(8, 4)
        noise.micro_batch(8, loss_scale=1 / accumulation)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True) + 0.5 * torch.randn(8, 1))
        (loss / accumulation).backward()
    noise.step()


def test_scale_for_batch_adascale_in_a_raw_loop_matches_the_callbacks_rule() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    result = scale_for_batch(
        optimizer,
        scheduler,
        per_device_batch_size=8,
        accumulation=4,
        base_batch_size=8,
        rule="adascale",
        warmup_steps=3,
    )
    assert result.noise is not None
    assert result.adascale is not None
    assert result.scale_factors == (1.0,)
    assert result.summary.endswith("warmup 3 steps from ×0.25; × AdaScale gain in [1, 4]")
    used: list[float] = []
    optimizer.register_step_pre_hook(lambda o, *_: used.append(float(o.param_groups[0]["lr"])))  # after ours
    stats = []
    for _ in range(8):
        measure_step(model, result.noise)
        stats.append((result.noise.grad_sq_norm, result.noise.grad_var))
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    expected = [
        0.05 * 0.9**t * warmup_factor(t, 3, 0.25) * (1.0 if t == 0 else _expected_gain(stats[t - 1], 8, 4.0))
        for t in range(8)
    ]
    assert used == pytest.approx(expected, rel=1e-9)
    assert result.scale_factor == pytest.approx(_expected_gain(stats[-1], 8, 4.0), rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.9**8, rel=1e-12)
    result.adascale.remove()
    assert result.warmup is not None
    result.warmup.remove()
    result.noise.remove()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"per_device_batch_size": 8}, "one rank without gradient accumulation: pass `accumulation>=2`"),
        ({"per_device_batch_size": 8, "accumulation": 2, "two": True}, "one optimizer"),
    ],
)
def test_scale_for_batch_adascale_refusals_change_nothing(kwargs: dict[str, Any], match: str) -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    optimizers = [torch.optim.SGD([w], lr=0.1)]
    if kwargs.pop("two", False):
        optimizers.append(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    with pytest.raises(ValueError, match=match):
        scale_for_batch(optimizers, rule="adascale", **kwargs)
    assert optimizers[0].param_groups[0]["lr"] == 0.1
    assert not optimizers[0]._optimizer_step_pre_hooks


# ---------------------------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_two_processes_measure_the_noise_across_ranks_and_agree_on_the_gain(tmp_path: Path) -> None:
    """2 devices without accumulation: the noise comes from the two ranks' gradients (all-reduced), every rank applies
    the same gain, and step t uses the gain of the statistics up to step t - 1."""
    ranks = run_script("adascale_ddp.py", tmp_path)
    assert ranks[0] == ranks[1]
    result = ranks[0]
    assert result["effective"] == 16
    stats = [tuple(s) for s in result["stats"]]
    assert len(stats) == 8
    expected = [0.05 * (1.0 if t == 0 else _expected_gain(stats[t - 1], 8, 2.0)) for t in range(8)]
    assert result["used"] == pytest.approx(expected, rel=1e-9)
    assert all(1.0 < u / 0.05 <= 2.0 for u in result["used"][1:])


def test_gain_follows_a_gradient_accumulation_scheduler(tmp_path: Path) -> None:
    model = _Regression(gamma=None)
    callback = BatchScalingCallback(base_batch_size=8, rule="adascale")
    schedule = GradientAccumulationScheduler({0: 2, 1: 4})
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=16, callbacks=[callback, schedule])
    trainer.fit(model)
    s = [2.0] * 8 + [4.0] * 4  # 16 batches: 8 steps of 2, then 4 steps of 4
    assert len(model.used) == 12
    expected = [0.05 * (1.0 if t == 0 else _expected_gain(model.stats[t - 1], 8, s[t])) for t in range(12)]
    assert model.used == pytest.approx(expected, rel=1e-9)
    assert max(model.used[:8]) <= 0.1
    with_s2 = [0.05 * _expected_gain(model.stats[t - 1], 8, 2.0) for t in range(8, 12)]
    assert all(u > v * (1 + 1e-6) for u, v in zip(model.used[8:], with_s2))  # epoch 1 uses S = 4, not 2


def test_accumulation_scheduler_that_drops_to_one_is_refused(tmp_path: Path) -> None:
    callback = BatchScalingCallback(base_batch_size=8, rule="adascale")
    schedule = GradientAccumulationScheduler({0: 2, 1: 1})
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=4, callbacks=[callback, schedule])
    with pytest.raises(ValueError, match="accumulate_grad_batches>=2"):
        trainer.fit(_Regression(gamma=None))
