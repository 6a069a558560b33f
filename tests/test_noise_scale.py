"""Gradient noise scale (issue 10): ``BatchScalingCallback(noise_scale=True)`` and ``lightning_lrbs.noise``.

Every fit is a real ``Trainer``. The weights are frozen (SGD at LR 0), so each step's micro-batch gradients can be
recomputed here with plain autograd and the two-batch estimates written out independently of the library
(``reference``). The correctness bar runs a small MLP on real MNIST against the exact noise scale from per-example
gradients, in one process and in 2 DDP processes, and against fairscale's ``AdaScale`` on the same gradients.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision
from lrbs_testing import quiet_trainer, run_script
from noise_testing import (
    FrozenMLP,
    MicroBatches,
    NoiseRecorder,
    draw_micro_batches,
    exact_noise_scale,
    find_mnist,
    mlp,
    mnist_subset,
)
from torch.utils.data import DataLoader, TensorDataset

from lightning_lrbs import BatchScalingCallback
from lightning_lrbs.noise import GradientNoiseScale, describe_noise_scale

SUBSET = 1024  # MNIST images the correctness bar samples from (also in scripts/noise_ddp.py)
needs_mnist = pytest.mark.skipif(find_mnist() is None, reason="real MNIST not found: set LRBS_DATA_DIR")


# ---------------------------------------------------------------------------------------------- a tiny frozen model
def dataset(n: int = 48, seed: int = 0, noisy: bool = True) -> TensorDataset:
    """Noisy: a linear target with an offset and noise (noise scale about 10). Not noisy: nearly identical
    samples (noise scale far below 1)."""
    g = torch.Generator().manual_seed(seed)
    if noisy:
        x = torch.randn(n, 8, generator=g)
        return TensorDataset(x, x.sum(1, keepdim=True) + 5 + torch.randn(n, 1, generator=g))
    x = 1.0 + 1e-3 * torch.randn(n, 8, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


class Frozen(pl.LightningModule):
    """Linear(8, 1) with MSE, SGD at LR 0: the weights never move, so every gradient can be recomputed."""

    def __init__(self, data: TensorDataset, batch_size: int = 4, lr: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(8, 1)
        self.data, self.batch_size, self.lr = data, batch_size, lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=False)


def micro_grad(model: Frozen, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    layer = torch.nn.Linear(8, 1)
    layer.load_state_dict(model.layer.state_dict())
    F.mse_loss(layer(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in layer.parameters()]).double()  # type: ignore[union-attr]


def reference(model: Frozen, windows: list[list[int]]) -> list[float]:
    """|G|^2, tr Sigma of each step (flat), the issue's formulas written out: windows are lists of batch indices."""
    out = []
    for window in windows:
        grads, sizes = [], []
        for i in window:
            x, y = model.data[i * model.batch_size : (i + 1) * model.batch_size]
            grads.append(micro_grad(model, x, y))
            sizes.append(len(x))
        k = len(grads)
        b = k / sum(1 / s for s in sizes)
        big = k * b
        s = sum(float(g @ g) for g in grads) / k
        mean = torch.stack(grads).mean(0)
        lsq = float(mean @ mean)
        out += [(big * lsq - b * s) / (big - b), (s - lsq) / (1 / b - 1 / big)]
    return out


def fit(
    tmp_path: Path,
    model: pl.LightningModule,
    callback: BatchScalingCallback,
    extra: tuple[pl.Callback, ...] = (),
    **kwargs: Any,
) -> NoiseRecorder:
    recorder = NoiseRecorder()
    options: dict[str, Any] = {"max_epochs": 1, "limit_train_batches": 12, "callbacks": [callback, recorder, *extra]}
    options.update(kwargs)
    quiet_trainer(tmp_path, **options).fit(model)
    return recorder


def noise_callback(**kwargs: Any) -> BatchScalingCallback:
    options: dict[str, Any] = {"base_batch_size": 4, "noise_scale": True, "noise_every_n_steps": 1}
    options.update(kwargs)
    return BatchScalingCallback(**options)


