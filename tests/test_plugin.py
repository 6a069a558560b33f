"""The Trainer plugin: ``LRBS_*`` environment variables give an unmodified project a ``BatchScalingCallback``.

Lightning calls the factories registered under ``lightning.pytorch.callbacks_factory`` / ``pytorch_lightning.
callbacks_factory`` for every Trainer; the tests set the variables with ``monkeypatch`` and build real Trainers (the
autouse fixture in conftest.py clears any the shell had). The slow tests launch tests/scripts/plain_fit.py, a script
that names no lightning-lrbs, in separate processes: on 2 DDP processes, under ``ddp_spawn``, and from a wheel built
and installed into a new virtual environment.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lrbs_testing import SCRIPTS, LRModel, flat, quiet_trainer, rank_results, script_env

from lightning_lrbs import BatchScalingCallback, plugin
from lightning_lrbs.environment import (
    FALSE,
    OTHER_TOOLS,
    SOURCE_NOTE,
    TRUE,
    VARIABLES,
    parse_bool,
    parse_environment,
    parse_value,
)
from lightning_lrbs.plugin import EnvironmentBatchScalingCallback

REPO = Path(__file__).resolve().parents[1]
NAMESPACES = ("lightning.pytorch", "pytorch_lightning")
GROUPS = {
    "lightning.pytorch.callbacks_factory": "lightning_lrbs.plugin:lightning_callbacks",
    "pytorch_lightning.callbacks_factory": "lightning_lrbs.plugin:pytorch_lightning_callbacks",
}
#: What the slow tests launch with, and the same as code.
SETTINGS = {"LRBS_BASE_BATCH_SIZE": "4", "LRBS_RULE": "sqrt", "LRBS_WARMUP_EPOCHS": "1"}
ARGUMENTS = {"base_batch_size": 4, "rule": "sqrt", "warmup_epochs": 1.0}


def _set(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def _namespace(name: str) -> tuple[ModuleType, type[Any]]:
    """The Lightning namespace and our callback class for it."""
    pl = pytest.importorskip(name)
    module = importlib.import_module(
        "lightning_lrbs" if name == "lightning.pytorch" else "lightning_lrbs.pytorch_lightning"
    )
    return pl, module.BatchScalingCallback


def _infos(monkeypatch: pytest.MonkeyPatch, pl: ModuleType) -> list[str]:
    """What the callback logs through ``rank_zero_info`` of the namespace its Trainer runs on."""
    infos: list[str] = []
    monkeypatch.setattr(pl.utilities.rank_zero, "rank_zero_info", infos.append)
    return infos


def _scaling(trainer: Any) -> list[BatchScalingCallback]:
    return [c for c in trainer.callbacks if isinstance(c, BatchScalingCallback)]


class TestVariables:
    """The pure parsing of :mod:`lightning_lrbs.environment`."""

    def test_every_argument_has_its_variable(self) -> None:
        """Each number, flag and rule argument; an argument of another kind would be named here as having none."""
        without_variable: set[str] = set()
        arguments = set(inspect.signature(BatchScalingCallback).parameters) - without_variable
        assert sorted(argument for argument, _ in VARIABLES.values()) == sorted(arguments)
        assert all(name == f"LRBS_{argument.upper()}" for name, (argument, _) in VARIABLES.items())

    @pytest.mark.parametrize(
        ("name", "value", "expected"),
        [
            ("LRBS_BASE_BATCH_SIZE", "256", 256),
            ("LRBS_BATCH_SIZE", " +8 ", 8),
            ("LRBS_WARMUP_STEPS", "0", 0),
            ("LRBS_WARMUP_EPOCHS", "0.5", 0.5),
            ("LRBS_WARMUP_START_FACTOR", "1", 1.0),
            ("LRBS_NOISE_SMOOTHING", "9.5e-1", 0.95),
            ("LRBS_RULE", "adascale", "adascale"),
            ("LRBS_LOG_LR", "Off", False),
            ("LRBS_SCALE_INVARIANT", "TRUE", True),
            ("LRBS_BATCH_RAMP", "32, 32,3000", (32, 32, 3000)),
        ],
    )
    def test_values_take_the_arguments_types(self, name: str, value: str, expected: object) -> None:
        parsed = parse_value(name, value)
        assert parsed == expected
        assert type(parsed) is type(expected)

    @pytest.mark.parametrize("word", [*TRUE, *FALSE])
    def test_flag_spellings_in_any_case(self, word: str) -> None:
        expected = word in TRUE
        assert parse_bool("LRBS_NOISE_SCALE", word) is expected
        assert parse_bool("LRBS_NOISE_SCALE", f" {word.upper()} ") is expected
        assert parse_bool("LRBS_NOISE_SCALE", word.capitalize()) is expected

    @pytest.mark.parametrize(
        ("name", "value", "message"),
        [
            ("LRBS_BASE_BATCH_SIZE", "256.0", "LRBS_BASE_BATCH_SIZE (`base_batch_size`) must be an integer written in"),
            ("LRBS_WARMUP_STEPS", "1e3", "LRBS_WARMUP_STEPS (`warmup_steps`) must be an integer written in digits"),
            ("LRBS_ACCUMULATION", "four", "LRBS_ACCUMULATION (`accumulation`) must be an integer written in digits"),
            ("LRBS_WARMUP_EPOCHS", "one", "LRBS_WARMUP_EPOCHS (`warmup_epochs`) must be a finite number"),
            ("LRBS_NOISE_SMOOTHING", "nan", "LRBS_NOISE_SMOOTHING (`noise_smoothing`) must be a finite number"),
            ("LRBS_WARMUP_START_FACTOR", "inf", "LRBS_WARMUP_START_FACTOR (`warmup_start_factor`) must be a finite"),
            ("LRBS_LOG_LR", "maybe", "LRBS_LOG_LR (`log_lr`) must be one of 1, true, yes, on / 0, false, no, off"),
            ("LRBS_NOISE_SCALE", "2", "LRBS_NOISE_SCALE (`noise_scale`) must be one of 1, true, yes, on"),
            ("LRBS_RULE", "", "LRBS_RULE (`rule`) is set to an empty value"),
            ("LRBS_WARMUP_STEPS", " ", "LRBS_WARMUP_STEPS (`warmup_steps`) is set to an empty value"),
            ("LRBS_BATCH_RAMP", "32;32;3000", "LRBS_BATCH_RAMP (`batch_ramp`) must be integers written in digits and"),
        ],
    )
    def test_a_value_that_does_not_parse_names_the_variable_and_the_value(
        self, name: str, value: str, message: str
    ) -> None:
        with pytest.raises(ValueError, match=re.escape(message)) as error:
            parse_environment({name: value})
        assert repr(value) in str(error.value)

    def test_an_unknown_variable_is_refused_with_the_closest_name(self) -> None:
        with pytest.raises(ValueError, match=re.escape("LRBS_WARMUP_EPOCH='1' is not a lightning-lrbs variable (did")):
            parse_environment({"LRBS_WARMUP_EPOCH": "1", "LRBS_RULE": "sqrt"})
        with pytest.raises(ValueError, match=r"LRBS_X='y' is not a lightning-lrbs variable; the known ones are "):
            parse_environment({"LRBS_X": "y"})

    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            ({}, None),
            ({"HOME": "x", "lrbs_rule": "sqrt"}, None),  # not ours: names are case-sensitive
            (dict.fromkeys(OTHER_TOOLS, "1"), None),  # this repository's examples, tests and benchmarks
            ({"LRBS_RULE": "sqrt"}, {"rule": "sqrt"}),
            ({"LRBS_ENABLE": "1"}, {}),
            ({"LRBS_ENABLE": "yes", "LRBS_WARMUP_STEPS": "5"}, {"warmup_steps": 5}),
            ({"LRBS_ENABLE": "0", "LRBS_RULE": "sqrt"}, None),
            ({"LRBS_ENABLE": "false"}, None),
        ],
    )
    def test_what_switches_it_on(self, environ: dict[str, str], expected: dict[str, Any] | None) -> None:
        assert parse_environment(environ) == expected

    @pytest.mark.parametrize(
        ("environ", "message"),
        [
            ({"LRBS_ENABLE": "0", "LRBS_RULES": "sqrt"}, "LRBS_RULES='sqrt' is not a lightning-lrbs variable"),
            ({"LRBS_ENABLE": "0", "LRBS_WARMUP_STEPS": "x"}, "LRBS_WARMUP_STEPS (`warmup_steps`) must be an integer"),
            ({"LRBS_ENABLE": "sometimes"}, "LRBS_ENABLE must be one of 1, true, yes, on / 0, false, no, off"),
        ],
    )
    def test_switched_off_still_checks_every_variable(self, environ: dict[str, str], message: str) -> None:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_environment(environ)


class TestTrainerConstruction:
    @pytest.mark.parametrize("namespace", NAMESPACES)
    def test_without_variables_lightning_gets_nothing(self, namespace: str, tmp_path: Path) -> None:
        pl, _ = _namespace(namespace)
        assert _scaling(quiet_trainer(tmp_path, pl)) == []
        assert plugin.lightning_callbacks() == []
        assert plugin.pytorch_lightning_callbacks() == []

    @pytest.mark.parametrize("namespace", NAMESPACES)
    def test_variables_add_one_callback_of_the_trainers_namespace(
        self, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pl, callback_cls = _namespace(namespace)
        variables = {**SETTINGS, "LRBS_LOG_LR": "no", "LRBS_NOISE_SCALE": "on", "LRBS_NOISE_EVERY_N_STEPS": "5"}
        _set(monkeypatch, variables)
        (callback,) = _scaling(quiet_trainer(tmp_path, pl))
        assert isinstance(callback, callback_cls)
        assert isinstance(callback, EnvironmentBatchScalingCallback)
        assert isinstance(callback, pl.Callback)
        assert callback._pl is pl
        assert (callback.base_batch_size, callback.rule, callback.warmup_epochs) == (4, "sqrt", 1.0)
        assert (callback.log_lr, callback.measure_noise, callback.noise_every_n_steps) == (False, True, 5)
        assert callback.variables == dict(sorted(variables.items()))

    @pytest.mark.parametrize(("group", "value"), GROUPS.items())
    def test_the_installed_wheel_registers_both_entry_points(self, group: str, value: str) -> None:
        (entry,) = [e for e in importlib.metadata.entry_points(group=group) if e.name == "lightning_lrbs"]
        assert entry.value == value
        assert entry.load() is getattr(plugin, value.split(":")[1])

    @pytest.mark.parametrize(
        ("variables", "message"),
        [
            ({"LRBS_WARMUP_EPOCH": "1"}, "LRBS_WARMUP_EPOCH='1' is not a lightning-lrbs variable (did you mean"),
            ({"LRBS_BASE_BATCH_SIZE": "2.0"}, "LRBS_BASE_BATCH_SIZE (`base_batch_size`) must be an integer written"),
            ({"LRBS_SCALE_EMA": "nope"}, "LRBS_SCALE_EMA (`scale_ema`) must be one of 1, true, yes, on / 0,"),
            (
                {"LRBS_BASE_BATCH_SIZE": "0"},
                "LRBS_BASE_BATCH_SIZE='0': `base_batch_size` must be a positive int, got 0",
            ),
            ({"LRBS_BATCH_SIZE": "-1", "LRBS_RULE": "sqrt"}, "LRBS_BATCH_SIZE='-1': `batch_size` must be a positive"),
            ({"LRBS_RULE": "cubic"}, "LRBS_RULE='cubic': `rule` must be one of 'linear', 'sqrt'"),
            ({"LRBS_RULE": "SQRT"}, "LRBS_RULE='SQRT': `rule` must be one of"),
            (
                {"LRBS_WARMUP_START_FACTOR": "2"},
                "LRBS_WARMUP_START_FACTOR='2': `warmup_start_factor` must be in [0, 1]",
            ),
            ({"LRBS_NOISE_SMOOTHING": "1"}, "LRBS_NOISE_SMOOTHING='1': `noise_smoothing` must be a number in [0, 1)"),
            ({"LRBS_NOISE_EVERY_N_STEPS": "0"}, "LRBS_NOISE_EVERY_N_STEPS='0': `noise_every_n_steps` must be a"),
            ({"LRBS_ACCUMULATION": "0"}, "LRBS_ACCUMULATION='0': `accumulation` must be a positive int"),
            (
                {"LRBS_WARMUP_STEPS": "10", "LRBS_WARMUP_EPOCHS": "1", "LRBS_RULE": "sqrt"},
                "LRBS_WARMUP_EPOCHS='1' LRBS_WARMUP_STEPS='10': give either `warmup_steps` or `warmup_epochs`",
            ),
            ({"LRBS_SCALE_INVARIANT": "1"}, "LRBS_SCALE_INVARIANT='1': `scale_invariant=True` counts AdaScale's"),
            ({"LRBS_BATCH_RAMP": "32,32"}, "LRBS_BATCH_RAMP='32,32': `batch_ramp` must be (start, increment, samples)"),
        ],
    )
    def test_a_bad_variable_fails_the_trainer_naming_it(
        self, variables: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _set(monkeypatch, variables)
        with pytest.raises(ValueError, match=re.escape(message)):
            quiet_trainer(tmp_path)

    def test_a_bad_variable_fails_a_pytorch_lightning_trainer(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pl, _ = _namespace("pytorch_lightning")
        _set(monkeypatch, {"LRBS_RULE": "cubic"})
        with pytest.raises(ValueError, match=re.escape("LRBS_RULE='cubic': `rule` must be one of")):
            quiet_trainer(tmp_path, pl)


class TestFit:
    def test_every_step_equals_the_callback_in_code(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        def fit(callbacks: list[Any]) -> tuple[LRModel, list[BatchScalingCallback]]:
            model = LRModel(batch_size=8, scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 3, gamma=0.5))
            trainer = quiet_trainer(tmp_path, callbacks=callbacks, max_epochs=3, accumulate_grad_batches=2)
            trainer.fit(model)
            return model, _scaling(trainer)

        code_model, code = fit([BatchScalingCallback(base_batch_size=4, rule="sqrt", warmup_steps=3)])
        _set(monkeypatch, {"LRBS_BASE_BATCH_SIZE": "4", "LRBS_RULE": "sqrt", "LRBS_WARMUP_STEPS": "3"})
        infos = _infos(monkeypatch, importlib.import_module("lightning.pytorch"))
        env_model, (env,) = fit([])
        assert isinstance(env, EnvironmentBatchScalingCallback)
        assert env.scale_factor == code[0].scale_factor == 2.0
        assert len(env_model.lrs) == 6
        assert flat(env_model.lrs) == flat(code_model.lrs)
        assert env.summary == code[0].summary + SOURCE_NOTE
        assert infos == [env.summary]

    @pytest.mark.parametrize("namespace", NAMESPACES)
    def test_same_weights_as_the_callback_in_code(
        self, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Lightning's own BoringModel (batch 1, SGD with StepLR), accumulating 2: LR ×2 and a warmup either way."""
        pl, callback_cls = _namespace(namespace)
        boring = importlib.import_module(f"{namespace}.demos.boring_classes")

        def fit(callbacks: list[Any]) -> tuple[list[torch.Tensor], str]:
            torch.manual_seed(0)
            model = boring.BoringModel()
            trainer = quiet_trainer(tmp_path, pl, callbacks=callbacks, accumulate_grad_batches=2)
            trainer.fit(model)
            (callback,) = _scaling(trainer)
            return [p.detach().clone() for p in model.parameters()], callback.summary

        code_weights, code_summary = fit([callback_cls(base_batch_size=1, warmup_steps=2)])
        _set(monkeypatch, {"LRBS_BASE_BATCH_SIZE": "1", "LRBS_WARMUP_STEPS": "2"})
        env_weights, env_summary = fit([])
        assert "LR ×2" in code_summary
        assert env_summary == code_summary + SOURCE_NOTE
        for env, code in zip(env_weights, code_weights):
            torch.testing.assert_close(env, code, rtol=0, atol=0)


