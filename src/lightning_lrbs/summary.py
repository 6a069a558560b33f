"""The one-line summary of what scaling did, shared by the callback and :func:`~lightning_lrbs.loop.scale_for_batch`.

Pure Python over torch optimizers, no Lightning import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer

from lightning_lrbs.rescale import scalable_groups
from lightning_lrbs.rules import PER_OPTIMIZER_RULES, Rule, is_adaptive, resolve_rule, rule_name
from lightning_lrbs.sde import unknown_sde_optimizers

__all__ = [
    "OptimizerName",
    "describe_scaling",
    "format_factor",
    "lr_monitor_names",
    "lrbs_lr_names",
    "optimizer_names",
    "scaling_hparams",
    "scaling_notes",
    "scale_metrics",
    "scaling_warnings",
]


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
    names: Sequence[str] | None = None,
    details: Sequence[str] = (),
    tail: str = "",
    parallel: str | None = None,
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
        names: Each optimizer's name, as ``LearningRateMonitor`` gives it (:func:`optimizer_names`); default the
            class names. Factors print exactly where a short decimal is exact (:func:`format_factor`).
        details: Per optimizer, further changes to append to its entry (``betas (0.9, 0.999) → ...``), or ``""``.
        tail: A last part, e.g. ``EMA decay 0.999 → 0.996``.
        parallel: How the batch is spread when not every device is a data-parallel replica, in place of the devices
            and nodes: ``2 data-parallel (4 devices: tensor parallel 2)``.

    Example::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3.2)
        >>> describe_scaling(1024, [32], 2, 32, "linear", [opt], [32.0], devices=8, nodes=2, warmup_steps=500,
        ...                  start_factors=[1 / 32])
        'effective batch 1024 = 32 per device × 8 devices × 2 nodes × 2 accumulation; base 32; rule linear → LR ×32: SGD 0.1 → 3.2; warmup 500 steps from ×0.03125'
    """  # noqa: E501
    if all(b == per_rank[0] for b in per_rank):
        parts = [f"{per_rank[0]} per device"]
        if parallel is not None:
            parts.append(parallel)
        elif devices > 1 or nodes > 1:
            parts.append(f"{devices} device{'s' if devices != 1 else ''}")
        if nodes > 1:
            parts.append(f"{nodes} nodes")
    else:
        parts = ["(" + " + ".join(str(b) for b in per_rank) + f") over {'replicas' if parallel else 'ranks'}"]
        if parallel is not None:
            parts.append(parallel)
    if accumulation > 1:
        parts.append(f"{accumulation} accumulation")
    text = f"effective batch {effective} = {' × '.join(parts)}; base {base}; rule {rule_name(rule)}"
    per_optimizer = rule in PER_OPTIMIZER_RULES
    entries = []
    labels = list(names) if names is not None else [type(o).__name__ for o in optimizers]
    for index, (optimizer, factor, label) in enumerate(zip(optimizers, factors, labels)):
        before, after = [], []
        for group, active in zip(optimizer.param_groups, scalable_groups(optimizer)):
            value = group.get("initial_lr", group.get("lr"))
            if value is None:  # an opted-out group without a numeric LR (Adafactor's relative step)
                before.append("None")
                after.append("None (kept)")
                continue
            now = float(value)
            before.append(f"{now / factor:.4g}" if active else f"{now:.4g}")
            after.append(f"{now:.4g}" if active else f"{now:.4g} (kept)")
        how = f"{rule_name(resolve_rule(rule, optimizer))} ×{format_factor(factor)}: " if per_optimizer else ""
        lr = "lr " if index < len(details) and details[index] else ""
        entries.append(f"{label} {how}{lr}{', '.join(before)} → {', '.join(after)}")
        if lr:
            entries[-1] += f", {details[index]}"
    if per_optimizer:
        text += " → " + "; ".join(entries)
    else:
        text += f" → LR ×{format_factor(factors[0])}: " + "; ".join(entries)
    if warmup_steps and start_factors:
        starts = "/".join(f"×{format_factor(s)}" for s in dict.fromkeys(start_factors))
        text += f"; warmup {warmup_steps} steps from {starts}"
    if tail:
        text += f"; {tail}"
    return text


