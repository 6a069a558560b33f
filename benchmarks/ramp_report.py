"""Tables and figure of the batch-ramp study (``benchmarks/ramp.py --report``).

Reads ``ramp_<setting>.csv`` and ``trace_<setting>.csv`` from the output folder and writes ``ramp.png`` there and
``docs/ramp.md``: the hand-written ``notes.md`` of the same folder followed by the generated tables.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

NAMES = {
    "mlp": "MLP 784-128-10, SGD (base LR 0.2)",
    "mlp_momentum": "MLP 784-128-10, SGD momentum 0.9 (base LR 0.02)",
    "cnn": "MNIST CNN, SGD (base LR 0.141)",
    "cnn_adam": "MNIST CNN, Adam (base LR tuned here)",
    "mlp_seed1": "MLP 784-128-10, SGD, seed 1 (repeat; base LR 0.2)",
    "cnn_seed1": "MNIST CNN, SGD, seed 1 (repeat; base LR 0.141)",
    "cnn_adam_seed1": "MNIST CNN, Adam, seed 1 (repeat; base LR 0.004)",
}
GOAL_STEPS, GOAL_SAMPLES = 0.4, 1.1  # at least 60 % fewer steps than the base, at most 1.1x its samples
ORDER = {"base": 0, "fixed": 1, "ramp": 2, "noise": 3, "probe": 4, "search": 5}
COLORS = {"linear": "C0", "sqrt": "C2", "sde": "C1"}
#: The noise run drawn in the figure for each setting: the `simple` signal with the k it needs on the MLP (notes.md).
CHOSEN = dict.fromkeys(NAMES, "noise sqrt simple k=8 -> 128")


def load(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def num(row: dict[str, Any], key: str) -> float:
    return float(row[key])


def meets_goal(row: dict[str, Any]) -> bool:
    return (
        row["status"] == "reached"
        and num(row, "steps_vs_base") <= GOAL_STEPS
        and num(row, "samples_vs_base") <= GOAL_SAMPLES
    )


def settings_in(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows of each setting whose CSV in ``out_dir`` has its base run, in the order of :data:`NAMES`."""
    out = {}
    for name in NAMES:
        path = out_dir / f"ramp_{name}.csv"
        rows = load(path) if path.is_file() else []
        if any(r["kind"] == "base" and r["status"] == "reached" for r in rows):
            out[name] = rows
    return out


def fmt_ratio(row: dict[str, Any], key: str, ratio: str) -> str:
    if row["status"] != "reached":
        return {"diverged": "diverged", "slow": "> cap"}[row["status"]]
    return f"{num(row, key):,.0f} ({num(row, ratio):.3f}×)"


def fmt_acc(value: str) -> str:
    x = float(value)
    return "–" if math.isnan(x) else f"{100 * x:.1f}"


def batch_path(row: dict[str, Any]) -> str:
    """``32 → 64 @ 3,840 → ...``: the batch and the samples at which it took over."""
    parts = [p.split(":") for p in row["growth"].split()]
    if len(parts) <= 1:
        return parts[0][1] if parts else ""
    out = parts[0][1]
    for consumed, batch in parts[1:]:
        out += f" → {batch} @ {float(consumed):,.0f}"
    return out


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| run | rule | batch (→ at samples) | steps to target (× base) | samples to target (× base) "
        "| test acc. at equal samples (%) | test acc. at target (%) | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shown = sorted((r for r in rows if r["kind"] not in ("search", "probe")), key=lambda r: ORDER[r["kind"]])
    for r in shown:
        goal = "**yes**" if meets_goal(r) else "no" if r["kind"] != "base" else ""
        lines.append(
            f"| {r['label']} | {r['rule'] if r['kind'] != 'base' else ''} | {batch_path(r)} "
            f"| {fmt_ratio(r, 'steps', 'steps_vs_base')} | {fmt_ratio(r, 'samples', 'samples_vs_base')} "
            f"| {fmt_acc(r['test_acc'])} | {fmt_acc(r['acc_at_target'])} | {goal} |"
        )
    return lines


def search_line(rows: list[dict[str, Any]]) -> list[str]:
    search = sorted((r for r in rows if r["kind"] == "search"), key=lambda r: num(r, "lr"))
    if not search:
        return []
    text = ", ".join(
        f"{num(r, 'lr'):.3g}: {num(r, 'steps'):.0f}"
        if r["status"] == "reached"
        else f"{num(r, 'lr'):.3g}: {r['status']}"
        for r in search
    )
    return [f"Base LR search at batch 32 (LR: steps to target): {text}.", ""]


