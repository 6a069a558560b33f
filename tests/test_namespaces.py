"""The callback under both Lightning namespaces: ``lightning.pytorch`` and ``pytorch_lightning``.

A representative set of real fits (factor, accumulation, a scheduler, warmup, resume) runs once per namespace with
that namespace's Trainer, demo model and callback class, so a utility reached through the wrong namespace shows.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")


@dataclass(frozen=True)
class Namespace:
    """One Lightning namespace: its module, our callback class for it, and test helpers built on its classes."""

    name: str
    pl: ModuleType
    callback_cls: type[Any]
    model_cls: type[Any]
    recorder_cls: type[Any]

    def trainer(self, root: Path, callbacks: list[Any], **kwargs: Any) -> Any:
        defaults: dict[str, Any] = {
            "default_root_dir": root,
            "limit_val_batches": 0,
            "enable_model_summary": False,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "logger": False,
        }
        return self.pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def _load(name: str) -> Namespace:
    pl = pytest.importorskip(name)
    if name == "pytorch_lightning":
        from lightning_lrbs.pytorch_lightning import BatchScalingCallback
    else:
        from lightning_lrbs import BatchScalingCallback
    boring = importlib.import_module(f"{name}.demos.boring_classes")

    class Model(boring.BoringModel):
        """BoringModel with a chosen batch size, SGD LR and an optional step-interval scheduler."""

        def __init__(self, batch_size: int = 4, lr: float = 0.1, scheduler: str | None = None) -> None:
            super().__init__()
            self.batch_size, self.lr, self.scheduler = batch_size, lr, scheduler

        def train_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(boring.RandomDataset(32, 64), batch_size=self.batch_size)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
            if self.scheduler is None:
                return optimizer
            assert self.scheduler == "cosine"
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10, eta_min=0.01)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    class Recorder(pl.Callback):
        """Records the LR each optimizer step actually uses (warmup included) and the LR at train start."""

        def __init__(self) -> None:
            self.used: list[float] = []
            self.start_lr: float | None = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            optimizer = trainer.optimizers[0]
            self.start_lr = optimizer.param_groups[0]["lr"]
            # Registered after the warmup's pre-hook (this callback comes later in the list): sees the warmed LR.
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.used.append(opt.param_groups[0]["lr"]))

    return Namespace(name, pl, BatchScalingCallback, Model, Recorder)


@pytest.fixture(params=NAMESPACES)
def ns(request: pytest.FixtureRequest) -> Namespace:
    return _load(request.param)


class TestClasses:
    def test_callback_subclasses_its_namespace(self, ns: Namespace, tmp_path: Path) -> None:
        callback = ns.callback_cls()
        assert isinstance(callback, ns.pl.Callback)
        assert callback._pl is ns.pl
        assert ns.trainer(tmp_path, [callback]).callbacks[0] is callback

    def test_same_state_key_in_both(self) -> None:
        keys = {_load(name).callback_cls(base_batch_size=8).state_key for name in NAMESPACES}
        assert keys == {"BatchScalingCallback"}

    def test_same_validation(self, ns: Namespace) -> None:
        with pytest.raises(ValueError, match="`rule` must be one of 'linear', 'sqrt', 'auto', 'none'"):
            ns.callback_cls(rule="cubic")


class TestFit:
    def test_linear_factor(self, ns: Namespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # The summary goes through the rank-zero logging of the namespace the Trainer runs on (its rank is the one
        # that Trainer sets), never the other one's.
        infos: list[str] = []
        monkeypatch.setattr(ns.pl.utilities.rank_zero, "rank_zero_info", infos.append)
        other = next(name for name in NAMESPACES if name != ns.name)
        if importlib.util.find_spec(other) is not None:
            module = importlib.import_module(f"{other}.utilities.rank_zero")
            monkeypatch.setattr(module, "rank_zero_info", lambda *args, **kwargs: pytest.fail(f"logged via {other}"))
        callback, recorder = ns.callback_cls(base_batch_size=2), ns.recorder_cls()
        ns.trainer(tmp_path, [callback, recorder], max_steps=2).fit(ns.model_cls(batch_size=4))
        assert callback.scale_factor == 2.0
        assert callback.effective_batch_size == 4
        assert recorder.start_lr == pytest.approx(0.2)
        assert recorder.used == pytest.approx([0.2, 0.2])
        assert infos == [callback.summary]

    def test_accumulation_scheduler(self, ns: Namespace, tmp_path: Path) -> None:
        """``GradientAccumulationScheduler`` is matched with the namespace's class: epoch 0 ×1, epoch 1 ×3."""
        factors: list[float] = []

        class Watch(ns.pl.Callback):
            def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                factors.append(trainer.optimizers[0].param_groups[0]["lr"])

        callback = ns.callback_cls(rule="sqrt")
        accumulation = ns.pl.callbacks.GradientAccumulationScheduler({0: 1, 1: 4})
        trainer = ns.trainer(tmp_path, [callback, accumulation, Watch()], max_epochs=2, limit_train_batches=8)
        trainer.fit(ns.model_cls(batch_size=4))
        assert callback.effective_batch_size == 16
        assert callback.scale_factor == pytest.approx(2.0)
        assert factors == pytest.approx([0.1, 0.2])

    def test_cosine_scheduler_matches_fresh_run(self, ns: Namespace, tmp_path: Path) -> None:
        scaled, fresh = ns.recorder_cls(), ns.recorder_cls()
        ns.trainer(tmp_path, [ns.callback_cls(base_batch_size=2), scaled], max_steps=6).fit(
            ns.model_cls(batch_size=4, scheduler="cosine")
        )
        # Built at 2x the LR *and* 2x the floor: what the rescale promises to be equivalent to.
        model = ns.model_cls(batch_size=4, lr=0.2, scheduler="cosine")
        base_configure = model.configure_optimizers

        def configure() -> Any:
            config = base_configure()
            config["lr_scheduler"]["scheduler"].eta_min = 0.02
            return config

        model.configure_optimizers = configure
        ns.trainer(tmp_path, [fresh], max_steps=6).fit(model)
        assert len(scaled.used) == 6
        assert scaled.used == pytest.approx(fresh.used)

    def test_warmup(self, ns: Namespace, tmp_path: Path) -> None:
        callback, recorder = ns.callback_cls(base_batch_size=1, warmup_steps=4), ns.recorder_cls()
        ns.trainer(tmp_path, [callback, recorder], max_steps=6).fit(ns.model_cls(batch_size=4))
        # Factor 4, start from the unscaled LR (1/4): 0.1 → 0.4 over 4 steps, then 0.4.
        assert recorder.used == pytest.approx([0.1, 0.175, 0.25, 0.325, 0.4, 0.4])
        assert recorder.start_lr == pytest.approx(0.4)