def scaling_notes(
    factors: Sequence[float],
    *,
    resumed_from: Sequence[float] | None = None,
    adascale_ratio: float | None = None,
    finder_base: int | None = None,
    nominal_base: int | None = None,
) -> str:
    """What the callback's summary adds to :func:`describe_scaling`'s line: the range of the AdaScale gain
    (``adascale_ratio``: :math:`B_\text{eff} / B_\text{base}`), a resume (``resumed_from``: the factors the
    checkpoint's LRs held, rescaled to ``factors`` if they differ) and the base batch an LR finder swept at.

    Example::

        >>> scaling_notes([4.0], resumed_from=[2.0], finder_base=64, nominal_base=32)
        ' (resumed at ×2, rescaled); the LRs come from the LR finder, which swept at batch 64: base 64, not 32'
    """
    text = ""
    if adascale_ratio is not None:
        text += f"; × AdaScale gain in [1, {adascale_ratio:.4g}]"
    if resumed_from is not None:
        rescaled = any(a != t for a, t in zip(resumed_from, factors))
        applied_text = "/".join(format_factor(a) for a in resumed_from)
        text += f" (resumed at ×{applied_text}, rescaled)" if rescaled else " (resumed, already scaled)"
    if finder_base is not None:
        text += f"; the LRs come from the LR finder, which swept at batch {finder_base}: base {finder_base}" + (
            f", not {nominal_base}" if nominal_base != finder_base else ""
        )
    return text


def format_factor(factor: float) -> str:
    """A factor as printed in the summary: the shortest decimal that is exact (up to 12 significant digits, so every
    power of two from 2**-12 to 2**39 prints exactly: ``0.0625``, ``32``), else 4 significant digits.

    Example::

        >>> format_factor(32.0), format_factor(0.0625), format_factor(1 / 32), format_factor(2**0.5)
        ('32', '0.0625', '0.03125', '1.414')
    """
    for digits in range(1, 13):
        text = f"{factor:.{digits}g}"
        if float(text) == factor:
            return text
    return f"{factor:.4g}"


@dataclass(frozen=True)
class OptimizerName:
    """How ``LearningRateMonitor`` names one optimizer.

    Attributes:
        label: ``Adam``, ``Adam-1`` (the second Adam), or the scheduler config's ``name``: for the summary.
        key: ``LearningRateMonitor``'s key stem: ``lr-Adam``, ``lr-Adam-1``, or the scheduler config's ``name``.
        groups: ``LearningRateMonitor``'s key of each param group: ``key`` alone for one unnamed group, else
            ``key/<group name>`` or ``key/pg<i>`` (1-based).
    """

    label: str
    key: str
    groups: tuple[str, ...]


def optimizer_names(
    optimizers: Sequence[Optimizer], scheduler_names: Sequence[tuple[object, str | None]] = ()
) -> list[OptimizerName]:
    """Name every optimizer as ``LearningRateMonitor`` does (``lightning/pytorch/callbacks/lr_monitor.py``, 2.6).

    ``LearningRateMonitor`` walks the scheduler configs first, in order, then the optimizers without a scheduler. An
    optimizer is ``lr-<Class>``, with ``-<n-1>`` appended when it is the ``n``-th (``n > 1``) of its class counted so
    far, or the config's ``name`` when it has one (configs with a name do not count; the suffix still applies).

    Args:
        optimizers: The optimizers, in the Trainer's order.
        scheduler_names: ``(optimizer, name or None)`` for each scheduler config, in the Trainer's order (the
            optimizer its scheduler is built on, ``config.name``).

    Returns:
        One :class:`OptimizerName` per optimizer, in the order of ``optimizers``. An optimizer with several scheduler
        configs takes the name of its first.

    Example::

        >>> import torch
        >>> p = [torch.nn.Parameter(torch.zeros(1))]
        >>> g, d = torch.optim.Adam(p), torch.optim.Adam(p)
        >>> [n.label for n in optimizer_names([g, d])], [n.label for n in optimizer_names([g, d], [(d, "disc")])]
        (['Adam', 'Adam-1'], ['Adam', 'disc'])
    """
    counts: dict[type, int] = {}
    found: dict[int, OptimizerName] = {}

    def name_one(optimizer: Any, config_name: str | None) -> None:
        cls = type(optimizer)
        if config_name is None:
            counts[cls] = counts.get(cls, 0) + 1
        generated = config_name is None
        key = config_name if config_name is not None else f"lr-{cls.__name__}"
        suffix = f"-{counts[cls] - 1}" if counts.get(cls, 0) > 1 else ""
        label = (cls.__name__ if generated else key) + suffix
        key += suffix
        groups = optimizer.param_groups
        if len(groups) > 1:
            keys = tuple(f"{key}/{group.get('name', f'pg{i}')}" for i, group in enumerate(groups, start=1))
        else:
            keys = tuple(f"{key}/{group['name']}" if group.get("name") else key for group in groups)
        found.setdefault(id(optimizer), OptimizerName(label, key, keys))

    seen: set[int] = set()
    for owner, config_name in scheduler_names:
        seen.add(id(owner))
        name_one(owner, config_name)
    for optimizer in optimizers:
        if id(optimizer) not in seen:
            name_one(optimizer, None)
    return [found[id(o)] for o in optimizers]