def measured(recorder: NoiseRecorder) -> list[float]:
    """|G|^2, tr Sigma of each measured step, flat."""
    return [v for _, sq, var, _ in recorder.steps for v in (sq, var)]


# ---------------------------------------------------------------------------------------------- arguments
class TestArguments:
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"noise_every_n_steps": 0}, "`noise_every_n_steps` must be a positive int, got 0"),
            ({"noise_smoothing": 1.0}, r"`noise_smoothing` must be a number in \[0, 1\), got 1.0"),
            ({"noise_smoothing": -0.1}, r"`noise_smoothing` must be a number in \[0, 1\), got -0.1"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict[str, Any], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            BatchScalingCallback(**kwargs)

    def test_off_by_default(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback(base_batch_size=4)
        fit(tmp_path, Frozen(dataset()), callback, accumulate_grad_batches=2)
        assert callback.noise is None
        assert callback.noise_scale is None


# ---------------------------------------------------------------------------------------------- measured values
class TestOneDevice:
    def test_accumulation_matches_the_formulas_on_every_step(self, tmp_path: Path) -> None:
        """A=4 over 10 batches: windows [0-3], [4-7] and Lightning's partial last window [8, 9] (each loss still
        divided by 4, so ``.grad`` is 2/4 of the mean there)."""
        model, callback = Frozen(dataset()), noise_callback(noise_smoothing=0.5)
        assert callback.noise_scale is None
        recorder = fit(tmp_path, model, callback, accumulate_grad_batches=4, limit_train_batches=10)
        expected = reference(model, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]])
        assert [k for *_, k in recorder.steps] == [4, 4, 2]
        assert measured(recorder) == pytest.approx(expected, rel=1e-5)
        sq = (0.5 * 0.25 * expected[0] + 0.5 * 0.5 * expected[2] + 0.5 * expected[4]) / (1 - 0.5**3)
        var = (0.5 * 0.25 * expected[1] + 0.5 * 0.5 * expected[3] + 0.5 * expected[5]) / (1 - 0.5**3)
        assert callback.noise is not None
        assert callback.noise.grad_sq_norm == pytest.approx(sq, rel=1e-5)
        assert callback.noise.grad_var == pytest.approx(var, rel=1e-5)
        assert callback.noise_scale == pytest.approx(var / sq, rel=1e-5)

    def test_every_n_steps_measures_only_those_steps(self, tmp_path: Path) -> None:
        model, callback = Frozen(dataset()), noise_callback(noise_every_n_steps=2)
        recorder = fit(tmp_path, model, callback, accumulate_grad_batches=2, limit_train_batches=12)
        assert [step for step, *_ in recorder.steps] == [0, 2, 4]
        assert measured(recorder) == pytest.approx(reference(model, [[0, 1], [4, 5], [8, 9]]), rel=1e-5)

    def test_logged_summary_and_info_line(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        callback = noise_callback()
        with caplog.at_level(logging.INFO), warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no warning: the batch is not beyond the noise scale
            fit(
                tmp_path,
                Frozen(dataset()),
                callback,
                max_epochs=2,
                accumulate_grad_batches=2,
                logger=CSVLogger(tmp_path, name="log"),
                log_every_n_steps=1,
            )
        lines = (tmp_path / "log" / "version_0" / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        for name in ("lrbs/noise_scale", "lrbs/grad_sq_norm", "lrbs/grad_var"):
            assert name in header
        column = header.index("lrbs/noise_scale")
        logged = [float(row.split(",")[column]) for row in lines[1:] if row.split(",")[column]]
        assert len(logged) >= 10  # at log_every_n_steps=1, from the step after the first measurement
        assert logged[-1] > 0
        value = callback.noise_scale
        assert value is not None
        assert value > 0.8  # not warned: 8 < 10 x value
        line = describe_noise_scale(value, 8)
        assert callback.summary.splitlines()[-1] == f"{line} (epoch 1)"
        assert callback.summary.startswith("effective batch 8 = 4 per device × 2 accumulation")
        infos = [r.getMessage() for r in caplog.records if "noise scale ≈" in r.getMessage()]
        assert len(infos) == 2  # once per epoch
        assert infos[-1] == f"BatchScalingCallback: {line} (epoch 1)"

    def test_one_device_without_accumulation_warns_once_and_trains(self, tmp_path: Path) -> None:
        model = Frozen(dataset(), lr=0.01)
        before = model.layer.weight.detach().clone()
        callback = noise_callback()
        trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=4, callbacks=[callback])
        with pytest.warns(RuntimeWarning) as record:
            trainer.fit(model)
        messages = [str(w.message) for w in record if "noise_scale" in str(w.message)]
        assert len(messages) == 1
        assert "`accumulate_grad_batches>=2`" in messages[0]
        assert "2 or more devices" in messages[0]
        assert callback.noise_scale is None
        assert trainer.global_step == 8
        assert not torch.equal(model.layer.weight, before)

    def test_rule_none_measures_without_scaling(self, tmp_path: Path) -> None:
        model, callback = Frozen(dataset()), noise_callback(rule="none")
        recorder = fit(tmp_path, model, callback, accumulate_grad_batches=3, limit_train_batches=6)
        assert callback.scale_factor == 1.0
        assert measured(recorder) == pytest.approx(reference(model, [[0, 1, 2], [3, 4, 5]]), rel=1e-5)

    def test_gradient_accumulation_scheduler(self, tmp_path: Path) -> None:
        """Epoch 0 at A=2, epoch 1 at A=3 (8 batches an epoch: windows of 3, 3, 2)."""
        model, callback = Frozen(dataset(n=64)), noise_callback()
        schedule = GradientAccumulationScheduler({0: 2, 1: 3})
        recorder = fit(tmp_path, model, callback, (schedule,), max_epochs=2, limit_train_batches=8)
        windows = [[0, 1], [2, 3], [4, 5], [6, 7], [0, 1, 2], [3, 4, 5], [6, 7]]
        assert [k for *_, k in recorder.steps] == [len(w) for w in windows]
        assert measured(recorder) == pytest.approx(reference(model, windows), rel=1e-5)

    def test_gradient_clipping_is_measured_before_it(self, tmp_path: Path) -> None:
        plain, clipped = noise_callback(), noise_callback()
        fit(tmp_path / "a", Frozen(dataset()), plain, accumulate_grad_batches=2)
        fit(tmp_path / "b", Frozen(dataset()), clipped, accumulate_grad_batches=2, gradient_clip_val=1e-4)
        assert clipped.noise is not None
        assert plain.noise is not None
        assert clipped.noise.state_dict() == pytest.approx(plain.noise.state_dict(), rel=1e-9)

    def test_fp16_amp_measures_unscaled_gradients(self, tmp_path: Path) -> None:
        """The hooks see gradients times the GradScaler's scale (2^8, then 2^9); the estimates must not."""
        model = Frozen(dataset())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)  # the scale grows mid-run
        amp = noise_callback()
        recorder = fit(
            tmp_path,
            model,
            amp,
            accumulate_grad_batches=2,
            plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        )
        assert scaler.get_scale() == 2.0**10  # grown after steps 3 and 6, so both scales were measured
        expected = reference(model, [[2 * i, 2 * i + 1] for i in range(6)])
        assert measured(recorder) == pytest.approx(expected, rel=2e-2)  # fp16 forward

    def test_resume_continues_the_averages(self, tmp_path: Path) -> None:
        class StopAt(pl.Callback):  # at the end of epoch 0: Lightning restarts a plain loader from its start
            def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
                if trainer.global_step == 6:
                    trainer.save_checkpoint(tmp_path / "mid.ckpt")
                    trainer.should_stop = True

        kwargs: dict[str, Any] = {"accumulate_grad_batches": 2, "max_epochs": 2}
        full = noise_callback(noise_smoothing=0.7)
        fit(tmp_path / "full", Frozen(dataset()), full, **kwargs)
        first = noise_callback(noise_smoothing=0.7)
        stop = StopAt()
        quiet_trainer(tmp_path / "first", callbacks=[first, stop], **kwargs, limit_train_batches=12).fit(
            Frozen(dataset())
        )
        resumed = noise_callback(noise_smoothing=0.7)
        trainer = quiet_trainer(tmp_path / "second", callbacks=[resumed], **kwargs, limit_train_batches=12)
        trainer.fit(Frozen(dataset()), ckpt_path=tmp_path / "mid.ckpt")
        assert first.noise is not None
        assert resumed.noise is not None
        assert full.noise is not None
        assert first.noise.measurements == 6
        assert resumed.noise.measurements == full.noise.measurements == 12
        assert resumed.noise.state_dict() == pytest.approx(full.noise.state_dict(), rel=1e-9)

    def test_manual_optimization_is_refused(self, tmp_path: Path) -> None:
        class Manual(BoringModel):
            def __init__(self) -> None:
                super().__init__()
                self.automatic_optimization = False

            def training_step(self, batch: Any, batch_idx: int) -> None:
                opt = self.optimizers()
                loss = self.step(batch)
                self.manual_backward(loss)
                opt.step()  # type: ignore[union-attr]
                opt.zero_grad()  # type: ignore[union-attr]

        with pytest.raises(ValueError, match=r"`noise_scale=True` needs automatic optimization.*GradientNoiseScale"):
            quiet_trainer(tmp_path, callbacks=[noise_callback()]).fit(Manual())

    def test_warns_when_the_batch_is_far_beyond_the_noise_scale(self, tmp_path: Path) -> None:
        """Nearly noise-free data: B_noise far below the effective batch of 16; warned once, late in training."""
        callback = noise_callback(noise_smoothing=0.5)
        with pytest.warns(RuntimeWarning, match="far beyond the measured gradient noise scale") as record:
            fit(tmp_path, Frozen(dataset(n=96, noisy=False)), callback, accumulate_grad_batches=4, max_epochs=2)
        assert sum("far beyond" in str(w.message) for w in record) == 1
        value = callback.noise_scale
        assert value is not None
        assert 10 * value < 16


