"""``python -m lightning_lrbs preview``: the LR schedule a fit with ``BatchScalingCallback`` will run, without training.

Give the LightningModule as an import path and its init arguments as JSON, the launch settings as flags, or read
them from a LightningCLI config (``--config``): ``model.class_path`` / ``model.init_args`` (or a plain ``model:``
mapping of init arguments, with the class given on the command line), ``trainer.devices``, ``trainer.num_nodes``,
``trainer.accumulate_grad_batches``, ``trainer.max_epochs``, ``trainer.max_steps``, ``trainer.limit_train_batches``
(an int: the batches per epoch), ``data.batch_size`` (or ``data.init_args.batch_size``), and the ``init_args`` of a
``BatchScalingCallback`` in ``trainer.callbacks``. Flags given on the command line win over the config.

Example::

    python -m lightning_lrbs preview examples.preview_model.CosineSGD --init-args '{"total_steps": 1000}' \\
        --batches-per-epoch 100 --max-epochs 10 --batch-size 32 --devices 8 --base-batch-size 64 \\
        --warmup-epochs 2 --plot docs/preview.png
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# settings, with the LightningCLI config key each one can come from
_TRAINER_KEYS = {
    "devices": "devices",
    "nodes": "num_nodes",
    "accumulation": "accumulate_grad_batches",
    "max_epochs": "max_epochs",
    "max_steps": "max_steps",
    "batches_per_epoch": "limit_train_batches",
}
_CALLBACK_KEYS = (
    "base_batch_size",
    "rule",
    "warmup_steps",
    "warmup_epochs",
    "warmup_start_factor",
    "batch_size",
    "batch_ramp",
)


def _import(path: str) -> Any:
    """``package.module.Name`` or ``package.module:Name``."""
    module_name, _, name = path.replace(":", ".").rpartition(".")
    if not module_name:
        raise SystemExit(f"error: {path!r} is not an import path such as package.module.ClassName")
    sys.path.insert(0, str(Path.cwd()))
    return getattr(importlib.import_module(module_name), name)


def _from_config(path: str) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """The model class path, its init arguments and the launch settings found in a LightningCLI config."""
    import yaml  # type: ignore[import-untyped]

    config = yaml.safe_load(Path(path).read_text()) or {}
    model = config.get("model") or {}
    class_path = model.get("class_path") if isinstance(model, dict) else None
    init_args = (model.get("init_args") or {}) if class_path else dict(model)
    trainer = config.get("trainer") or {}
    settings: dict[str, Any] = {}
    for setting, key in _TRAINER_KEYS.items():
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            settings[setting] = value
    data = config.get("data") or {}
    batch = data.get("batch_size", (data.get("init_args") or {}).get("batch_size"))
    if isinstance(batch, int):
        settings["batch_size"] = batch
    for callback in trainer.get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("BatchScalingCallback"):
            for key, value in (callback.get("init_args") or {}).items():
                if key in _CALLBACK_KEYS and value is not None:
                    settings[key] = value
    return class_path, init_args, settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lightning_lrbs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "preview",
        help="print the scaling summary and the LR of every param group at every optimizer step, without training",
        description="Replay a fit with BatchScalingCallback on a copy of the module's optimizers and schedulers: "
        "no forward, no backward, the module is not changed. Flags win over --config.",
    )
    p.add_argument("module", nargs="?", help="LightningModule class, e.g. package.module.MyModule")
    p.add_argument("--init-args", default=None, help="the module's init arguments as a JSON object")
    p.add_argument("--config", default=None, help="a LightningCLI YAML config to read the module and settings from")
    p.add_argument("--batches-per-epoch", type=int, help="train batches each device runs per epoch")
    p.add_argument("--max-epochs", type=int, help="epochs (or give --max-steps)")
    p.add_argument("--max-steps", type=int, help="optimizer steps to stop at")
    p.add_argument("--batch-size", type=int, help="per-device batch size")
    p.add_argument("--devices", type=int, help="devices per node (default 1)")
    p.add_argument("--nodes", type=int, help="nodes (default 1)")
    p.add_argument("--accumulation", type=int, help="accumulate_grad_batches (default 1)")
    p.add_argument("--base-batch-size", type=int, help="the batch size the LRs were tuned for (default: --batch-size)")
    p.add_argument("--rule", help="linear (default), sqrt, auto, none, sde, capped, or the import path of a rule")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--warmup-start-factor", type=float)
    p.add_argument("--batch-ramp", type=int, nargs=3, metavar=("START", "INCREMENT", "SAMPLES"), help="grow the batch")
    p.add_argument("--plot", default=None, help="write a PNG of the scheduled and applied LR against steps here")
    p.add_argument("--every", type=int, default=0, help="also print the LRs of every N-th step (0: none)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    class_path, init_args, settings = _from_config(args.config) if args.config else (None, {}, {})
    for name in ("batches_per_epoch", "max_epochs", "max_steps", "batch_size", "devices", "nodes", "accumulation"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    for name in ("base_batch_size", "rule", "warmup_steps", "warmup_epochs", "warmup_start_factor", "batch_ramp"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.init_args is not None:
        init_args = json.loads(args.init_args)
    target = args.module or class_path
    if target is None:
        raise SystemExit("error: give the LightningModule class (package.module.MyModule) or a --config with one")
    for needed, flag in (("batches_per_epoch", "--batches-per-epoch"), ("batch_size", "--batch-size")):
        if needed not in settings:
            raise SystemExit(f"error: give {flag} (or set it in --config)")
    from lightning_lrbs.rules import RULES

    rule = settings.get("rule", "linear")
    if isinstance(rule, str) and rule not in RULES:
        rule = _import(rule)

    from lightning_lrbs.preview import preview

    module = _import(target)(**init_args)
    try:
        result = preview(
            module,
            batches_per_epoch=settings["batches_per_epoch"],
            max_epochs=settings.get("max_epochs"),
            max_steps=settings.get("max_steps", -1),
            per_device_batch_size=settings["batch_size"],
            devices=settings.get("devices", 1),
            nodes=settings.get("nodes", 1),
            accumulation=settings.get("accumulation", 1),
            base_batch_size=settings.get("base_batch_size"),
            rule=rule,
            warmup_steps=settings.get("warmup_steps", 0),
            warmup_epochs=settings.get("warmup_epochs", 0.0),
            warmup_start_factor=settings.get("warmup_start_factor"),
            batch_ramp=settings.get("batch_ramp"),
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.summary)
    for note in result.notes:
        print(f"note: {note}")
    last = len(result.steps) - 1
    print(f"{len(result.steps)} optimizer steps; applied LR at steps 0 / {result.warmup_steps} / {last}:")
    for name, values in result.applied.items():
        marks = [values[min(i, last)] for i in (0, result.warmup_steps, last)]
        print(f"  {name}: " + " / ".join(f"{v:.6g}" for v in marks))
    if args.every > 0:
        for step in range(0, len(result.steps), args.every):
            print(f"step {step}: " + ", ".join(f"{n} {v[step]:.6g}" for n, v in result.applied.items()))
    if args.plot:
        title = f"{target.rpartition('.')[2]}: {result.summary.split(';')[0]}"
        print(f"wrote {result.plot(args.plot, title=title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
