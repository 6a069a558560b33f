"""Numbers and flags from config systems: NumPy scalars and 0-d arrays count as Python ints and floats.

Pure Python, no NumPy, torch or Lightning import: values are recognised by the protocols they implement.

- An **int** is anything ``operator.index`` accepts (``int``, ``np.int64``, a 0-d integer array or tensor), except a
  bool (``True``, ``np.bool_``, a boolean array or tensor): a size of ``True`` is a mistake, not 1.
- A **float** is an int as above, or a real number (``float``, ``np.float32``, ``numbers.Real``), or a 0-d array or
  tensor of integer or floating dtype; bools are refused here too.
- A **flag** is a ``bool`` or ``np.bool_`` only: the string ``"false"`` is truthy in Python, so it is refused.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["as_float", "as_int", "check_bool", "is_bool", "optional"]


def is_bool(value: Any) -> bool:
    """Whether ``value`` is a boolean: ``bool``, ``np.bool_``, or a boolean array or tensor.

    Example::

        >>> is_bool(True), is_bool(1)
        (True, False)
    """
    if isinstance(value, bool):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and str(dtype) in ("bool", "torch.bool")


def as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer that is not a bool (NumPy and 0-d arrays included), else ``None``.

    Example::

        >>> as_int(3), as_int(True), as_int(2.0)
        (3, None, None)
    """
    if is_bool(value):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def as_float(value: Any) -> float | None:
    """``value`` as a Python float if it is a real number that is not a bool (NumPy and 0-d arrays included), else
    ``None``. Non-finite values are returned as they are: range checks are the caller's.

    Example::

        >>> as_float(0.5), as_float(2), as_float("0.5"), as_float(False)
        (0.5, 2.0, None, None)
    """
    if is_bool(value) or isinstance(value, (str, bytes)):
        return None
    integer = as_int(value)
    if integer is not None:
        return float(integer)
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "ndim", None) == 0 and getattr(value, "dtype", None) is not None:
        dtype = value.dtype
        if getattr(dtype, "kind", None) in ("f", "i", "u") or getattr(dtype, "is_floating_point", False):
            return float(value)
    return None


def check_bool(value: Any, name: str) -> bool:
    """Validate a flag: a ``bool`` (or ``np.bool_``), never a string such as ``"false"`` nor a number.

    Example::

        >>> check_bool("false", "log_lr")
        Traceback (most recent call last):
        ...
        ValueError: `log_lr` must be a bool (True or False), got 'false'
    """
    if isinstance(value, bool) or (is_bool(value) and getattr(value, "ndim", None) == 0):
        return bool(value)
    raise ValueError(f"`{name}` must be a bool (True or False), got {value!r}")


def optional(check: Callable[[Any, str], T], value: Any, name: str) -> T | None:
    """``None`` for ``None``, else ``check(value, name)`` (an argument that may be left unset).

    Example::

        >>> optional(check_bool, None, "flag"), optional(check_bool, True, "flag")
        (None, True)
    """
    return None if value is None else check(value, name)