class CodeScaling(BatchScalingCallback):
    """A project's own subclass, configured in its code."""


class CallbackModel(LRModel):
    """Returns the project's callback from ``configure_callbacks``."""

    def configure_callbacks(self) -> list[Any]:
        return [BatchScalingCallback(base_batch_size=1)]


class CLIModel(LRModel):
    """LRModel with one plain argument, for LightningCLI."""

    def __init__(self, batch_size: int = 4) -> None:
        super().__init__(batch_size=batch_size)


def _code_trainer(form: str, root: Path) -> tuple[Any, LRModel]:
    """A Trainer and a module whose BatchScalingCallback (linear, base 1: ×4 at batch 4) comes from the code."""
    quiet = {"max_steps": 2}
    if form == "trainer":
        return quiet_trainer(root, callbacks=[BatchScalingCallback(base_batch_size=1)], **quiet), LRModel(batch_size=4)
    if form == "subclass":
        return quiet_trainer(root, callbacks=[CodeScaling(base_batch_size=1)], **quiet), LRModel(batch_size=4)
    if form == "configure_callbacks":
        return quiet_trainer(root, **quiet), CallbackModel(batch_size=4)
    assert form == "cli"
    pytest.importorskip("jsonargparse")
    from lightning.pytorch.cli import LightningCLI

    args = [f"--trainer.{key}={value}" for key, value in {**quiet, "default_root_dir": root}.items()]
    args += ["--trainer.callbacks+=lightning_lrbs.BatchScalingCallback", "--trainer.callbacks.base_batch_size=1"]
    quiet_cli = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0"]
    cli = LightningCLI(CLIModel, run=False, args=[*args, *quiet_cli], save_config_callback=None)
    return cli.trainer, cli.model


