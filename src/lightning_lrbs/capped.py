r"""A scaling rule that saturates: linear (or square-root) at small batches, capped at :math:`C` times the base LR.

Pure PyTorch, no Lightning import: a callable rule for :func:`lightning_lrbs.scale_for_batch` and
:class:`lightning_lrbs.BatchScalingCallback` (``rule=capped_rule(optimizer)``).

For the batch-size ratio :math:`r = B_\text{eff} / B_\text{base}` the factor on the base LR is

.. math::

    f(r) = \left(\frac{1}{C^p} + \frac{1 - C^{-p}}{r}\right)^{-1/p}.

With :math:`p = 1` this is McCandlish et al. 2018 (*An Empirical Model of Large-Batch Training*, arXiv:1812.06162,
eq. 2.7), :math:`\epsilon_\text{opt}(B) = \epsilon_\max / (1 + B_\text{noise}/B)`, with the ceiling
:math:`\epsilon_\max = C\,\eta_\text{base}` and the noise scale eliminated by
:math:`\epsilon_\text{opt}(B_\text{base}) = \eta_\text{base}`: :math:`B_\text{noise} = (C - 1)\,B_\text{base}`, so
:math:`f` is AdaScale's gain (Johnson et al. 2020, arXiv:2007.05105) with a fixed noise scale. It is the linear rule
while :math:`r \ll C`, and tends to :math:`C` as :math:`r \to \infty`. With :math:`p = 2` the same holds for the
squares of the factors: the square-root rule (Malladi et al. 2022, arXiv:2205.10287) for adaptive optimizers while
:math:`r \ll C^2`, capped at :math:`C`.

The default ceilings (:data:`DEFAULT_CAPS`) are those docs/auto_lr.md (issue 21) chose on development settings (MNIST
MLPs, the LR tuned at batch 32, steps to a training loss of 0.1), where the best fixed LR stopped growing with the
batch at about 2.83× the base LR with plain SGD, 11.3× with SGD momentum 0.9 and 8× with Adam. On held-out settings
they stayed within 1.2× of the best fixed LR's steps for another seed, SGD momentum on another MLP and Adam on a CNN,
and **diverged** with plain SGD on the MNIST CNN from 16× the base batch on, whose ceiling is lower (2–2.83×). They are
measurements on small models, not constants of nature: the rule measures nothing, so a model whose stable LR range
ends below :math:`C` times its base LR needs a smaller ``cap``. Only Adam and momentum 0.9 were measured: other
adaptive optimizers (AdamW, RMSprop, ...) and other momenta get their family's ceiling unmeasured.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_lrbs.rules import is_adaptive

__all__ = ["DEFAULT_CAPS", "CappedRule", "capped_factor", "capped_rule", "optimizer_family"]

#: ``family: (C, p)`` chosen in docs/auto_lr.md: plain SGD, SGD with momentum, adaptive optimizers.
DEFAULT_CAPS: dict[str, tuple[float, float]] = {"sgd": (2.83, 1.0), "momentum": (11.3, 1.0), "adaptive": (8.0, 2.0)}


def _number(value: object, name: str, low: float = 0.0, inclusive: bool = False) -> float:
    """``value`` as a float if it is a finite number above ``low`` (or equal to it when ``inclusive``)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (value >= low if inclusive else value > low):  # type: ignore[operator]
        raise ValueError(f"`{name}` must be a finite number {'>=' if inclusive else '>'} {low:g}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def capped_factor(ratio: float, cap: float, exponent: float = 1.0) -> float:
    r"""The factor :math:`f(r) = (C^{-p} + (1 - C^{-p}) / r)^{-1/p}` on the base LR.

    Args:
        ratio: :math:`r = B_\text{eff} / B_\text{base}`, finite and positive.
        cap: :math:`C \ge 1`, the factor reached as :math:`r \to \infty`.
        exponent: :math:`p > 0`: 1 for SGD (linear below the cap), 2 for adaptive optimizers (square root).

    Raises:
        ValueError: If an argument is out of range.

    Example::

        >>> capped_factor(1.0, cap=2.83), capped_factor(4.0, cap=3.0)  # 1 / (1/3 + (2/3) / 4) = 2
        (1.0, 2.0)
        >>> round(capped_factor(4.0, cap=2.0, exponent=2.0), 12)  # (1/4 + (3/4) / 4) ** -0.5
        1.511857892037
    """
    r = _number(ratio, "ratio")
    c = _number(cap, "cap", low=1.0, inclusive=True)
    p = _number(exponent, "exponent")
    inverse = c**-p
    return float((inverse + (1.0 - inverse) / r) ** (-1.0 / p))


def optimizer_family(optimizer: torch.optim.Optimizer) -> str:
    """``"adaptive"`` (:func:`lightning_lrbs.rules.is_adaptive`), ``"momentum"`` (any group with momentum > 0) or
    ``"sgd"``.

    Example::

        >>> w = [torch.zeros(1, requires_grad=True)]
        >>> [optimizer_family(o) for o in (torch.optim.SGD(w, lr=0.1), torch.optim.SGD(w, lr=0.1, momentum=0.9))]
        ['sgd', 'momentum']
    """
    if is_adaptive(optimizer):
        return "adaptive"
    momentum = (float(group.get("momentum", 0.0) or 0.0) for group in optimizer.param_groups)
    return "momentum" if any(m > 0 for m in momentum) else "sgd"


class CappedRule:
    r"""The rule :math:`r \mapsto f(r)` of :func:`capped_factor` with fixed :math:`C` and :math:`p`, as a callable.

    Args:
        cap: :math:`C \ge 1`.
        exponent: :math:`p > 0`.

    Example::

        >>> rule = CappedRule(cap=3.0)
        >>> rule(4.0), rule.__name__, rule.state_dict()
        (2.0, 'capped(C=3, p=1)', {'cap': 3.0, 'exponent': 1.0})
    """

    def __init__(self, cap: float, exponent: float = 1.0) -> None:
        capped_factor(1.0, cap, exponent)  # validates
        self.cap = float(cap)
        self.exponent = float(exponent)

    @property
    def __name__(self) -> str:  # rules.rule_name and the summaries print it
        return f"capped(C={self.cap:g}, p={self.exponent:g})"

    def __call__(self, ratio: float) -> float:
        return capped_factor(ratio, self.cap, self.exponent)

    def __repr__(self) -> str:
        return f"CappedRule(cap={self.cap!r}, exponent={self.exponent!r})"

    def state_dict(self) -> dict[str, float]:
        """The constants, to log or save beside a checkpoint: the callback checkpoints the factor it applied, not the
        rule, so a run resumed with other constants moves its LRs to the new factor."""
        return {"cap": self.cap, "exponent": self.exponent}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the constants of :meth:`state_dict`."""
        cap = float(state_dict["cap"])
        exponent = float(state_dict.get("exponent", 1.0))
        capped_factor(1.0, cap, exponent)
        self.cap, self.exponent = cap, exponent


def capped_rule(
    optimizer: torch.optim.Optimizer | None = None, cap: float | None = None, exponent: float | None = None
) -> CappedRule:
    """A :class:`CappedRule` with :data:`DEFAULT_CAPS` for ``optimizer``'s family, unless ``cap`` / ``exponent`` are
    given.

    Raises:
        ValueError: If neither ``optimizer`` nor both constants are given.

    Example::

        >>> opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        >>> capped_rule(opt)
        CappedRule(cap=8.0, exponent=2.0)
    """
    if optimizer is None and (cap is None or exponent is None):
        raise ValueError("capped_rule needs the optimizer to choose its default cap, or both `cap` and `exponent`")
    default_cap, default_exponent = DEFAULT_CAPS[optimizer_family(optimizer)] if optimizer is not None else (1.0, 1.0)
    return CappedRule(default_cap if cap is None else cap, default_exponent if exponent is None else exponent)