def wall_line(rows: list[dict[str, Any]]) -> str:
    total = sum(num(r, "wall_s") for r in rows)
    return f"{len(rows)} runs, {total / 60:.1f} min of training and evaluation (the sum of the runs' wall times)."


def traces(out_dir: Path, name: str) -> dict[str, list[dict[str, float]]]:
    path = out_dir / f"trace_{name}.csv"
    out: dict[str, list[dict[str, float]]] = {}
    if path.is_file():
        for r in load(path):
            out.setdefault(r["label"], []).append({k: float(v) for k, v in r.items() if k != "label"})
    return out


def primary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ramps with the constants fixed before the study: 32 + 32 over a quarter of the base's samples, to 128."""
    base = next(r for r in rows if r["kind"] == "base")
    constants = f"32+32/{int(int(base['budget']) * 0.25)}"
    return [r for r in rows if r["kind"] == "ramp" and r["constants"] == constants and r["target_batch"] == "128"]


def plotted(rows: list[dict[str, Any]], noise: str | None) -> list[dict[str, Any]]:
    """The runs of the figure: the base, the fixed target batch and the primary ramp under each rule, and the
    ``noise`` run chosen."""
    out = [r for r in rows if r["kind"] == "base"]
    out += [r for r in rows if r["kind"] == "fixed" and r["target_batch"] == "128"]
    out += primary(rows)
    out += [r for r in rows if r["label"] == noise]
    return out