# ---------------------------------------------------------------------------------------------- the estimator alone
def three_measured_steps(
    data: TensorDataset, dtype: torch.dtype = torch.float32, transform: Any = None
) -> tuple[float | None, float | None, float | None]:
    """``(|G|^2, tr Sigma, B_noise)`` of a :class:`GradientNoiseScale` on the frozen ``Linear(8, 1)`` (in ``dtype``)
    after 3 steps of 2 micro-batches of 4."""
    layer = Frozen(data).layer.to(dtype)
    gns = GradientNoiseScale(layer.parameters(), smoothing=0.5, transform=transform)
    for step in range(3):
        for j in range(2):
            x, y = data[(2 * step + j) * 4 : (2 * step + j + 1) * 4]
            gns.micro_batch(4, loss_scale=0.5)
            (F.mse_loss(layer(x.to(dtype)), y.to(dtype)) / 2).backward()
        gns.step()
        layer.zero_grad()
    return gns.grad_sq_norm, gns.grad_var, gns.noise_scale


class TestEstimator:
    def test_transform_applies_to_hooks_and_grad(self) -> None:
        """A linear transform ``2 g``: |G|^2 and tr Sigma grow 4x, the noise scale stays."""
        data = dataset()
        sq, var, ns = three_measured_steps(data)
        sq2, var2, ns2 = three_measured_steps(data, transform=lambda p, g: 2 * g)
        assert sq is not None
        assert var is not None
        assert (sq2, var2, ns2) == pytest.approx((4 * sq, 4 * var, ns), rel=1e-6)

    @pytest.mark.parametrize(("dtype", "rel"), [(torch.float64, 1e-5), (torch.bfloat16, 5e-2)])
    def test_other_dtypes_measure_what_float32_measures(self, dtype: torch.dtype, rel: float) -> None:
        """Float32 gradients take the one-kernel hook, others the general one (norms in float32): the same
        estimates from the same data, to the other dtype's precision."""
        data = dataset()
        expected = three_measured_steps(data)
        assert expected[0] is not None
        assert expected[0] > 0
        assert three_measured_steps(data, dtype) == pytest.approx(expected, rel=rel)

    def test_many_micro_batches_match_their_gradients_by_hand(self) -> None:
        """10 micro-batches in one step (more than the norms' first buffer holds): the step's mean |g_j|^2 and
        |g_bar|^2 equal the ones computed from each micro-batch's own gradient, and a step with a dropped
        micro-batch (no backward) counts the others only."""
        data = dataset(n=40)
        layer = Frozen(data).layer
        gns = GradientNoiseScale(layer.parameters())
        grads = []
        for j in range(10):  # each micro-batch's own gradient, before any hook exists
            x, y = data[4 * j : 4 * j + 4]
            own = torch.autograd.grad(F.mse_loss(layer(x), y), list(layer.parameters()))
            grads.append(torch.cat([g.reshape(-1) for g in own]))
        for j in range(10):
            x, y = data[4 * j : 4 * j + 4]
            gns.micro_batch(4, loss_scale=0.1)
            (F.mse_loss(layer(x), y) / 10).backward()
        gns.micro_batch(4, loss_scale=0.1)  # armed, but its backward never runs: dropped
        estimate = gns.step()
        assert estimate is not None
        assert estimate.micro_batches == 10
        expected_mean_sq = float(sum(g.dot(g) for g in grads) / 10)
        mean = torch.stack(grads).mean(0)
        assert estimate.mean_sq == pytest.approx(expected_mean_sq, rel=1e-5)
        assert estimate.sq_of_mean == pytest.approx(float(mean.dot(mean)), rel=1e-5)

    def test_state_dict_round_trip_and_unmeasured_steps(self) -> None:
        model = Frozen(dataset())
        gns = GradientNoiseScale(model.parameters())
        assert gns.step() is None  # nothing armed: not measured
        assert gns.noise_scale is None
        other = GradientNoiseScale(model.parameters())
        other.load_state_dict({"grad_sq_norm_biased": 0.5, "grad_var_biased": 5.0, "weight": 0.5, "measurements": 3})
        assert other.noise_scale == pytest.approx(10.0)
        gns.load_state_dict(other.state_dict())
        assert (gns.grad_sq_norm, gns.grad_var, gns.measurements) == (1.0, 10.0, 3)

    def test_lower_bound_when_the_average_is_not_resolved(self) -> None:
        """Averaged |G|^2 = 1 with per-step spread 5 over 25 measurements: standard error 1, so |G|^2 is 1 se above
        0 (not resolved) and the lower bound is tr Sigma / (1 + 2)."""
        gns = GradientNoiseScale(Frozen(dataset()).parameters())
        state = {"grad_sq_norm_biased": 0.5, "grad_var_biased": 5.0, "weight": 0.5, "measurements": 25}
        gns.load_state_dict({**state, "grad_sq_norm_sq_biased": 0.5 * 26})
        assert gns.noise_scale == pytest.approx(10.0)
        assert gns.noise_scale_lower_bound == pytest.approx(10.0 / 3)
        assert not gns.resolved
        gns.load_state_dict({**state, "grad_sq_norm_sq_biased": 0.5 * 1.2})  # spread 0.45: se 0.09
        assert gns.resolved
        text = describe_noise_scale(10.0, 64, lower_bound=10 / 3)
        assert text.startswith("noise scale ≳ 3.33 samples (|G|² not resolved at this batch); effective batch 64 ≤ 19")

    def test_bad_arguments(self) -> None:
        model = Frozen(dataset())
        with pytest.raises(ValueError, match=r"`smoothing` must be a number in \[0, 1\), got 1"):
            GradientNoiseScale(model.parameters(), smoothing=1)
        with pytest.raises(ValueError, match="`params` must hold at least one tensor that requires a gradient"):
            GradientNoiseScale([])
        gns = GradientNoiseScale(model.parameters())
        with pytest.raises(ValueError, match="`batch_size` must be a positive int, got 0"):
            gns.micro_batch(0)
        with pytest.raises(ValueError, match="`loss_scale` must be a positive finite number, got nan"):
            gns.micro_batch(4, loss_scale=math.nan)


