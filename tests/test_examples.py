"""The MNIST example and the scaling sweep, on small subsets of real MNIST.

Real data comes from ``$LRBS_DATA_DIR`` (default ``<repo>/../shared/data``): a folder holding the four official
MNIST ``.gz`` files, directly or in ``MNIST/raw/``. The tests skip when it is absent; nothing is downloaded.
"""

from __future__ import annotations

import csv
import importlib
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_lrbs import BatchScalingCallback

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DATA_DIR = Path(os.environ.get("LRBS_DATA_DIR", REPO.parent / "shared" / "data"))
UNREACHABLE_MIRROR = "http://127.0.0.1:9/"  # the discard port: refused at once, no network involved


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny CPU fits: 1 thread took 0.2 s where torch's default 2 took 7 s on 2 cores shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def examples() -> Iterator[tuple[ModuleType, ModuleType]]:
    """The ``mnist`` and ``scaling_sweep`` example scripts, imported from ``examples/`` (not a package)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("mnist"), importlib.import_module("scaling_sweep")
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def mnist(examples: tuple[ModuleType, ModuleType]) -> ModuleType:
    return examples[0]


@pytest.fixture(scope="module")
def sweep(examples: tuple[ModuleType, ModuleType]) -> ModuleType:
    return examples[1]


@pytest.fixture(scope="module")
def data_dir(mnist: ModuleType) -> Path:
    """The real-MNIST folder, or a skip that says how to provide it."""
    if mnist.find_mnist_files(DATA_DIR) is None:
        pytest.skip(
            f"real MNIST not found in {DATA_DIR}: set LRBS_DATA_DIR to a folder with the four official .gz files"
        )
    return DATA_DIR


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point torchvision's MNIST mirror list at a local port nothing listens on, so any download fails at once."""
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", [UNREACHABLE_MIRROR])


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``folder`` with its size, modification time and mode."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
    }


