"""The one-line summary of what scaling did, shared by the callback and :func:`~lightning_lrbs.loop.scale_for_batch`.

Pure Python over torch optimizers, no Lightning import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer

from lightning_lrbs.rescale import scalable_groups
from lightning_lrbs.rules import Rule, resolve_rule, rule_name

__all__ = ["describe_scaling", "lr_monitor_names"]


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
    entries = []
    for optimizer, factor in zip(optimizers, factors):
        before, after = [], []
        for group, active in zip(optimizer.param_groups, scalable_groups(optimizer)):
            now = float(group.get("initial_lr", group["lr"]))
            before.append(f"{now / factor:.4g}" if active else f"{now:.4g}")
            after.append(f"{now:.4g}" if active else f"{now:.4g} (kept)")
        how = f"{rule_name(resolve_rule(rule, optimizer))} ×{factor:.2f}: " if rule == "auto" else ""
        entries.append(f"{type(optimizer).__name__} {how}{', '.join(before)} → {', '.join(after)}")
    if rule == "auto":
        text += " → " + "; ".join(entries)
    else:
        text += f" → LR ×{factors[0]:.2f}: " + "; ".join(entries)
    if warmup_steps and start_factors:
        text += f"; warmup {warmup_steps} steps from " + "/".join(f"×{s:.3g}" for s in dict.fromkeys(start_factors))
    return text


def lr_monitor_names(
    optimizers: Sequence[Optimizer], scheduled: Sequence[tuple[Optimizer, str | None]] = ()
) -> list[list[str]]:
    """The names ``LearningRateMonitor`` gives each param group of each optimizer, in the order of ``optimizers``.

    Follows ``lightning.pytorch.callbacks.LearningRateMonitor`` (``_find_names_from_schedulers``,
    ``_find_names_from_optimizers``, ``_add_prefix``, ``_add_suffix``): optimizers with a scheduler are named first, in
    the schedulers' order, as the scheduler config's ``name`` or ``lr-<Optimizer>``; then the others as
    ``lr-<Optimizer>``. Each unnamed use of an optimizer class counts, and its ``n``-th use (``n > 1``) gets ``-<n-1>``.
    Several param groups add ``/<group name>`` or ``/pg<i>`` (1-based); a single group adds ``/<group name>`` when
    it has one. Groups added after training started (``optimizer.add_param_group``) are named the same way.

    Args:
        optimizers: The optimizers, in the Trainer's order.
        scheduled: ``(optimizer, name)`` of each scheduler config in the Trainer's order; ``name`` is the config's
            ``"name"`` or ``None``.

    Example::

        >>> import torch
        >>> p = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
        >>> a = torch.optim.SGD([{"params": [p[0]]}, {"params": [p[1]], "name": "head"}], lr=0.1)
        >>> b = torch.optim.SGD([p[2]], lr=0.1)
        >>> lr_monitor_names([a, b]), lr_monitor_names([a, b], [(b, "cosine")])
        ([['lr-SGD/pg1', 'lr-SGD/head'], ['lr-SGD-1']], [['lr-SGD/pg1', 'lr-SGD/head'], ['cosine']])
    """
    counts: dict[type[Any], int] = {}
    names: dict[int, list[str]] = {}

    def add(optimizer: Optimizer, name: str, counted: bool) -> None:
        cls = type(optimizer)
        if counted:
            counts[cls] = counts.get(cls, 0) + 1
        if counts.get(cls, 0) > 1:
            name += f"-{counts[cls] - 1}"
        groups = optimizer.param_groups
        if len(groups) > 1:
            names[id(optimizer)] = [f"{name}/{g.get('name', f'pg{i}')}" for i, g in enumerate(groups, start=1)]
        else:
            names[id(optimizer)] = [f"{name}/{g['name']}" if g.get("name") else name for g in groups]

    for optimizer, config_name in scheduled:
        if id(optimizer) not in names:
            add(optimizer, config_name or f"lr-{type(optimizer).__name__}", counted=config_name is None)
        elif config_name is None:  # a second scheduler on one optimizer: LearningRateMonitor counts it again
            counts[type(optimizer)] = counts.get(type(optimizer), 0) + 1
    for optimizer in optimizers:
        if id(optimizer) not in names:
            add(optimizer, f"lr-{type(optimizer).__name__}", counted=True)
    return [names[id(optimizer)] for optimizer in optimizers]
