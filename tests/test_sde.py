"""rule="sde" and the time constants that follow the batch: Adam's betas and eps, RMSprop's alpha, decoupled weight
decay, OneCycleLR / CyclicLR β₁ ranges and a model EMA, on real CPU fits."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lrbs_testing import LR, LRModel, quiet_trainer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lightning_lrbs import BatchScalingCallback, scale_factor, scale_for_batch
from lightning_lrbs.sde import averaged_model_ema

try:
    from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
except ImportError:  # Lightning < 2.6 (make test-oldest runs 2.1)
    EMAWeightAveraging = WeightAveraging = None
needs_weight_averaging = pytest.mark.skipif(EMAWeightAveraging is None, reason="Lightning has no EMAWeightAveraging")

KEYS = ("lr", "betas", "eps", "weight_decay", "alpha", "momentum", "max_momentum", "base_momentum", "momentum_decay")
Factory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


class Snapshot(Callback):
    """Copies every param group's hyperparameters when training starts (listed after the scaling callback) and the
    betas / momentum of group 0 before every optimizer step."""

    def __init__(self) -> None:
        self.start: list[list[dict[str, Any]]] = []
        self.beta1: list[float] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = [[{k: g[k] for k in KEYS if k in g} for g in o.param_groups] for o in trainer.optimizers]

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        group = optimizer.param_groups[0]
        self.beta1.append(float(group["betas"][0] if "betas" in group else group.get("momentum", 0.0)))


def fit(
    tmp_path: Path, factory: Factory, callback: BatchScalingCallback | None, *extra: Callback, **kwargs: Any
) -> tuple[Snapshot, Trainer, LRModel]:
    snapshot = Snapshot()
    model = LRModel(optimizer=factory, batch_size=16, **kwargs.pop("model", {}))
    ckpt_path = kwargs.pop("ckpt_path", None)
    callbacks = ([callback] if callback else []) + [snapshot, *extra]
    trainer = quiet_trainer(tmp_path, callbacks=callbacks, **{"max_epochs": 1, "limit_train_batches": 2, **kwargs})
    trainer.fit(model, ckpt_path=ckpt_path)
    return snapshot, trainer, model


def adam(**kw: Any) -> Factory:
    return lambda groups: torch.optim.Adam(groups, lr=0.0, **kw)


# family -> (factory, what the group holds before, expected after at kappa k: (group before, k) -> group after)
def _adam_like(group: dict[str, Any], k: float, decoupled: bool = False) -> dict[str, Any]:
    b1, b2 = group["betas"]
    wd = group["weight_decay"] * (k / math.sqrt(k) if decoupled else 1.0)
    return {**group, "lr": group["lr"] * math.sqrt(k), "betas": (b1**k, b2**k), "eps": group["eps"] / math.sqrt(k),
            "weight_decay": wd}  # fmt: skip


FAMILIES: dict[str, tuple[Factory, Callable[[dict[str, Any], float], dict[str, Any]]]] = {
    "SGD": (
        lambda g: torch.optim.SGD(g, lr=0.0, momentum=0.9, weight_decay=1e-4),
        lambda grp, k: {**grp, "lr": grp["lr"] * k},
    ),
    "Adam": (adam(weight_decay=0.01), _adam_like),
    "AdamW": (lambda g: torch.optim.AdamW(g, lr=0.0, weight_decay=0.01), lambda grp, k: _adam_like(grp, k, True)),
    "Adamax": (lambda g: torch.optim.Adamax(g, lr=0.0, weight_decay=0.01), _adam_like),
    "NAdam": (lambda g: torch.optim.NAdam(g, lr=0.0, weight_decay=0.01), _adam_like),
    "RAdam": (lambda g: torch.optim.RAdam(g, lr=0.0, weight_decay=0.01), _adam_like),
    "Adam-decoupled": (adam(weight_decay=0.01, decoupled_weight_decay=True), lambda grp, k: _adam_like(grp, k, True)),
    "RMSprop": (
        lambda g: torch.optim.RMSprop(g, lr=0.0, alpha=0.99, momentum=0.9, eps=1e-8, weight_decay=0.01),
        lambda grp, k: {**grp, "lr": grp["lr"] * math.sqrt(k), "alpha": 0.99**k, "eps": 1e-8 / math.sqrt(k)},
    ),
}


def approx(groups: list[dict[str, Any]]) -> Any:
    return [{k: pytest.approx(v, rel=1e-12, abs=0) for k, v in g.items()} for g in groups]


def expected(family: str, kappa: float) -> list[dict[str, Any]]:
    """The groups a fit without the callback starts with, transformed by the family's formulas."""
    factory, transform = FAMILIES[family]
    model = LRModel(optimizer=factory)
    optimizer = model.configure_optimizers()
    return [transform({k: g[k] for k in KEYS if k in g}, kappa) for g in optimizer.param_groups]


