"""tests/scripts/plain_fit.py with a ``BatchScalingCallback`` in the code: the run a launch with ``LRBS_*`` variables
must equal (tests/test_plugin.py).

Usage: ``python coded_fit.py OUT_DIR DEVICES STRATEGY NUM_NODES ARGUMENTS_JSON``: the callback's keyword arguments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plain_fit import arguments, finish_distributed, main  # noqa: E402

from lightning_lrbs import BatchScalingCallback  # noqa: E402

if __name__ == "__main__":
    main(*arguments(sys.argv[:5]), callbacks=[BatchScalingCallback(**json.loads(sys.argv[5]))])
    finish_distributed()
