"""Shared test set-up.

Tests run from ``tests/`` with ``--import-mode=importlib`` against the installed wheel. Shared test helpers live in
``tests/lrbs_testing.py``; this file puts ``tests/`` on ``sys.path`` so test modules can import them.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

# Lightning < 2.2 names the AMP precision plugin `MixedPrecisionPlugin`; `make test-oldest` runs 2.1. Give the tests
# today's name there, so they import one name everywhere.
import lightning.pytorch.plugins.precision as _precision  # noqa: E402

if not hasattr(_precision, "MixedPrecision"):
    _precision.MixedPrecision = _precision.MixedPrecisionPlugin  # type: ignore[attr-defined]

import os  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lightning_lrbs.environment import OTHER_TOOLS, PREFIX  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread() -> object:
    """Tiny CPU fits run far faster on one thread than on two threads fighting over a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_lrbs_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``LRBS_*`` settings in the shell that runs the tests would add a callback to every Trainer built here (the
    plugin, ``lightning_lrbs.plugin``): each test starts without them, and sets the ones it tests."""
    for name in list(os.environ):
        if name.startswith(PREFIX) and name not in OTHER_TOOLS:
            monkeypatch.delenv(name)
