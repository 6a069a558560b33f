"""Settings from ``LRBS_*`` environment variables: the callback's arguments for a launch that does not edit the code.

Pure Python (``os``, ``re``, ``difflib``), no torch or Lightning import.

Every :class:`~lightning_lrbs.BatchScalingCallback` argument that is a number, a flag or a rule name has a variable
(and ``batch_ramp``, its three numbers separated by commas: ``LRBS_BATCH_RAMP=256,256,1000000``):
``LRBS_`` and the argument's name in capitals (``base_batch_size`` → ``LRBS_BASE_BATCH_SIZE``). The Trainer plugin
(:mod:`lightning_lrbs.plugin`) reads them through :func:`parse_environment` when a ``Trainer`` is built:

.. code-block:: bash

    LRBS_BASE_BATCH_SIZE=256 LRBS_RULE=sqrt LRBS_WARMUP_EPOCHS=1 torchrun --nproc-per-node 8 train.py

**What switches it on.** Any variable of :data:`VARIABLES` set; ``LRBS_ENABLE=1`` alone switches it on with the
default arguments, ``LRBS_ENABLE=0`` switches it off whatever else is set (the others are still checked).

**What is refused** (a ``ValueError`` naming the variable and the value): a variable that starts with ``LRBS_`` and is
none of :data:`VARIABLES`, ``LRBS_ENABLE`` or :data:`OTHER_TOOLS` (a misspelt ``LRBS_WARMUP_EPOCH`` would otherwise
be ignored without a word), an empty value, an integer that is not written as one (``1e3``, ``2.0``), a number that
is not finite, and a flag that is none of :data:`TRUE` / :data:`FALSE`. Ranges and rule names are checked by the
callback itself, as for arguments given in code.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "FALSE",
    "OTHER_TOOLS",
    "PREFIX",
    "SOURCE_NOTE",
    "SWITCH",
    "TRUE",
    "VARIABLES",
    "describe",
    "parse_bool",
    "parse_environment",
    "parse_value",
    "setting_variables",
    "variables_named_in",
]

Kind = Literal["int", "float", "bool", "rule", "ints"]

PREFIX = "LRBS_"

#: Switches the plugin on (with the default arguments) or off, whatever else is set.
SWITCH = "LRBS_ENABLE"

#: The ``BatchScalingCallback`` arguments that have a variable, and how its value is read.
_ARGUMENTS: tuple[tuple[str, Kind], ...] = (
    ("base_batch_size", "int"),
    ("rule", "rule"),
    ("batch_size", "int"),
    ("warmup_steps", "int"),
    ("warmup_epochs", "float"),
    ("warmup_start_factor", "float"),
    ("log_lr", "bool"),
    ("accumulation", "int"),
    ("scale_weight_decay", "bool"),
    ("scale_ema", "bool"),
    ("noise_scale", "bool"),
    ("noise_every_n_steps", "int"),
    ("noise_smoothing", "float"),
    ("scale_invariant", "bool"),
    ("batch_ramp", "ints"),
)
#: Each variable (``LRBS_`` and the argument in capitals), the argument it sets, and how its value is read.
VARIABLES: dict[str, tuple[str, Kind]] = {
    f"{PREFIX}{argument.upper()}": (argument, kind) for argument, kind in _ARGUMENTS
}

#: Variables of this repository's examples, tests and benchmarks: known, and never a setting of the callback.
OTHER_TOOLS: frozenset[str] = frozenset(
    {"LRBS_DATA_DIR", "LRBS_BENCH_CODE", "LRBS_EXPECT_INSTALLED", "LRBS_EXPECT_OLDEST"}
)

#: Flag spellings, compared without case and surrounding blanks.
TRUE: tuple[str, ...] = ("1", "true", "yes", "on")
FALSE: tuple[str, ...] = ("0", "false", "no", "off")

_INT = re.compile(r"[+-]?[0-9]+")


def parse_bool(name: str, value: str) -> bool:
    """A flag variable's value: one of :data:`TRUE` or :data:`FALSE`, in any case.

    Args:
        name: The variable, for the error message.
        value: Its value.

    Raises:
        ValueError: If ``value`` is neither, naming the variable, the spellings and the value.

    Example::

        >>> parse_bool("LRBS_LOG_LR", "Off")
        False
        >>> parse_bool("LRBS_LOG_LR", "nope")
        Traceback (most recent call last):
        ...
        ValueError: LRBS_LOG_LR must be one of 1, true, yes, on / 0, false, no, off (any case), got 'nope'
    """
    word = value.strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise ValueError(f"{name} must be one of {', '.join(TRUE)} / {', '.join(FALSE)} (any case), got {value!r}")


def parse_value(name: str, value: str) -> Any:
    """The value of one of :data:`VARIABLES`, as the type its argument takes (ranges are the callback's to check).

    Args:
        name: A key of :data:`VARIABLES`.
        value: The variable's value.

    Raises:
        ValueError: If the value is empty or does not parse as the argument's type, naming the variable, the argument,
            what it takes and the value.

    Example::

        >>> parse_value("LRBS_BASE_BATCH_SIZE", "256"), parse_value("LRBS_WARMUP_EPOCHS", "0.5")
        (256, 0.5)
        >>> parse_value("LRBS_WARMUP_STEPS", "1e3")
        Traceback (most recent call last):
        ...
        ValueError: LRBS_WARMUP_STEPS (`warmup_steps`) must be an integer written in digits, got '1e3'
    """
    argument, kind = VARIABLES[name]
    text = value.strip()
    if not text:
        raise ValueError(
            f"{name} (`{argument}`) is set to an empty value {value!r}: unset it for the default, or give a value"
        )
    if kind == "bool":
        return parse_bool(f"{name} (`{argument}`)", value)
    if kind == "int":
        if not _INT.fullmatch(text):
            raise ValueError(f"{name} (`{argument}`) must be an integer written in digits, got {value!r}")
        return int(text)
    if kind == "ints":  # batch_ramp: start,increment,samples
        parts = [part.strip() for part in text.split(",")]
        if not all(_INT.fullmatch(part) for part in parts):
            raise ValueError(
                f"{name} (`{argument}`) must be integers written in digits and separated by commas, got {value!r}"
            )
        return tuple(int(part) for part in parts)
    if kind == "float":
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{name} (`{argument}`) must be a finite number, got {value!r}")
        return number
    return text  # a rule name; the callback checks it


def setting_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``LRBS_*`` variables in ``environ`` that configure the callback (:data:`VARIABLES` and :data:`SWITCH`),
    sorted by name; :data:`OTHER_TOOLS` are left out.

    Raises:
        ValueError: If a variable starts with ``LRBS_`` and is not known, naming it, its value and the closest known
            name.

    Example::

        >>> setting_variables({"LRBS_RULE": "sqrt", "LRBS_DATA_DIR": "data", "PATH": "/bin"})
        {'LRBS_RULE': 'sqrt'}
        >>> setting_variables({"LRBS_WARMUP_EPOCH": "1"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: LRBS_WARMUP_EPOCH='1' is not a lightning-lrbs variable (did you mean LRBS_WARMUP_EPOCHS?); ...
    """
    known = {*VARIABLES, SWITCH}
    found = {}
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in OTHER_TOOLS:
            continue
        if name not in known:
            close = difflib.get_close_matches(name.removeprefix(PREFIX), [k.removeprefix(PREFIX) for k in known], n=1)
            hint = f" (did you mean {PREFIX}{close[0]}?)" if close else ""
            raise ValueError(
                f"{name}={environ[name]!r} is not a lightning-lrbs variable{hint}; the known ones are "
                f"{', '.join(sorted(known))}"
            )
        found[name] = environ[name]
    return found


def parse_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The ``BatchScalingCallback`` keyword arguments the ``LRBS_*`` variables ask for, or ``None`` when they ask for
    no callback.

    Args:
        environ: The environment to read; ``None`` reads ``os.environ``.

    Returns:
        ``None`` when no variable of :data:`VARIABLES` is set and :data:`SWITCH` is not true, or when :data:`SWITCH`
        is false; else the keyword arguments of the variables that are set (``{}`` for ``LRBS_ENABLE=1`` alone).

    Raises:
        ValueError: For an unknown ``LRBS_*`` variable or a value that does not parse (:func:`setting_variables`,
            :func:`parse_value`), also when :data:`SWITCH` is false.

    Example::

        >>> parse_environment({"LRBS_BASE_BATCH_SIZE": "256", "LRBS_RULE": "sqrt", "LRBS_WARMUP_EPOCHS": "1"})
        {'base_batch_size': 256, 'rule': 'sqrt', 'warmup_epochs': 1.0}
        >>> parse_environment({"LRBS_RULE": "sqrt", "LRBS_ENABLE": "0"}) is None
        True
        >>> parse_environment({"HOME": "/root"}) is None
        True
    """
    variables = setting_variables(os.environ if environ is None else environ)
    switch = variables.pop(SWITCH, None)
    enabled = bool(variables) if switch is None else parse_bool(SWITCH, switch)
    kwargs = {VARIABLES[name][0]: parse_value(name, value) for name, value in variables.items()}
    return kwargs if enabled else None


#: Appended to the first line of the summary of a callback the variables configured.
SOURCE_NOTE = "; from LRBS_* environment variables"


def describe(variables: Mapping[str, str]) -> str:
    """Variables as a shell would set them, for messages.

    Example::

        >>> describe({"LRBS_RULE": "sqrt", "LRBS_WARMUP_EPOCHS": "1"})
        "LRBS_RULE='sqrt' LRBS_WARMUP_EPOCHS='1'"
    """
    return " ".join(f"{name}={value!r}" for name, value in variables.items())


def variables_named_in(message: str, variables: Mapping[str, str]) -> dict[str, str]:
    """The variables whose argument an error message of the callback names (as ```rule``` or ```rule=...``).

    Example::

        >>> variables_named_in("`batch_size` must be a positive int, got 0", {"LRBS_BASE_BATCH_SIZE": "8",
        ...     "LRBS_BATCH_SIZE": "0"})
        {'LRBS_BATCH_SIZE': '0'}
    """
    return {
        name: value
        for name, value in variables.items()
        if name in VARIABLES and re.search(rf"`{VARIABLES[name][0]}(?!\w)", message)
    }
