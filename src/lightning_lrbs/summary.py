"""The one-line summary of what scaling did, shared by the callback and :func:`~lightning_lrbs.loop.scale_for_batch`.

Pure Python over torch optimizers, no Lightning import.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer

from lightning_lrbs.rescale import scalable_groups
from lightning_lrbs.rules import Rule, resolve_rule, rule_name

__all__ = ["describe_scaling"]


def describe_scaling(
    effective: int,
    per_rank: Sequence[int],
    accumulation: int,
    base: int,
    rule: Rule,
    optimizers: Sequence[Optimizer],
    factors: Sequence[float],
    *,
    devices: int = 1,
    nodes: int = 1,
    warmup_steps: int = 0,
    start_factors: Sequence[float] = (),
    details: Sequence[str] = (),
    tail: str = "",
) -> str:
    """One line with the numbers: how the effective batch is made up, the rule, each optimizer's LRs before → after.

    Call it after the optimizers were rescaled by ``factors``: the LRs before are read back as ``lr / factor``
    (``initial_lr`` where a scheduler keeps it, so the line shows the schedule's starting LR).

    Args:
        effective: The effective batch size.
        per_rank: The batch size of each rank, or one size shared by all ranks.
        accumulation: Gradient-accumulation steps.
        base: The base batch size.
        rule: The rule as the user gave it (``"auto"`` also names the rule chosen per optimizer).
        optimizers: The rescaled optimizers.
        factors: The factor each optimizer now has.
        devices: Devices per node, shown when several.
        nodes: Nodes, shown when several.
        warmup_steps: Warmup length in optimizer steps (``0``: not shown).
        start_factors: The warmup start factor of each optimizer.
        details: Per optimizer, further changes to append to its entry (``betas (0.9, 0.999) → ...``), or ``""``.
        tail: A last part, e.g. ``EMA decay 0.999 → 0.996``.

    Example::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3.2)
        >>> describe_scaling(1024, [32], 2, 32, "linear", [opt], [32.0], devices=8, nodes=2, warmup_steps=500,
        ...                  start_factors=[1 / 32])
        'effective batch 1024 = 32 per device × 8 devices × 2 nodes × 2 accumulation; base 32; rule linear → LR ×32.00: SGD 0.1 → 3.2; warmup 500 steps from ×0.0312'
    """  # noqa: E501
    if all(b == per_rank[0] for b in per_rank):
        parts = [f"{per_rank[0]} per device"]
        if devices > 1 or nodes > 1:
            parts.append(f"{devices} device{'s' if devices != 1 else ''}")
        if nodes > 1:
            parts.append(f"{nodes} nodes")
    else:
        parts = ["(" + " + ".join(str(b) for b in per_rank) + ") over ranks"]
    if accumulation > 1:
        parts.append(f"{accumulation} accumulation")
    text = f"effective batch {effective} = {' × '.join(parts)}; base {base}; rule {rule_name(rule)}"
    per_optimizer = rule in ("auto", "sde")
    entries = []
    for index, (optimizer, factor) in enumerate(zip(optimizers, factors)):
        before, after = [], []
        for group, active in zip(optimizer.param_groups, scalable_groups(optimizer)):
            now = float(group.get("initial_lr", group["lr"]))
            before.append(f"{now / factor:.4g}" if active else f"{now:.4g}")
            after.append(f"{now:.4g}" if active else f"{now:.4g} (kept)")
        how = f"{rule_name(resolve_rule(rule, optimizer))} ×{factor:.2f}: " if per_optimizer else ""
        lr = "lr " if index < len(details) and details[index] else ""
        entries.append(f"{type(optimizer).__name__} {how}{lr}{', '.join(before)} → {', '.join(after)}")
        if lr:
            entries[-1] += f", {details[index]}"
    if per_optimizer:
        text += " → " + "; ".join(entries)
    else:
        text += f" → LR ×{factors[0]:.2f}: " + "; ".join(entries)
    if warmup_steps and start_factors:
        text += f"; warmup {warmup_steps} steps from " + "/".join(f"×{s:.3g}" for s in dict.fromkeys(start_factors))
    if tail:
        text += f"; {tail}"
    return text
