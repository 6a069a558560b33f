"""The package as users get it: the installed wheel, its version, its files, and what importing it costs."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import lightning_lrbs

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(lightning_lrbs.__file__).resolve().parent


def test_version_is_single_sourced() -> None:
    about: dict[str, str] = {}
    exec((PACKAGE_DIR / "__about__.py").read_text(), about)  # noqa: S102 - our own file
    assert lightning_lrbs.__version__ == about["__version__"]
    Version(lightning_lrbs.__version__)  # a valid PEP 440 version
    try:
        installed = importlib.metadata.version("lightning-lrbs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("lightning-lrbs is not installed (running from src/)")
    assert installed == lightning_lrbs.__version__


@pytest.mark.skipif(os.environ.get("LRBS_EXPECT_INSTALLED") != "1", reason="only when testing the installed wheel")
class TestInstalledWheel:
    """``make test`` sets ``LRBS_EXPECT_INSTALLED=1``: the tests must run against the wheel, never ``src/``."""

    def test_imported_from_the_installed_wheel(self) -> None:
        assert not PACKAGE_DIR.is_relative_to(REPO / "src"), f"imported from {PACKAGE_DIR}, not the installed wheel"
        assert (REPO / "src") not in [Path(p).resolve() for p in sys.path if p]
        direct_url = importlib.metadata.distribution("lightning-lrbs").read_text("direct_url.json")
        editable = direct_url is not None and json.loads(direct_url).get("dir_info", {}).get("editable", False)
        assert not editable, "an editable install reads src/"

    def test_wheel_holds_every_source_file(self) -> None:
        source = REPO / "src" / "lightning_lrbs"
        if not source.is_dir():
            pytest.skip("no src/ beside the tests")
        wanted, shipped = _package_files(source), _package_files(PACKAGE_DIR)
        assert wanted <= shipped, f"missing from the wheel: {sorted(wanted - shipped)}"
        assert "py.typed" in shipped


@pytest.mark.skipif(os.environ.get("LRBS_EXPECT_OLDEST") != "1", reason="only in the oldest environment")
@pytest.mark.parametrize("name", ["lightning", "pytorch-lightning", "jsonargparse"])
def test_oldest_environment_runs_the_declared_floor(name: str) -> None:
    """``make test-oldest`` runs exactly the lower bounds declared in pyproject.toml, so neither can drift."""
    floors = set()
    for line in importlib.metadata.requires("lightning-lrbs") or []:
        requirement = Requirement(line)
        if requirement.name == name:
            floors |= {Version(spec.version) for spec in requirement.specifier if spec.operator == ">="}
    assert len(floors) == 1, f"{name}: expected one declared lower bound, got {sorted(floors)}"
    assert Version(importlib.metadata.version(name)) == floors.pop()


def _package_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".py", ".typed")}


def test_lightning_free_modules_do_not_import_lightning() -> None:
    """Raw PyTorch and Fabric users import the functions without paying for (or needing) the Lightning Trainer."""
    code = (
        "import sys\n"
        "import lightning_lrbs, lightning_lrbs.rules, lightning_lrbs.rescale, lightning_lrbs.warmup\n"
        "import lightning_lrbs.batch, lightning_lrbs.loop, lightning_lrbs.environment\n"
        "import lightning_lrbs.adascale, lightning_lrbs.batch_ramp, lightning_lrbs.capped, lightning_lrbs.noise\n"
        "import lightning_lrbs.sde, lightning_lrbs.sharding, lightning_lrbs.multipliers, lightning_lrbs.preview\n"
        "from lightning_lrbs import scale_for_batch, LinearWarmup, rescale_, scale_factor, effective_batch_size\n"
        "roots = {'lightning', 'pytorch_lightning', 'lightning_fabric', 'lightning_utilities', 'torchmetrics'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in roots))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_callback_class_reads_in_one_sitting() -> None:
    """Issue 19: the callback only builds the components and forwards Lightning's hooks to them (<= 300 lines)."""
    from lightning_lrbs.callback import BatchScalingCallback

    lines, _ = inspect.getsourcelines(BatchScalingCallback)
    assert len(lines) <= 300


def test_callback_is_loaded_lazily() -> None:
    from lightning_lrbs.callback import BatchScalingCallback

    assert lightning_lrbs.BatchScalingCallback is BatchScalingCallback
    assert "BatchScalingCallback" in lightning_lrbs.__all__
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = lightning_lrbs.Nope  # type: ignore[attr-defined]


def test_public_names_resolve() -> None:
    for name in lightning_lrbs.__all__:
        assert getattr(lightning_lrbs, name) is not None, name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rule": "adascale", "scale_invariant": True, "warmup_steps": 2},
        {"rule": "adascale", "batch_ramp": (8, 8, 64)},
        {"noise_scale": True, "batch_ramp": (8, 8, 64)},
        {},
    ],
)
def test_components_run_in_the_documented_order(kwargs: dict[str, Any]) -> None:
    """The numbered list of the callback module's docstring is the order every hook reaches the components."""
    import lightning_lrbs.callback as module

    documented = re.findall(r"^\d+\. :class:`~lightning_lrbs\.components\.(\w+)`", module.__doc__ or "", re.M)
    assert len(documented) == 10
    built = [type(c).__name__ for c in module.BatchScalingCallback(**kwargs)._components.items]
    assert built == [name for name in documented if name in built]  # in the documented order
    assert {"EffectiveBatch", "LRScaling", "TimeConstants", "Warmup", "StepLR", "Summary"} <= set(built)