class TestExactValues:
    @pytest.mark.parametrize("family", list(FAMILIES))
    @pytest.mark.parametrize(("kappa", "base"), [(0.5, 32), (2.0, 8), (16.0, 1)])
    def test_after_train_start(self, tmp_path: Path, family: str, kappa: float, base: int) -> None:
        callback = BatchScalingCallback(base_batch_size=base, rule="sde")
        snapshot, _, _ = fit(tmp_path, FAMILIES[family][0], callback)
        assert snapshot.start[0] == approx(expected(family, kappa))
        assert isinstance(snapshot.start[0][0].get("betas", ()), tuple)

    def test_factors_per_family(self) -> None:
        w = [torch.nn.Parameter(torch.zeros(1))]
        assert scale_factor(4.0, "sde", torch.optim.SGD(w, lr=0.1)) == 4.0
        assert scale_factor(4.0, "sde", torch.optim.AdamW(w)) == 2.0
        assert scale_factor(4.0, "sde", torch.optim.RMSprop(w)) == 2.0

    def test_unknown_optimizer_gets_sqrt_and_a_warning(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback(base_batch_size=4, rule="sde")
        with pytest.warns(RuntimeWarning, match=r"rule='sde' knows no SDE rule for Adagrad: .* square-root rule"):
            snapshot, _, _ = fit(tmp_path, lambda g: torch.optim.Adagrad(g, lr=0.0, eps=1e-10), callback)
        assert snapshot.start[0][0]["lr"] == pytest.approx(2 * LR)
        assert snapshot.start[0][0]["eps"] == 1e-10

    @needs_weight_averaging
    def test_summary_and_hyperparameters(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback(base_batch_size=4, rule="sde")
        logger = CSVLogger(tmp_path, name="log")
        fit(
            tmp_path,
            lambda g: torch.optim.AdamW(g, lr=0.0, weight_decay=0.01),
            callback,
            EMAWeightAveraging(decay=0.999),
            logger=logger,
        )
        assert callback.summary == (
            "effective batch 16 = 16 per device; base 4; rule sde → AdamW sqrt ×2: lr 0.1, 0.05 → 0.2, 0.1, "
            "betas (0.9, 0.999) → (0.6561, 0.996), eps 1e-08 → 5e-09, weight_decay 0.01 → 0.02; "
            "EMA decay 0.999 → 0.996"
        )
        hparams = callback.time_constant_hyperparameters()
        assert hparams["lrbs/beta1-AdamW/pg1"] == pytest.approx(0.9**4)
        assert hparams["lrbs/eps-AdamW/pg2"] == pytest.approx(5e-9)
        assert hparams["lrbs/weight_decay-AdamW/pg1"] == pytest.approx(0.02)
        assert hparams["lrbs/ema_decay"] == pytest.approx(0.999**4)
        saved = (Path(logger.log_dir) / "hparams.yaml").read_text()
        assert "lrbs/beta2-AdamW/pg1: 0.996" in saved
        assert "lrbs/ema_decay: 0.996" in saved


class TestWeightDecay:
    @pytest.mark.parametrize(
        ("rule", "switch", "factor"),
        [("sqrt", True, 2.0), ("sde", True, 2.0), ("linear", True, 1.0), ("none", True, 1.0), ("sqrt", False, 1.0)],
    )
    def test_decoupled_weight_decay_keeps_eta_lambda_per_epoch(
        self, tmp_path: Path, rule: str, switch: bool, factor: float
    ) -> None:
        callback = BatchScalingCallback(base_batch_size=4, rule=rule, scale_weight_decay=switch)  # type: ignore[arg-type]
        snapshot, _, _ = fit(tmp_path, lambda g: torch.optim.AdamW(g, lr=0.0, weight_decay=0.01), callback)
        assert snapshot.start[0][0]["weight_decay"] == pytest.approx(0.01 * factor)
        betas = (0.9**4, 0.999**4) if rule == "sde" else (0.9, 0.999)
        assert snapshot.start[0][0]["betas"] == pytest.approx(betas)

    def test_callable_rule(self, tmp_path: Path) -> None:
        callback = BatchScalingCallback(base_batch_size=1, rule=lambda r: r**0.25)  # kappa 16, f 2
        snapshot, _, _ = fit(tmp_path, lambda g: torch.optim.AdamW(g, lr=0.0, weight_decay=0.01), callback)
        assert snapshot.start[0][0]["weight_decay"] == pytest.approx(0.01 * 16 / 2)


class TestSchedulerMomentum:
    @pytest.mark.parametrize("name", ["OneCycleLR", "CyclicLR"])
    def test_beta1_range_follows_beta1(self, tmp_path: Path, name: str) -> None:
        def scheduler(base: float, peak: float) -> Callable[[torch.optim.Optimizer], Any]:
            if name == "OneCycleLR":
                return lambda o: torch.optim.lr_scheduler.OneCycleLR(
                    o, max_lr=[LR, LR / 2], total_steps=8, base_momentum=base, max_momentum=peak
                )
            return lambda o: torch.optim.lr_scheduler.CyclicLR(
                o, base_lr=LR / 10, max_lr=LR, step_size_up=3, base_momentum=base, max_momentum=peak
            )

        kappa = 4.0
        callback = BatchScalingCallback(base_batch_size=4, rule="sde")
        got, _, _ = fit(tmp_path, adam(), callback, limit_train_batches=4, max_epochs=2, model={
            "scheduler": scheduler(0.85, 0.95)})  # fmt: skip
        # By hand: the same scheduler built on the scaled range, betas[1] scaled
        want, _, _ = fit(
            tmp_path,
            lambda g: torch.optim.Adam(g, lr=0.0, betas=(0.9, 0.999**kappa), eps=1e-8 / 2),
            None,
            limit_train_batches=4,
            max_epochs=2,
            model={"scheduler": scheduler(0.85**kappa, 0.95**kappa)},
        )
        assert got.beta1 == pytest.approx(want.beta1, rel=1e-12)
        assert len(set(got.beta1)) > 2  # the scheduler really moves it
        assert got.start[0][0]["betas"][1] == pytest.approx(0.999**kappa)

    def test_heavy_ball_momentum_is_left_alone(self, tmp_path: Path) -> None:
        sched = lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=LR, total_steps=8)  # noqa: E731
        callback = BatchScalingCallback(base_batch_size=4, rule="sde")
        got, _, _ = fit(tmp_path, lambda g: torch.optim.SGD(g, lr=0.0, momentum=0.9), callback, model={
            "scheduler": sched})  # fmt: skip
        want, _, _ = fit(tmp_path, lambda g: torch.optim.SGD(g, lr=0.0, momentum=0.9), None, model={"scheduler": sched})
        assert got.beta1 == want.beta1


class TestResume:
    @pytest.mark.parametrize("family", ["Adam", "AdamW", "RMSprop"])
    @pytest.mark.parametrize(("first_base", "second_base", "kappa"), [(8, 1, 16.0), (4, 4, 4.0), (1, 32, 0.5)])
    def test_values_come_from_the_originals(
        self, tmp_path: Path, family: str, first_base: int, second_base: int, kappa: float
    ) -> None:
        factory = FAMILIES[family][0]
        _, trainer, _ = fit(tmp_path, factory, BatchScalingCallback(base_batch_size=first_base, rule="sde"))
        path = tmp_path / "first.ckpt"
        trainer.save_checkpoint(path)
        callback = BatchScalingCallback(base_batch_size=second_base, rule="sde")
        snapshot, _, _ = fit(tmp_path, factory, callback, max_epochs=2, ckpt_path=path)
        assert snapshot.start[0] == approx(expected(family, kappa))

    @needs_weight_averaging
    def test_accumulation_schedule_moves_kappa_from_the_originals(self, tmp_path: Path) -> None:
        from lightning.pytorch.callbacks import GradientAccumulationScheduler

        ema = EMAWeightAveraging(decay=0.9)
        callback = BatchScalingCallback(base_batch_size=8, rule="sde")  # kappa 2, then 4 from epoch 1
        snapshot, _, _ = fit(tmp_path, adam(), callback, GradientAccumulationScheduler({0: 1, 1: 2}), ema,
                             max_epochs=3, limit_train_batches=4)  # fmt: skip
        assert snapshot.beta1 == pytest.approx([0.9**2] * 4 + [0.9**4] * 4, rel=1e-12)
        assert averaged_model_ema(ema._average_model) == ("avg_fn", pytest.approx(0.9**4))  # type: ignore[arg-type]

    def test_checkpoint_without_the_callback_is_scaled_once(self, tmp_path: Path) -> None:
        factory = FAMILIES["AdamW"][0]
        _, trainer, _ = fit(tmp_path, factory, None)
        trainer.save_checkpoint(tmp_path / "plain.ckpt")
        callback = BatchScalingCallback(base_batch_size=4, rule="sde")
        snapshot, _, _ = fit(tmp_path, factory, callback, max_epochs=2, ckpt_path=tmp_path / "plain.ckpt")
        assert snapshot.start[0] == approx(expected("AdamW", 4.0))

    def test_back_to_sqrt_restores_the_betas(self, tmp_path: Path) -> None:
        _, trainer, _ = fit(tmp_path, adam(), BatchScalingCallback(base_batch_size=4, rule="sde"))
        trainer.save_checkpoint(tmp_path / "sde.ckpt")
        callback = BatchScalingCallback(base_batch_size=4, rule="sqrt")
        snapshot, _, _ = fit(tmp_path, adam(), callback, max_epochs=2, ckpt_path=tmp_path / "sde.ckpt")
        assert snapshot.start[0][0]["betas"] == (0.9, 0.999)
        assert snapshot.start[0][0]["eps"] == 1e-8

    def test_one_cycle_resumed_at_another_kappa(self, tmp_path: Path) -> None:
        sched = lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=LR, total_steps=8)  # noqa: E731
        _, trainer, _ = fit(tmp_path, adam(), BatchScalingCallback(base_batch_size=8, rule="sde"), model={
            "scheduler": sched})  # fmt: skip
        trainer.save_checkpoint(tmp_path / "a.ckpt")
        got, _, _ = fit(tmp_path, adam(), BatchScalingCallback(base_batch_size=4, rule="sde"), max_epochs=2,
                        ckpt_path=tmp_path / "a.ckpt", model={"scheduler": sched})  # fmt: skip
        # Uninterrupted reference at kappa 4 for both epochs: the range and beta1 in force from the resume on agree
        want, _, _ = fit(tmp_path, adam(), BatchScalingCallback(base_batch_size=4, rule="sde"), max_epochs=2,
                         model={"scheduler": sched})  # fmt: skip
        assert got.beta1 == pytest.approx(want.beta1[2:], rel=1e-12)
        assert got.start[0][0]["max_momentum"] == pytest.approx(0.95**4)