# ---------------------------------------------------------------------------------------------- correctness bar
def lightning_fit_on_plan(
    tmp_path: Path, x: torch.Tensor, y: torch.Tensor, plan: list[list[torch.Tensor]], k: int
) -> tuple[BatchScalingCallback, NoiseRecorder]:
    """One process, accumulation ``k`` over the plan's micro-batches in order."""
    callback = BatchScalingCallback(rule="none", noise_scale=True, noise_every_n_steps=1, noise_smoothing=0.99)
    recorder = NoiseRecorder()
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=1.0, accumulate_grad_batches=k, callbacks=[callback, recorder]
    )
    trainer.fit(FrozenMLP(MicroBatches(x, y, plan, offset=0, per_step=k)))
    return callback, recorder


def run_ddp(out: Path, steps: int, accumulation: int, size0: int, size1: int) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    return run_script("noise_ddp.py", out, steps, accumulation, size0, size1, timeout=600)


@needs_mnist
@pytest.mark.slow
class TestCorrectnessBar:
    STEPS = 250
    B = 16

    def test_within_ten_percent_of_exact_one_process_and_two_ranks(self, tmp_path: Path) -> None:
        """Frozen MLP on 1024 MNIST images, micro-batches of 16 drawn with replacement, 8 per step, 250 steps:
        1 process × A=8 and 2 DDP ranks × A=4 fed the same micro-batches."""
        x, y = mnist_subset(SUBSET)
        exact, _, _ = exact_noise_scale(mlp(), x, y)
        plan = draw_micro_batches(SUBSET, self.STEPS, [self.B] * 8)
        single, recorder = lightning_fit_on_plan(tmp_path / "one", x, y, plan, 8)
        assert single.noise_scale == pytest.approx(exact, rel=0.10)
        ranks = run_ddp(tmp_path / "ddp", self.STEPS, 4, self.B, self.B)
        for rank in ranks:
            assert rank["effective"] == 128
            assert rank["noise_scale"] == pytest.approx(single.noise_scale, rel=1e-4)
            assert [s[3] for s in rank["steps"]] == [8] * self.STEPS
            assert flat_steps(rank) == pytest.approx(measured(recorder), rel=1e-3)
        assert ranks[0]["steps"] == ranks[1]["steps"]
        assert ranks[0]["noise_scale"] == ranks[1]["noise_scale"]

    def test_two_uneven_ranks_without_accumulation(self, tmp_path: Path) -> None:
        """Rank 0 feeds 16 samples, rank 1 feeds 4, no accumulation: the same estimates step by step as one process
        with accumulation 2 over micro-batches of 16 and 4 (Lightning weighs both equally, as DDP does)."""
        x, y = mnist_subset(SUBSET)
        plan = draw_micro_batches(SUBSET, 20, [16, 4])
        _, recorder = lightning_fit_on_plan(tmp_path / "one", x, y, plan, 2)
        ranks = run_ddp(tmp_path / "ddp", 20, 1, 16, 4)
        for rank in ranks:
            assert rank["effective"] == 20
            assert [s[3] for s in rank["steps"]] == [2] * 20
            assert flat_steps(rank) == pytest.approx(measured(recorder), rel=1e-3)
        assert ranks[0]["steps"] == ranks[1]["steps"]