def lr_monitor_names(
    optimizers: Sequence[Optimizer], scheduled: Sequence[tuple[object, str | None]] = ()
) -> list[list[str]]:
    """The names ``LearningRateMonitor`` gives each param group of each optimizer (:attr:`OptimizerName.groups` of
    :func:`optimizer_names`), in the order of ``optimizers``; groups added after training started
    (``optimizer.add_param_group``) are named the same way.

    Example::

        >>> import torch
        >>> p = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
        >>> a = torch.optim.SGD([{"params": [p[0]]}, {"params": [p[1]], "name": "head"}], lr=0.1)
        >>> b = torch.optim.SGD([p[2]], lr=0.1)
        >>> lr_monitor_names([a, b]), lr_monitor_names([a, b], [(b, "cosine")])
        ([['lr-SGD/pg1', 'lr-SGD/head'], ['lr-SGD-1']], [['lr-SGD/pg1', 'lr-SGD/head'], ['cosine']])
    """
    return [list(name.groups) for name in optimizer_names(optimizers, scheduled)]


def lrbs_lr_names(
    optimizers: Sequence[Optimizer], scheduled: Sequence[tuple[object, str | None]] = ()
) -> list[list[str]]:
    """The names the callback logs each param group's LR under: :func:`lr_monitor_names` prefixed with ``lrbs/``.

    Example::

        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> single = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> named = torch.optim.Adam([{"params": [layer.weight], "name": "head"}, {"params": [layer.bias]}])
        >>> lrbs_lr_names([single, named])
        [['lrbs/lr-SGD'], ['lrbs/lr-Adam/head', 'lrbs/lr-Adam/pg2']]
    """
    return [[f"lrbs/{name}" for name in names] for names in lr_monitor_names(optimizers, scheduled)]


def scaling_warnings(
    rule: Rule, optimizers: Sequence[Optimizer], factors: Sequence[float], effective: int, base: int, who: str
) -> list[str]:
    """The warnings scaling deserves, shared by the callback and :func:`~lightning_lrbs.loop.scale_for_batch`.

    - The factor is 1 for every optimizer although the rule is not ``"none"``: nothing was scaled.
    - The linear rule scaled an adaptive optimizer (:func:`~lightning_lrbs.rules.is_adaptive`) by a factor other
      than 1: adaptive optimizers usually follow the square-root rule (Malladi et al. 2022, arXiv:2205.10287).
    - ``rule="sde"`` met an optimizer it knows no SDE rule for: only its LR follows, by the square-root rule.

    Args:
        rule: The rule as given. optimizers: The optimizers. factors: Each optimizer's factor.
        effective: The effective batch size. base: The base batch size.
        who: What is talking, to start each message (``"BatchScalingCallback"``, ``"scale_for_batch"``).

    Example::

        >>> import torch
        >>> adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        >>> print(*scaling_warnings("linear", [adam], [4.0], 32, 8, "scale_for_batch"))  # doctest: +ELLIPSIS
        scale_for_batch: the linear rule scales the adaptive optimizer(s) Adam; ... try rule='sqrt' or rule='auto'
        >>> print(*scaling_warnings("sqrt", [adam], [1.0], 8, 8, "scale_for_batch"))
        scale_for_batch: the LR factor is 1 (effective batch 8, base 8, rule sqrt): nothing to scale
    """
    messages = []
    unknown = unknown_sde_optimizers(optimizers) if rule == "sde" else []
    if unknown:
        messages.append(
            f"{who}: rule='sde' knows no SDE rule for {', '.join(unknown)}: their LR follows the square-root rule "
            "and nothing else of theirs is changed"
        )
    if rule not in ("none", "adascale") and all(f == 1.0 for f in factors):  # adascale: the gain comes per step
        messages.append(
            f"{who}: the LR factor is 1 (effective batch {effective}, base {base}, rule {rule_name(rule)}): "
            "nothing to scale"
        )
    if rule == "linear":
        adaptive = sorted({type(o).__name__ for o, f in zip(optimizers, factors) if is_adaptive(o) and f != 1.0})
        if adaptive:
            messages.append(
                f"{who}: the linear rule scales the adaptive optimizer(s) {', '.join(adaptive)}; "
                "adaptive optimizers usually follow the square-root rule (Malladi et al. 2022): "
                "try rule='sqrt' or rule='auto'"
            )
    return messages