@needs_weight_averaging
class TestEMA:
    def test_ema_update_equals_rho_kappa_averaging(self, tmp_path: Path) -> None:
        class Weights(Callback):
            def __init__(self) -> None:
                self.seen: list[torch.Tensor] = []

            def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
                self.seen.append(pl_module.layer.weight.detach().clone())

        weights, ema = Weights(), EMAWeightAveraging(decay=0.9)
        callback = BatchScalingCallback(base_batch_size=4, rule="sde")
        _, _, model = fit(tmp_path, adam(), callback, weights, ema, limit_train_batches=4)
        assert averaged_model_ema(ema._average_model) == ("avg_fn", pytest.approx(0.9**4))  # type: ignore[arg-type]
        average = weights.seen[0]  # AveragedModel copies the first update, then averages
        for w in weights.seen[1:]:
            average = 0.9**4 * average + (1 - 0.9**4) * w
        torch.testing.assert_close(model.layer.weight.detach(), average, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(weights.seen[-1], average)  # the average is not just the last weights

    @pytest.mark.parametrize(
        ("rule", "switch", "decay"), [("sqrt", True, 0.9**4), ("sqrt", False, 0.9), ("none", True, 0.9)]
    )
    def test_switch_and_rule_none(self, tmp_path: Path, rule: str, switch: bool, decay: float) -> None:
        ema = WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(0.9))
        callback = BatchScalingCallback(base_batch_size=4, rule=rule, scale_ema=switch)  # type: ignore[arg-type]
        fit(tmp_path, adam(), callback, ema)
        assert averaged_model_ema(ema._average_model) == ("multi_avg_fn", pytest.approx(decay))  # type: ignore[arg-type]

    def test_equal_weight_averages_are_left_alone(self, tmp_path: Path) -> None:
        swa = WeightAveraging()
        callback = BatchScalingCallback(base_batch_size=4, rule="sde")
        fit(tmp_path, adam(), callback, swa)
        assert swa._average_model is not None
        assert swa._average_model.avg_fn is None
        assert "EMA" not in callback.summary

    def test_second_fit_starts_from_the_original_decay(self, tmp_path: Path) -> None:
        ema = EMAWeightAveraging(decay=0.9)
        callback = BatchScalingCallback(base_batch_size=4, rule="sde")
        fit(tmp_path, adam(), callback, ema)
        fit(tmp_path, adam(), callback, ema)
        assert averaged_model_ema(ema._average_model) == ("avg_fn", pytest.approx(0.9**4))  # type: ignore[arg-type]