class TestResume:
    def _fit(self, ns: Namespace, root: Path, max_steps: int, ckpt_path: Path | None = None) -> tuple[Any, Any]:
        callback, recorder = ns.callback_cls(base_batch_size=2, warmup_steps=4), ns.recorder_cls()
        trainer = ns.trainer(root, [callback, recorder], max_steps=max_steps)
        model = ns.model_cls(batch_size=4, scheduler="cosine")
        torch.manual_seed(0)
        trainer.fit(model, ckpt_path=ckpt_path)
        return trainer, recorder

    @pytest.mark.parametrize(
        ("first", "second"),
        list(itertools.product(NAMESPACES, NAMESPACES)),
    )
    def test_resume_matches_uninterrupted(self, first: str, second: str, tmp_path: Path) -> None:
        """Stop mid-warmup and resume (also in the other namespace): the LRs equal an uninterrupted run's."""
        ns_first, ns_second = _load(first), _load(second)
        _, whole = self._fit(ns_second, tmp_path / "whole", max_steps=6)
        trainer, part1 = self._fit(ns_first, tmp_path / "part", max_steps=2)
        ckpt = tmp_path / "part.ckpt"
        trainer.save_checkpoint(ckpt)
        resumed, part2 = self._fit(ns_second, tmp_path / "part", max_steps=6, ckpt_path=ckpt)
        assert part1.used + part2.used == pytest.approx(whole.used)
        callback = resumed.callbacks[0]
        assert callback.scale_factor == 2.0
        assert "(resumed, already scaled)" in callback.summary


def test_pytorch_lightning_cli_takes_only_its_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    """``pytorch_lightning.cli.LightningCLI`` refuses a ``lightning.pytorch`` callback: the reason the module exists."""
    pytest.importorskip("jsonargparse")
    pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.demos.boring_classes import BoringModel

    def cli(class_path: str) -> Any:
        args = ["--trainer.logger=false", f"--trainer.callbacks+={class_path}", "--trainer.callbacks.rule=sqrt"]
        return LightningCLI(BoringModel, run=False, args=args, save_config_callback=None)

    trainer = cli("lightning_lrbs.pytorch_lightning.BatchScalingCallback").trainer
    assert [type(c).__module__ for c in trainer.callbacks[:1]] == ["lightning_lrbs.pytorch_lightning"]
    assert trainer.callbacks[0].rule == "sqrt"
    with pytest.raises(SystemExit):
        cli("lightning_lrbs.BatchScalingCallback")
    assert "Import path does not correspond to a subclass of" in capsys.readouterr().err


def test_import_error_names_the_package() -> None:
    """Without ``pytorch_lightning`` the import fails with the install command, not a bare module name."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["pytorch_lightning"] = None  # as if it were not installed
        try:
            import lightning_lrbs.pytorch_lightning
        except ModuleNotFoundError as error:
            print(error.name, "|", error)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("pytorch_lightning | ")
    assert "pip install pytorch-lightning" in out
    assert "from lightning_lrbs import BatchScalingCallback" in out