def flat_steps(rank: dict[str, Any]) -> list[float]:
    return [v for s in rank["steps"] for v in s[1:3]]


@needs_mnist
def test_uneven_micro_batches_within_ten_percent_of_exact() -> None:
    """Micro-batches of 16 and 4 (A=8, 250 steps, the estimator in a raw loop): within 10 % of exact with the
    harmonic-mean micro-batch size (the arithmetic mean would be 56 % off)."""
    x, y = mnist_subset(SUBSET)
    model = mlp()
    exact, _, _ = exact_noise_scale(model, x, y)
    gns = GradientNoiseScale(model.parameters(), smoothing=0.99)
    for step in draw_micro_batches(SUBSET, 250, [16] * 4 + [4] * 4):
        for index in step:
            gns.micro_batch(len(index), loss_scale=1 / 8)
            (F.cross_entropy(model(x[index]), y[index]) / 8).backward()
        gns.step()
        model.zero_grad()
    assert gns.noise_scale == pytest.approx(exact, rel=0.10)


@needs_mnist
def test_agrees_with_fairscale_adascale_on_identical_gradients() -> None:
    """fairscale's AdaScale keeps the same two statistics (its variance per micro-batch, tr Sigma / b; clamped at
    1e-6 and |G|^2 at 0 per step) with the same debiased moving average; both hook the same backward passes."""
    adascale = pytest.importorskip("fairscale.optim.adascale")
    x, y = mnist_subset(SUBSET)
    model = mlp()
    fair = adascale.AdaScale(
        torch.optim.SGD(model.parameters(), lr=0.0), world_size=1, smoothing=0.9, num_gradients_to_accumulate=8
    )
    ours = GradientNoiseScale(model.parameters(), smoothing=0.9)
    b = 16
    for step in draw_micro_batches(SUBSET, 30, [b] * 8):
        for index in step:
            ours.micro_batch(b, loss_scale=1 / 8)
            (F.cross_entropy(model(x[index]), y[index]) / 8).backward()
        estimate = ours.step()
        assert estimate is not None
        assert estimate.grad_sq_norm > 0  # no clamping: the two must agree exactly
        fair.step()
        fair.zero_grad()
        assert ours.grad_sq_norm == pytest.approx(fair._grad_sqr_avg(), rel=1e-5)
        assert ours.grad_var == pytest.approx(b * fair._grad_var_avg(), rel=1e-5)
    fair.unhook()