class TestData:
    def test_load_mnist_shapes_and_normalization(self, mnist: ModuleType, data_dir: Path) -> None:
        train_x, train_y, test_x, test_y = mnist.load_mnist(data_dir)
        assert train_x.shape == (60_000, 1, 28, 28)
        assert test_x.shape == (10_000, 1, 28, 28)
        assert train_x.dtype == torch.float32
        assert train_y.dtype == torch.int64
        assert set(train_y.unique().tolist()) == set(range(10))
        assert train_x.mean().item() == pytest.approx(0.0, abs=1e-3)
        assert train_x.std().item() == pytest.approx(1.0, abs=1e-3)
        assert train_y[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first labels of the training set

    def test_read_idx_rejects_a_wrong_magic(self, mnist: ModuleType, data_dir: Path) -> None:
        labels = mnist.find_mnist_files(data_dir)[1]
        with pytest.raises(ValueError, match="magic 2051: magic is 2049"):
            mnist.read_idx(labels, 2051)

    def test_read_only_gz_folder_is_read_without_writing(
        self, mnist: ModuleType, data_dir: Path, tmp_path: Path, offline: None
    ) -> None:
        flat = tmp_path / "only-gz"  # the four .gz files directly in the folder, nothing else, read-only
        flat.mkdir()
        for path in mnist.find_mnist_files(data_dir):
            shutil.copy2(path, flat / path.name)
        flat.chmod(stat.S_IRUSR | stat.S_IXUSR)
        before = {folder: _snapshot(folder) for folder in (flat, data_dir)}
        try:
            for folder in (flat, data_dir):
                datamodule = mnist.MNISTDataModule(folder, batch_size=32)
                datamodule.prepare_data()
                datamodule.setup("fit")
                assert len(datamodule.train_set) == 60_000
                assert len(datamodule.test_set) == 10_000
                # checked by listing, not by permissions: root may write into a read-only folder
                assert _snapshot(folder) == before[folder]
        finally:
            flat.chmod(stat.S_IRWXU)

    def test_offline_without_data_raises_one_clear_error(
        self, mnist: ModuleType, tmp_path: Path, offline: None
    ) -> None:
        datamodule = mnist.MNISTDataModule(tmp_path / "empty")
        with pytest.raises(mnist.MNISTNotFoundError, match="could not be downloaded") as err:
            datamodule.prepare_data()
        message = str(err.value)
        for name in mnist.MNIST_FILES:
            assert name in message
        assert "--data-dir" in message

    def test_main_offline_prints_the_error_without_a_traceback(
        self, mnist: ModuleType, tmp_path: Path, offline: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = ["--data-dir", str(tmp_path / "empty"), "--log-dir", str(tmp_path / "logs"), "--accelerator", "cpu"]
        assert mnist.main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(error_lines) == 1
        assert all(name in error_lines[0] for name in mnist.MNIST_FILES)
        assert "--data-dir" in error_lines[0]


class TestExample:
    def test_fit_on_a_real_subset_lowers_the_loss(self, mnist: ModuleType, data_dir: Path, tmp_path: Path) -> None:
        pl.seed_everything(0, workers=True)
        datamodule = mnist.MNISTDataModule(data_dir, batch_size=32, train_subset=1024, val_size=256, test_subset=1000)
        model = mnist.MNISTConvNet(lr=0.01)
        scaling = BatchScalingCallback(base_batch_size=8, rule="linear")
        trainer = pl.Trainer(
            default_root_dir=tmp_path,
            accelerator="cpu",
            devices=1,
            max_epochs=2,
            callbacks=[scaling],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        before = trainer.test(model, datamodule=datamodule, verbose=False)[0]
        trainer.fit(model, datamodule=datamodule)
        val_acc = float(trainer.callback_metrics["val_acc"])
        after = trainer.test(model, datamodule=datamodule, verbose=False)[0]
        assert scaling.effective_batch_size == 32
        assert scaling.scale_factor == pytest.approx(4.0)
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.04)
        assert len(datamodule.train_set) == 1024
        assert len(datamodule.val_set) == 256
        assert after["test_loss"] < 0.5 * before["test_loss"]
        assert after["test_acc"] > 0.7
        assert val_acc > 0.7

    def test_training_order_depends_on_seed_and_epoch_not_on_batch_size(
        self, mnist: ModuleType, data_dir: Path, tmp_path: Path
    ) -> None:
        class RecordImages(pl.Callback):
            def __init__(self) -> None:
                self.fingerprints: list[torch.Tensor] = []

            def on_train_batch_start(
                self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
            ) -> None:
                self.fingerprints.append(batch[0].flatten(1).sum(1))

        def order(batch_size: int, seed: int = 42) -> torch.Tensor:
            record = RecordImages()
            trainer = pl.Trainer(
                default_root_dir=tmp_path,
                accelerator="cpu",
                devices=1,
                max_epochs=2,
                limit_val_batches=0,
                callbacks=[record],
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            datamodule = mnist.MNISTDataModule(data_dir, batch_size=batch_size, train_subset=240, seed=seed)
            trainer.fit(mnist.MNISTConvNet(), datamodule=datamodule)
            return torch.cat(record.fingerprints)

        reference = order(8)
        assert reference.shape == (480,)
        # 240 = 30 x 8 = 10 x 24: full last batches; 56 and 7 leave a partial one, which makes a seeded RandomSampler
        # draw an extra permutation under Lightning and shifts the next epoch.
        for batch_size in (24, 56, 7):
            assert torch.equal(order(batch_size), reference)
        assert not torch.equal(reference[:240], reference[240:])  # a new order each epoch
        assert not torch.equal(order(8, seed=0), reference)

    def test_main_prints_summary_and_accuracy_and_logs_the_factor(
        self, mnist: ModuleType, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = [
            "--data-dir", str(data_dir), "--train-subset", "512", "--batch-size", "32", "--lr", "0.01",
            "--rule", "sqrt", "--accelerator", "cpu", "--devices", "1", "--no-progress-bar",
            "--log-dir", str(tmp_path),
        ]  # fmt: skip
        threads = torch.get_num_threads()
        assert mnist.main(argv) == 0
        assert torch.get_num_threads() == threads  # main restores what --threads changed
        out = capsys.readouterr().out.splitlines()
        assert out[-1].startswith("test accuracy: ")
        assert out[-2]  # the callback's summary line
        (metrics,) = tmp_path.rglob("metrics.csv")
        with metrics.open() as f:
            rows = list(csv.DictReader(f))
        factors = [float(r["lrbs/scale_factor"]) for r in rows if r.get("lrbs/scale_factor")]
        assert factors
        assert factors[0] == pytest.approx(2.0)  # sqrt(32 / 8)


class TestSweep:
    def test_curve_deviation(self, sweep: ModuleType) -> None:
        assert sweep.curve_deviation([1.0, 2.0], [1.0, 2.0]) == 0.0
        assert sweep.curve_deviation([1.5, 1.0, 9.0], [1.0, 2.0]) == pytest.approx(0.5)

    def test_tiny_sweep_writes_csv_png_and_table(self, sweep: ModuleType, data_dir: Path, tmp_path: Path) -> None:
        import matplotlib.image

        rules, ks, epochs, n_train, every = ["none", "linear", "sqrt"], [2, 3], 2, 480, 48
        argv = [
            "--data-dir", str(data_dir), "--output-dir", str(tmp_path), "--train-subset", str(n_train),
            "--test-subset", "500", "--epochs", str(epochs), "--ks", *map(str, ks), "--rules", *rules,
            "--log-every-samples", str(every), "--accelerator", "cpu",
        ]  # fmt: skip
        threads = torch.get_num_threads()
        assert sweep.main(argv) == 0
        assert torch.get_num_threads() == threads  # the sweep restores what it changed

        runs = {("base", 1)} | {(rule, k) for rule in rules for k in ks}
        with (tmp_path / "curves.csv").open() as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames or ()) == sweep.CSV_FIELDS
            rows = list(reader)
        assert {(r["rule"], int(r["k"])) for r in rows} == runs
        for rule, k in runs:
            train = [r for r in rows if (r["rule"], int(r["k"])) == (rule, k) and r["curve"] == "train"]
            test = [r for r in rows if (r["rule"], int(r["k"])) == (rule, k) and r["curve"] == "test"]
            assert [int(r["samples"]) for r in train] == list(range(every, epochs * n_train + 1, every))
            assert [float(r["epoch"]) for r in test] == [1.0, 2.0]
            assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in test)
            factor = {"base": 1.0, "none": 1.0, "linear": k, "sqrt": k**0.5}[rule]
            assert float(train[0]["lr"]) == pytest.approx(0.001 * factor, rel=1e-4)
            assert int(train[0]["batch_size"]) == 8 * k

        image = matplotlib.image.imread(tmp_path / "scaling.png")
        assert image.ndim == 3
        assert image.shape[1] > image.shape[0] > 100

        table = (tmp_path / "table.md").read_text().splitlines()
        start = table.index(next(line for line in table if line.startswith("| rule | k |")))
        body = []
        for line in table[start + 2 :]:
            if not line.startswith("|"):
                break
            body.append([cell.strip() for cell in line.strip("|").split("|")])
        assert [(cells[0], int(cells[1])) for cells in body] == [("base", 1)] + [(r, k) for r in rules for k in ks]
        assert body[0][-1] == "0.000"  # the base curve does not deviate from itself