class TestCodeWins:
    @pytest.mark.parametrize("form", ["trainer", "subclass", "configure_callbacks", "cli"])
    def test_the_environment_steps_aside_for_the_code(
        self, form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _set(monkeypatch, {"LRBS_RULE": "sqrt", "LRBS_BASE_BATCH_SIZE": "1"})  # ×2 if it were the environment's
        infos = _infos(monkeypatch, importlib.import_module("lightning.pytorch"))
        trainer, model = _code_trainer(form, tmp_path)  # no "more than one stateful callback" error
        trainer.fit(model)
        (callback,) = _scaling(trainer)
        assert not isinstance(callback, EnvironmentBatchScalingCallback)
        assert callback.scale_factor == 4.0
        assert flat(model.lrs) == pytest.approx([0.4, 0.2, 0.4, 0.2])
        aside = [line for line in infos if "from the code, which wins" in line]
        assert aside == [
            f"EnvironmentBatchScalingCallback: the Trainer already has a {type(callback).__name__} from the code, "
            "which wins; the LRBS_* environment variables (LRBS_BASE_BATCH_SIZE='1' LRBS_RULE='sqrt') are not used"
        ]
        assert infos == [*aside, callback.summary]  # the code's summary, without the environment's note
        trainer.save_checkpoint(tmp_path / "last.ckpt")
        states = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
        assert [key for key in states if "Scaling" in str(key)] == [type(callback).__name__]

    def test_the_environment_steps_aside_in_pytorch_lightning(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pl, callback_cls = _namespace("pytorch_lightning")
        boring = importlib.import_module("pytorch_lightning.demos.boring_classes")
        _set(monkeypatch, {"LRBS_RULE": "sqrt"})
        infos = _infos(monkeypatch, pl)
        trainer = quiet_trainer(tmp_path, pl, callbacks=[callback_cls(rule="none")], max_steps=2)
        trainer.fit(boring.BoringModel())
        (callback,) = _scaling(trainer)
        assert type(callback) is callback_cls
        assert len(infos) == 2
        assert "the Trainer already has a BatchScalingCallback from the code, which wins" in infos[0]

    def test_its_state_key_is_its_own_until_it_is_in_charge(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _set(monkeypatch, {"LRBS_RULE": "sqrt"})
        trainer = quiet_trainer(tmp_path, max_steps=1)
        (callback,) = _scaling(trainer)
        assert callback.state_key == "EnvironmentBatchScalingCallback"
        trainer.fit(BoringModel())
        assert callback.state_key == "BatchScalingCallback"


class TestResume:
    """A checkpoint written with the environment's callback resumes with the code's, and the other way round."""

    def _fit(self, source: str, root: Path, max_steps: int, monkeypatch: pytest.MonkeyPatch, **fit: Any) -> Any:
        settings = {"base_batch_size": 2, "rule": "sqrt", "warmup_steps": 4}
        with monkeypatch.context() as env:
            callbacks: list[Any] = []
            if source == "code":
                callbacks.append(BatchScalingCallback(**settings))
            else:
                _set(env, {f"LRBS_{key.upper()}": str(value) for key, value in settings.items()})
            trainer = quiet_trainer(
                root, callbacks=callbacks, max_steps=max_steps, max_epochs=None, limit_train_batches=1.0
            )
            model = LRModel(batch_size=8, scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10))
            trainer.fit(model, **fit)
        (callback,) = _scaling(trainer)
        assert isinstance(callback, EnvironmentBatchScalingCallback) == (source == "environment")
        return trainer, model, callback

    @pytest.mark.parametrize(("first", "second"), [("environment", "code"), ("code", "environment")])
    def test_resume_equals_the_uninterrupted_run(
        self, first: str, second: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _, whole, _ = self._fit(second, tmp_path / "whole", 6, monkeypatch)
        trainer, part1, _ = self._fit(first, tmp_path / "part", 2, monkeypatch)
        ckpt = tmp_path / "part.ckpt"
        trainer.save_checkpoint(ckpt)
        assert "BatchScalingCallback" in torch.load(ckpt, weights_only=False)["callbacks"]
        _, part2, resumed = self._fit(second, tmp_path / "part", 6, monkeypatch, ckpt_path=ckpt)
        assert len(part1.lrs) + len(part2.lrs) == 6
        assert flat(part1.lrs + part2.lrs) == pytest.approx(flat(whole.lrs), rel=1e-12)
        assert resumed.scale_factor == 2.0
        assert "(resumed, already scaled)" in resumed.summary


# ---------------------------------------------------------------------------------------------- separate processes
def _launch(python: Path | str, script: str, out: Path, *args: object, ranks: int = 1, **variables: str) -> Any:
    """Run ``tests/scripts/<script> OUT ARGS...`` with ``python`` and the variables; each rank's results and the output
    of every process (stdout and stderr)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [str(python), str(SCRIPTS / script), str(out), *map(str, args)]
    env = script_env(**variables)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:]
    return rank_results(out, ranks), done.stdout


def _expected_lrs(factor: float, start: float) -> list[float]:
    """plain_fit.py's LRs: BoringModel's 0.1, StepLR ×0.1 per epoch, 4 steps an epoch, scaled by ``factor`` after a
    warmup of the first epoch from ``start``."""
    return [0.1 * factor * (start + (1 - start) * step / 4) for step in range(4)] + [
        0.1 * factor * 0.1**epoch for epoch in (1, 2) for _ in range(4)
    ]


@pytest.mark.slow
def test_ddp_spawn_workers_scale_from_the_environment(tmp_path: Path) -> None:
    ranks, output = _launch(sys.executable, "plain_fit.py", tmp_path, 2, "ddp_spawn", ranks=2, **SETTINGS)
    for rank in ranks:
        assert rank["world_size"] == 2
        assert rank["callbacks"] == ["Record", "EnvironmentBatchScalingCallback"]
        assert flat(rank["lrs"]) == pytest.approx(_expected_lrs(2.0, 0.5), rel=1e-12)  # batch 16 / base 4: sqrt 4
    assert output.count(SOURCE_NOTE) == 1


@pytest.mark.slow
def test_torchrun_processes_scale_from_the_environment(tmp_path: Path) -> None:
    """``LRBS_* torchrun --nproc-per-node 2 train.py``, as docs/environment.md launches: every process inherits."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(SCRIPTS / "plain_fit.py"), str(tmp_path), "2", "ddp"]  # fmt: skip
    done = subprocess.run(
        command, env=script_env(**SETTINGS), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:]
    for rank in rank_results(tmp_path, 2):
        assert rank["world_size"] == 2
        assert rank["callbacks"] == ["Record", "EnvironmentBatchScalingCallback"]
        assert flat(rank["lrs"]) == pytest.approx(_expected_lrs(2.0, 0.5), rel=1e-12)
    assert done.stdout.count(SOURCE_NOTE) == 1


@pytest.mark.slow
def test_processes_launched_with_other_variables_all_stop(tmp_path: Path) -> None:
    """Two "nodes" of one process each, launched with different rules: each names what it was launched with."""
    env = script_env()
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPTS / "plain_fit.py"), str(tmp_path), "1", "ddp", "2"],
            env={**env, "NODE_RANK": str(node), "LRBS_RULE": rule},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node, rule in enumerate(("sqrt", "linear"))
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert all(proc.returncode != 0 for proc in procs)
    assert (
        "ValueError: the processes of this run disagree: rank 0 was launched with LRBS_RULE='sqrt', another"
        in (outputs[0])
    )
    assert "rank 1 was launched with LRBS_RULE='linear', rank 0 was launched with LRBS_RULE='sqrt'" in outputs[1]
    assert not list(tmp_path.glob("rank*.json"))


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two new virtual environments over the packages of the one running the tests, lightning-lrbs left out (symlinked
    into one folder that a ``.pth`` file names, as ``make test-oldest`` reuses them): ``plain`` has nothing more, plain
    Lightning; ``fresh`` has the wheel built from this checkout, installed by pip."""
    root = tmp_path_factory.mktemp("venvs")
    packages = root / "packages"
    packages.mkdir()
    for site in sorted({sysconfig.get_paths()[key] for key in ("purelib", "platlib")}):
        for entry in Path(site).iterdir():
            if not entry.name.startswith("lightning_lrbs") and entry.suffix != ".pth":
                (packages / entry.name).symlink_to(entry)
    build = [sys.executable, "-m", "build", "--wheel", "--outdir", str(root / "dist"), str(REPO)]
    subprocess.run(build, check=True, capture_output=True, timeout=600)
    (wheel,) = (root / "dist").glob("lightning_lrbs-*.whl")
    pythons = {}
    for name in ("plain", "fresh"):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / name)], check=True, timeout=120)
        python = root / name / "bin" / "python"
        purelib = _run(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
        (Path(purelib) / "_lrbs_test_packages.pth").write_text(f"{packages}\n")
        pythons[name] = python
    install = [pythons["fresh"], "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return pythons


def _run(python: Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.mark.slow
class TestFreshEnvironment:
    """The proof a user asks for: a wheel built from this checkout, pip-installed into a new virtual environment, scales
    an unmodified script (Lightning's BoringModel) launched with the variables exactly as the callback in code would,
    and leaves it as plain Lightning without them."""

    def test_the_wheel_is_what_the_new_environment_imports_and_registers(self, venvs: dict[str, Path]) -> None:
        code = (
            "import importlib.metadata as m, importlib.util, json\n"
            "spec = importlib.util.find_spec('lightning_lrbs')\n"
            f"groups = {list(GROUPS)!r}\n"
            "print(json.dumps({'origin': spec and spec.origin,\n"
            "    'entry_points': {g: [e.value for e in m.entry_points(group=g)] for g in groups}}))\n"
        )
        fresh, plain = (json.loads(_run(venvs[name], code)) for name in ("fresh", "plain"))
        assert Path(fresh["origin"]).is_relative_to(venvs["fresh"].parents[1])
        assert fresh["entry_points"] == {group: [value] for group, value in GROUPS.items()}
        assert plain == {"origin": None, "entry_points": {group: [] for group in GROUPS}}

    @pytest.mark.parametrize("devices", [1, 2])
    def test_variables_scale_every_step_as_the_callback_in_code(
        self, devices: int, venvs: dict[str, Path], tmp_path: Path
    ) -> None:
        fresh, strategy = venvs["fresh"], "ddp" if devices > 1 else "auto"
        env, output = _launch(fresh, "plain_fit.py", tmp_path / "env", devices, strategy, ranks=devices, **SETTINGS)
        code, _ = _launch(fresh, "coded_fit.py", tmp_path / "code", devices, strategy, 1, json.dumps(ARGUMENTS))
        factor = (8 * devices / 4) ** 0.5
        for rank in env:
            assert rank["world_size"] == devices
            assert rank["callbacks"] == ["Record", "EnvironmentBatchScalingCallback"]
            assert flat(rank["lrs"]) == pytest.approx(flat(code[0]["lrs"]), rel=1e-9, abs=0)
            assert flat(rank["lrs"]) == pytest.approx(_expected_lrs(factor, 1 / factor), rel=1e-12)
        assert code[0]["callbacks"] == ["BatchScalingCallback", "Record"]
        assert output.count(SOURCE_NOTE) == 1  # the summary, from rank zero only
        assert (
            f"LR ×{factor:.4g}: SGD 0.1 → {0.1 * factor:.4g}; warmup 4 steps from ×{1 / factor:.4g}" + SOURCE_NOTE
            in (output)
        )

    def test_without_variables_it_trains_as_plain_lightning(self, venvs: dict[str, Path], tmp_path: Path) -> None:
        (fresh,), _ = _launch(venvs["fresh"], "plain_fit.py", tmp_path / "fresh", 1)
        (plain,), _ = _launch(venvs["plain"], "plain_fit.py", tmp_path / "plain", 1)
        assert fresh == plain
        assert fresh["callbacks"] == ["Record"]
        assert flat(fresh["lrs"]) == pytest.approx(_expected_lrs(1.0, 1.0), rel=1e-12)