def plot(out_dir: Path, settings: dict[str, list[dict[str, Any]]], path: Path, chosen: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(settings)
    fig, axes = plt.subplots(3, len(names), figsize=(4.2 * len(names), 10.5), squeeze=False)
    for col, name in enumerate(names):
        rows, trace = settings[name], traces(out_dir, name)
        base = next(r for r in rows if r["kind"] == "base")
        runs = plotted(rows, chosen.get(name))
        for r in runs:
            t = trace.get(r["label"], [])
            if not t:
                continue
            kind = r["kind"]
            color = "k" if kind == "base" else "C3" if kind == "noise" else COLORS.get(r["rule"], "C4")
            style = {"base": "-", "fixed": ":", "ramp": "-", "noise": "--"}[kind]
            label = r["label"] if kind != "base" else "base 32"
            for row, x_key in ((0, "step"), (1, "samples")):
                axes[row][col].plot([p[x_key] for p in t], [p["loss"] for p in t], style, color=color, lw=1.3,
                                    label=label, alpha=0.9)  # fmt: skip
            if kind in ("ramp", "noise"):
                axes[2][col].step([p["samples"] for p in t], [p["batch"] for p in t], style, where="post",
                                  color=color, lw=1.3, label=f"batch: {label}")  # fmt: skip
        probe = trace.get("probe 32 simple+hessian", [])
        for key, color, text in (("simple", "0.5", "B_simple"), ("hessian", "C4", "B_noise (Hessian)")):
            points = [(p["samples"], p[key]) for p in probe if 0 < p[key] < math.inf]
            if points:
                axes[2][col].plot(*zip(*points), color=color, lw=0.9, label=f"{text}, measured at batch 32")
        target = 0.1
        for row, x_label in ((0, "optimizer steps"), (1, "samples")):
            ax = axes[row][col]
            ax.axhline(target, color="grey", lw=0.8)
            ax.set_yscale("log")
            ax.set_ylim(0.05, 3)
            ax.set_xlabel(x_label)
            ax.set_ylabel("training loss (fixed subset)")
        axes[0][col].axvline(GOAL_STEPS * num(base, "steps"), color="grey", ls="--", lw=0.8)
        axes[1][col].axvline(GOAL_SAMPLES * num(base, "samples"), color="grey", ls="--", lw=0.8)
        axes[0][col].set_xlim(0, 1.3 * num(base, "steps"))
        axes[1][col].set_xlim(0, 2.0 * num(base, "samples"))
        axes[0][col].set_title(f"{NAMES[name]}\nloss against steps (dashed: 0.4 × base steps)", fontsize=8)
        axes[1][col].set_title("loss against samples (dashed: 1.1 × base samples)", fontsize=8)
        axes[2][col].set_title("batch, and the noise scales measured along the base run", fontsize=8)
        axes[2][col].set_xlabel("samples")
        axes[2][col].set_ylabel("samples per step")
        axes[2][col].set_yscale("log", base=2)
        axes[2][col].set_ylim(8, 8192)
        axes[2][col].legend(fontsize=6)
        axes[2][col].set_xlim(0, 2.0 * num(base, "samples"))
        axes[0][col].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: The summary's rows: a name and how to find the run in a setting (``None``: the primary ramp of that rule).
SUMMARY = [
    ("fixed 128, the package's rule (SGD: linear; Adam: sde)", "fixed 128 {rule}"),
    ("fixed 128, sqrt", "fixed 128 sqrt"),
    ("**ramp**, the package's rule", None),
    ("**ramp**, sqrt", None),
    ("noise `simple`, k = 8, sqrt", "noise sqrt simple k=8 -> 128"),
    ("noise `simple_lb`, k = 4, sqrt (choice of protocol 2)", "noise sqrt simple_lb k=4 -> 128"),
    ("noise `simple_lb`, k = 16, linear (choice of protocol 2)", "noise linear simple_lb k=16 -> 128"),
    ("noise `hessian`, k = 0.5, sqrt (choice of protocol 1)", "noise sqrt hessian k=0.5 -> 128"),
    ("noise `progress`, k = 0.4, linear (choice of protocol 1)", "noise linear progress k=0.4 -> 128"),
]


def summary(settings: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Steps and samples (× the base) of the main schedules in every setting; **bold**: meets the goal."""
    names = list(settings)
    lines = [
        "| schedule (target 128) | " + " | ".join(NAMES[n].split(" (")[0] for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, (title, pattern) in enumerate(SUMMARY):
        cells = []
        for name in names:
            rows = settings[name]
            package_rule = "sde" if name.startswith("cnn_adam") else "linear"
            if pattern is None:
                rule = package_rule if i == 2 else "sqrt"
                found = [r for r in primary(rows) if r["rule"] == rule]
            else:
                found = [r for r in rows if r["label"] == pattern.format(rule=package_rule)]
            if not found:
                cells.append("")
                continue
            r = found[0]
            if r["status"] != "reached":
                cells.append({"diverged": "diverged", "slow": "> cap"}[r["status"]])
                continue
            text = f"{num(r, 'steps_vs_base'):.3f}× / {num(r, 'samples_vs_base'):.2f}×"
            cells.append(f"**{text}**" if meets_goal(r) else text)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def render(out_dir: Path) -> str:
    """The page: ``notes.md`` of ``out_dir`` followed by the tables generated from its CSVs."""
    settings = settings_in(out_dir)
    notes = out_dir / "notes.md"
    lines = [notes.read_text().rstrip(), ""] if notes.is_file() else []
    lines += ["## Measured (generated by `python benchmarks/ramp.py --report`)", ""]
    lines += [
        f"Goal: at most {GOAL_STEPS}× the base batch's steps at no more than {GOAL_SAMPLES}× its samples. Ratios are "
        "to the base run of the same setting and seed; equal samples = the base run's samples to target "
        "(ceil(steps) × 32). Raw rows: `docs/ramp/ramp_<setting>.csv`; the loss curves: "
        "`docs/ramp/trace_<setting>.csv`.",
        "",
        "Steps / samples to the target loss, × the base batch's (**bold**: meets the goal):",
        "",
        *summary(settings),
        "",
    ]
    for name, rows in settings.items():
        met = [r["label"] for r in rows if r["kind"] in ("ramp", "noise", "fixed") and meets_goal(r)]
        lines += [f"### {NAMES[name]}", "", *search_line(rows), *table(rows), ""]
        lines += [f"Meets the goal: {', '.join(met) if met else 'none'}. {wall_line(rows)}", ""]
    return "\n".join(lines) + "\n"


def report(out_dir: Path, page: Path | None = None, chosen: dict[str, str] | None = None) -> str:
    """Write ``ramp.png`` into ``out_dir`` and the page (default ``<repo>/docs/ramp.md``); return the page."""
    settings = settings_in(out_dir)
    plot(out_dir, {k: v for k, v in settings.items() if "seed" not in k}, out_dir / "ramp.png", chosen or CHOSEN)
    text = render(out_dir)
    (page or out_dir.parent / "ramp.md").write_text(text)
    return text
