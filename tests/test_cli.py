"""``LightningCLI``: the callback from the command line and from YAML, clear errors, and the MNIST CLI example.

Real data for the example comes from ``$LRBS_DATA_DIR`` (default ``<repo>/../shared/data``); that test skips when it
is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("jsonargparse")

from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_lrbs import BatchScalingCallback  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DATA_DIR = Path(os.environ.get("LRBS_DATA_DIR", REPO.parent / "shared" / "data"))
ADD = "--trainer.callbacks+=lightning_lrbs.BatchScalingCallback"


class Model(BoringModel):
    """BoringModel with batches of 4 and no scheduler, so the LR after fit is the scaled one."""

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 64), batch_size=4)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _cli(tmp_path: Path, *args: str, run: bool = False) -> LightningCLI:
    quiet = [
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.limit_val_batches=0",
    ]
    if run:
        return LightningCLI(Model, args=["fit", *quiet, *args], save_config_callback=None)
    return LightningCLI(Model, run=False, args=[*quiet, *args], save_config_callback=None)


def _callback(cli: LightningCLI) -> BatchScalingCallback:
    found = [c for c in cli.trainer.callbacks if isinstance(c, BatchScalingCallback)]
    assert len(found) == 1
    return found[0]


class TestConfigure:
    def test_command_line(self, tmp_path: Path) -> None:
        cli = _cli(
            tmp_path,
            ADD,
            "--trainer.callbacks.rule=sqrt",
            "--trainer.callbacks.base_batch_size=2",
            "--trainer.callbacks.warmup_steps=10",
        )
        callback = _callback(cli)
        assert (callback.rule, callback.base_batch_size, callback.warmup_steps) == ("sqrt", 2, 10)

    def test_yaml_class_path_init_args(self, tmp_path: Path) -> None:
        config = tmp_path / "config.yaml"
        config.write_text(
            "trainer:\n"
            "  callbacks:\n"
            "    - class_path: lightning_lrbs.BatchScalingCallback\n"
            "      init_args:\n"
            "        base_batch_size: 1\n"
            "        rule: auto\n"
            "        warmup_epochs: 0.5\n"
            "        warmup_start_factor: 0.1\n"
            "        log_lr: false\n"
        )
        callback = _callback(_cli(tmp_path, f"--config={config}", "--trainer.callbacks.rule=linear"))
        assert callback.rule == "linear"  # the command line overrides the file
        assert (callback.base_batch_size, callback.warmup_epochs) == (1, 0.5)
        assert (callback.warmup_start_factor, callback.log_lr) == (0.1, False)

    def test_callable_rule_by_import_path(self, tmp_path: Path) -> None:
        import math

        callback = _callback(_cli(tmp_path, ADD, "--trainer.callbacks.rule=math.sqrt"))
        assert callback.rule is math.sqrt

    def test_fit_scales(self, tmp_path: Path) -> None:
        """``fit`` through the CLI: batch 4 × accumulation 2 over base 2 with ``sqrt`` is ×2."""
        cli = _cli(
            tmp_path,
            ADD,
            "--trainer.callbacks.base_batch_size=2",
            "--trainer.callbacks.rule=sqrt",
            "--trainer.accumulate_grad_batches=2",
            "--trainer.max_steps=2",
            run=True,
        )
        callback = _callback(cli)
        assert callback.effective_batch_size == 8
        assert callback.scale_factor == pytest.approx(2.0)
        assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.2)


class TestErrors:
    @pytest.mark.parametrize(
        ("arg", "expected"),
        [
            ("rule=cubic", ['Parser key "rule"', "'linear', 'sqrt', 'auto', 'none'", "cubic"]),
            ("base_batch_size=abc", ['Parser key "base_batch_size"', "abc"]),
            ("warmup_steps=1.5", ['Parser key "warmup_steps"', "1.5"]),
            ("no_such_option=1", ["no_such_option"]),
        ],
    )
    def test_bad_type_stops_the_parser(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], arg: str, expected: list[str]
    ) -> None:
        with pytest.raises(SystemExit) as exit_info:
            _cli(tmp_path, ADD, f"--trainer.callbacks.{arg}")
        assert exit_info.value.code != 0
        err = capsys.readouterr().err
        for text in expected:
            assert text in err

    @pytest.mark.parametrize(
        ("args", "match"),
        [
            (["base_batch_size=0"], "`base_batch_size` must be a positive int, got 0"),
            (["warmup_steps=-1"], "`warmup_steps` must be a non-negative int, got -1"),
            (["warmup_start_factor=2"], r"`warmup_start_factor` must be in \[0, 1\], got 2"),
            (["warmup_steps=3", "warmup_epochs=1"], "give either `warmup_steps` or `warmup_epochs`, not both"),
        ],
    )
    def test_bad_value_names_the_argument(self, tmp_path: Path, args: list[str], match: str) -> None:
        """Well-typed but invalid values reach the constructor, whose message names the argument and the value."""
        with pytest.raises(ValueError, match=match):
            _cli(tmp_path, ADD, *(f"--trainer.callbacks.{a}" for a in args))


class TestMNISTExample:
    def test_config_parses(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The shipped YAML is valid for the example's CLI: parsed and instantiated without data or training."""
        monkeypatch.syspath_prepend(str(EXAMPLES))
        monkeypatch.setenv("LRBS_DATA_DIR", str(tmp_path / "mnist"))
        import mnist_cli

        cli = mnist_cli.main(["--config", str(EXAMPLES / "mnist_cli.yaml"), "--trainer.logger=false"], run=False)
        callback = _callback(cli)
        assert (callback.base_batch_size, callback.rule, callback.warmup_epochs) == (8, "linear", 0.1)
        assert cli.datamodule.batch_size == 64
        assert Path(cli.datamodule.data_dir) == tmp_path / "mnist"  # from $LRBS_DATA_DIR
        assert cli.model.hparams.lr == 0.01

    @pytest.mark.slow
    def test_fit_on_real_mnist(self, tmp_path: Path) -> None:
        """The example as users run it: ``python examples/mnist_cli.py fit --config examples/mnist_cli.yaml``."""
        if not any(DATA_DIR.glob("**/train-images-idx3-ubyte*")):
            pytest.skip(f"real MNIST not found in {DATA_DIR}: set LRBS_DATA_DIR to a folder with the .gz files")
        command = [
            sys.executable,
            str(EXAMPLES / "mnist_cli.py"),
            "fit",
            f"--config={EXAMPLES / 'mnist_cli.yaml'}",
            f"--data.data_dir={DATA_DIR}",
            "--data.train_subset=512",
            "--data.batch_size=32",
            "--trainer.accumulate_grad_batches=2",
            "--trainer.accelerator=cpu",
            "--trainer.max_steps=4",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        output = done.stdout + done.stderr
        assert "effective batch 64 = 32 per device × 2 accumulation; base 8; rule linear → LR ×8" in output
        assert (tmp_path / "mnist_cli" / "version_0" / "config.yaml").is_file()  # SaveConfigCallback's copy
        assert (tmp_path / "mnist_cli" / "version_0" / "metrics.csv").is_file()