def scaling_hparams(
    effective: int,
    per_device: int,
    accumulation: int,
    base: int,
    rule: Rule,
    optimizers: Sequence[Optimizer],
    factors: Sequence[float],
    *,
    names: Sequence[str] | None = None,
    devices: int = 1,
    nodes: int = 1,
    warmup_steps: int = 0,
    start_factors: Sequence[float] = (),
) -> dict[str, Any]:
    """The numbers of the scaling as flat hyperparameters for ``logger.log_hyperparams``, all under ``lrbs/``.

    ``lrbs/effective_batch_size``, ``lrbs/per_device_batch_size``, ``lrbs/devices``, ``lrbs/nodes``,
    ``lrbs/accumulation``, ``lrbs/base_batch_size``, ``lrbs/rule``, ``lrbs/warmup_steps``, and per optimizer
    ``lrbs/<name>/rule`` (``auto`` resolved), ``lrbs/<name>/scale_factor`` and ``lrbs/<name>/warmup_start_factor``
    (the latter only with a warmup). Add your own keys to the returned dict. The arguments are those of
    :func:`describe_scaling`, and:

    Args:
        names: Each optimizer's label (:func:`optimizer_names`); default the class names.

    Example::

        >>> import torch
        >>> sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> scaling_hparams(64, 8, 2, 16, "linear", [sgd], [4.0], devices=4)["lrbs/SGD/scale_factor"]
        4.0
    """
    labels = list(names) if names is not None else [type(o).__name__ for o in optimizers]
    params: dict[str, Any] = {
        "lrbs/effective_batch_size": effective,
        "lrbs/per_device_batch_size": per_device,
        "lrbs/devices": devices,
        "lrbs/nodes": nodes,
        "lrbs/accumulation": accumulation,
        "lrbs/base_batch_size": base,
        "lrbs/rule": rule_name(rule),
        "lrbs/warmup_steps": warmup_steps,
    }
    for index, (label, optimizer, factor) in enumerate(zip(labels, optimizers, factors)):
        params[f"lrbs/{label}/rule"] = rule_name(resolve_rule(rule, optimizer))
        params[f"lrbs/{label}/scale_factor"] = float(factor)
        if warmup_steps and index < len(start_factors):
            params[f"lrbs/{label}/warmup_start_factor"] = float(start_factors[index])
    return params


def scale_metrics(effective: int, names: Sequence[Sequence[str]], factors: Sequence[float]) -> dict[str, float]:
    """``lrbs/effective_batch_size`` and the factor of each optimizer: ``lrbs/scale_factor`` for one, else
    ``lrbs/scale_factor-<Optimizer>[-<n>]`` after its LR names ``names`` (``lrbs/lr-SGD-1/pg1`` gives
    ``lrbs/scale_factor-SGD-1``).

    Example::

        >>> scale_metrics(64, [["lrbs/lr-SGD"], ["lrbs/lr-Adam/pg1", "lrbs/lr-Adam/pg2"]], [4.0, 2.0])
        {'lrbs/effective_batch_size': 64.0, 'lrbs/scale_factor-SGD': 4.0, 'lrbs/scale_factor-Adam': 2.0}
    """
    metrics = {"lrbs/effective_batch_size": float(effective)}
    for group_names, factor in zip(names, factors):
        stem = group_names[0].split("/")[1].replace("lr-", "scale_factor-", 1)
        metrics["lrbs/scale_factor" if len(names) == 1 else f"lrbs/{stem}"] = factor
    return metrics