class TestBadInput:
    @pytest.mark.parametrize(
        ("setup", "match"),
        [
            (lambda g: g.update(betas=(torch.tensor(0.9), torch.tensor(0.999))), r"param group 0 `betas` .* tensors"),
            (lambda g: g.update(betas=(0.9, 0.999, 0.5)), r"rule='sde' needs Adam param group 0 `betas` to be a pair"),
            (lambda g: g.update(betas=(1.5, 0.999)), r"needs Adam param group 0 `betas`\[0\] in \[0, 1\), got 1.5"),
            # torch's Adam refuses beta >= 1 in its constructor, not in a param group changed afterwards
            (lambda g: g.update(betas=(0.9, 1.0)), r"needs Adam param group 0 `betas`\[1\] in \[0, 1\), got 1.0"),
            (lambda g: g.update(eps=-1.0), r"Adam param group 0 `eps` to be a finite number >= 0, got -1.0"),
        ],
    )
    @needs_weight_averaging
    def test_nothing_changes_on_error(
        self, tmp_path: Path, setup: Callable[[dict[str, Any]], None], match: str
    ) -> None:
        def factory(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
            optimizer = torch.optim.Adam(groups, lr=0.0)
            setup(optimizer.param_groups[0])
            return optimizer

        before = [
            {k: g[k] for k in KEYS if k in g} for g in LRModel(optimizer=factory).configure_optimizers().param_groups
        ]
        trainer = quiet_trainer(tmp_path, callbacks=[BatchScalingCallback(base_batch_size=4, rule="sde"),
                                                     EMAWeightAveraging(decay=0.9)], max_steps=1)  # fmt: skip
        with pytest.raises(ValueError, match=match):
            trainer.fit(LRModel(optimizer=factory, batch_size=16))
        after = [{k: g[k] for k in KEYS if k in g} for g in trainer.optimizers[0].param_groups]
        assert str(after) == str(before)
        ema = trainer.callbacks[1]
        assert averaged_model_ema(ema._average_model)[1] == 0.9  # type: ignore[attr-defined,index]

    def test_loop_changes_nothing_on_error(self) -> None:
        w = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.Adam([w], lr=0.1)
        optimizer.param_groups[0]["betas"] = (0.9, 0.999, 0.5)
        with pytest.raises(ValueError, match="to be a pair"):
            scale_for_batch(optimizer, per_device_batch_size=32, base_batch_size=8, rule="sde")
        assert optimizer.param_groups[0]["lr"] == 0.1


class TestLoop:
    def test_scale_for_batch(self) -> None:
        w = torch.nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.AdamW([w], lr=1e-3, weight_decay=0.01)
        ema = AveragedModel(torch.nn.Linear(1, 1), multi_avg_fn=get_ema_multi_avg_fn(0.999))
        result = scale_for_batch(
            optimizer, per_device_batch_size=32, world_size=2, base_batch_size=16, rule="sde", averaged_models=[ema]
        )
        group = optimizer.param_groups[0]
        assert group["lr"] == pytest.approx(2e-3)
        assert group["betas"] == pytest.approx((0.9**4, 0.999**4))
        assert group["eps"] == pytest.approx(5e-9)
        assert group["weight_decay"] == pytest.approx(0.02)
        assert averaged_model_ema(ema) == ("multi_avg_fn", pytest.approx(0.999**4))
        assert result.summary.endswith("weight_decay 0.01 → 0.02; EMA decay 0.999 → 0.996")
        assert result.hyperparameters["lrbs/beta1-AdamW"] == pytest.approx(0.6561)
        assert result.rules == ("sqrt",)


@pytest.mark.slow
@needs_weight_averaging
def test_sde_sweep_on_real_mnist(tmp_path: Path) -> None:
    """The experiment of docs/sde/ on 256 real images: files written, the rules applied as the table says."""
    import importlib
    import os
    import sys

    repo = Path(__file__).resolve().parents[1]
    data = Path(os.environ.get("LRBS_DATA_DIR", repo.parent / "shared" / "data"))
    sys.path.insert(0, str(repo / "examples"))
    try:
        sweep = importlib.import_module("sde_sweep")
        if importlib.import_module("mnist").find_mnist_files(data) is None:
            pytest.skip(f"real MNIST not found in {data}: set LRBS_DATA_DIR")
        argv = ["--data-dir", str(data), "--output-dir", str(tmp_path), "--train-subset", "128", "--ks", "4",
                "--rules", "sde", "--log-every-samples", "64", "--ema-decay", "0.9"]  # fmt: skip
        assert sweep.main(argv) == 0
    finally:
        sys.path.remove(str(repo / "examples"))
    table = (tmp_path / "table.md").read_text()
    assert "| sde k=4 | 32 | 0.002 | (0.6561, 0.996) | 5e-09 | 0.6561 |" in table, table
    assert "| sde k=4, EMA rule off | 32 | 0.002 | (0.6561, 0.996) | 5e-09 | 0.9 |" in table, table
    assert "| base | 8 | 0.001 | (0.9, 0.999) | 1e-08 | 0.9 | 0.000 |" in table, table
    assert (tmp_path / "sde.png").stat().st_size > 10_000
    rows = (tmp_path / "curves.csv").read_text().splitlines()
    assert sum(",train," in r for r in rows) == 3 * 2  # 3 runs x 128 / 64 windows


@pytest.mark.slow
def test_sde_sweep_noise_scale_on_real_mnist(tmp_path: Path) -> None:
    """``--noise-scale``: the base run as 2 micro-batches of 4, measured on every step, one CSV row per window, with
    the same training-loss curve as the sweep's batch-8 run (same images, order and dropout masks, up to rounding)."""
    import csv
    import importlib
    import os
    import sys

    repo = Path(__file__).resolve().parents[1]
    data = Path(os.environ.get("LRBS_DATA_DIR", repo.parent / "shared" / "data"))
    sys.path.insert(0, str(repo / "examples"))
    try:
        sweep = importlib.import_module("sde_sweep")
        if importlib.import_module("mnist").find_mnist_files(data) is None:
            pytest.skip(f"real MNIST not found in {data}: set LRBS_DATA_DIR")
        argv = ["--data-dir", str(data), "--output-dir", str(tmp_path), "--train-subset", "192",
                "--log-every-samples", "64", "--noise-scale"]  # fmt: skip
        base_run = sweep.Run("base", 1, True, 8)  # the sweep's batch-8 run, without accumulation
        with sweep._sweep_environment(threads=1):
            sweep.train(base_run, sweep.build_parser().parse_args(argv))
        assert sweep.main(argv) == 0
    finally:
        sys.path.remove(str(repo / "examples"))
    with (tmp_path / "noise_scale.csv").open() as f:
        rows = list(csv.DictReader(f))
    base = [loss for _, _, loss in base_run.train]
    assert [(int(r["samples"]), int(r["step"]), int(r["measured_steps"])) for r in rows] == [
        (64, 8, 8),
        (128, 16, 8),
        (192, 24, 8),
    ]
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(base, rel=1e-4)
    assert all(float(r["grad_var"]) > 0 and float(r["noise_scale_smoothed"]) > 0 for r in rows)
    text = (tmp_path / "noise_scale.md").read_text()
    assert "batch 8 = 2 micro-batches of 4" in text, text
    assert "24 measured steps" in text, text