def test_pytorch_lightning_namespace(tmp_path: Path) -> None:
    """The noise hooks reach utilities through the Trainer's own namespace."""
    ptl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.demos.boring_classes import BoringModel as PTLBoringModel

    from lightning_lrbs.pytorch_lightning import BatchScalingCallback as PTLCallback

    callback = PTLCallback(noise_scale=True, noise_every_n_steps=1)
    trainer = ptl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=8,
        limit_val_batches=0,
        accumulate_grad_batches=2,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(PTLBoringModel())
    assert callback.noise is not None
    assert callback.noise.measurements == 4
    assert callback.noise_scale is not None


def test_noise_module_does_not_import_lightning() -> None:
    code = (
        "import sys\n"
        "import lightning_lrbs.noise\n"
        "from lightning_lrbs import GradientNoiseScale\n"
        "roots = {'lightning', 'pytorch_lightning', 'lightning_fabric', 'lightning_utilities', 'torchmetrics'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in roots))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _HeadThenBackbone(BoringModel):
    """SGD on the bias only; the weight is added as a second param group after two steps (as BackboneFinetuning
    adds an unfrozen backbone)."""

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([self.layer.bias], lr=0.1)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.trainer.optimizers[0]
        if self.trainer.global_step == 2 and len(optimizer.param_groups) == 1:
            optimizer.add_param_group({"params": [self.layer.weight], "lr": 0.1})


@pytest.mark.parametrize("rule", ["linear", "adascale"])
def test_parameters_added_after_start_are_said_to_be_outside_the_estimate(tmp_path: Path, rule: str) -> None:
    """The estimate covers the parameters trainable when training starts; a group added later is named in a warning,
    not silently left out (under adascale it also gets the others' gain)."""
    callback = BatchScalingCallback(base_batch_size=1, rule=rule, noise_scale=True, noise_every_n_steps=1)
    trainer = quiet_trainer(tmp_path, max_epochs=3, accumulate_grad_batches=2, callbacks=[callback])
    with pytest.warns(RuntimeWarning, match="added to the optimizers or unfrozen after training started") as record:
        trainer.fit(_HeadThenBackbone())
    messages = [str(w.message) for w in record if "unfrozen after training started" in str(w.message)]
    assert len(messages) == 1  # once
    assert ("applies their gain to the new ones" in messages[0]) == (rule == "adascale")
