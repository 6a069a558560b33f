"""Tables, McCandlish fit and figure of the batch-size study (``benchmarks/frontier.py --report``).

Reads ``frontier_<model>.csv`` from the output folder and writes ``frontier.png`` there and ``docs/frontier.md``:
the hand-written ``notes.md`` of the same folder followed by the generated tables.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RULES = ("linear", "linear + warmup", "sqrt", "adascale")
MODELS = {
    "mlp": "MLP 784-128-10, SGD",
    "cnn": "MNIST CNN (examples/mnist.py), SGD",
    "mlp_momentum": "MLP 784-128-10, SGD momentum 0.9",
    "mlp_seed1": "MLP 784-128-10, SGD, seed 1 (repeat at S = 1, 4, 16, 64, 256)",
}
PLOTTED = ("mlp", "cnn", "mlp_momentum")
TOLERANCE = 1.1


@dataclass
class Point:
    batch: int
    scale: int
    factor: float
    status: str
    steps: float
    test_acc: float
    acc_at_target: float
    cap: int
    noise_scale: float


def load(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def point(row: dict[str, Any], base_lr: float) -> Point:
    factor = float(row["factor"]) if row["kind"] == "adascale" else float(row["lr"]) / base_lr
    return Point(
        int(row["batch"]), int(row["scale"]), factor, row["status"], float(row["steps"]), float(row["test_acc"]),
        float(row["acc_at_target"]), int(row["cap"]), float(row["noise_scale"]),
    )  # fmt: skip


def key(p: Point) -> float:
    return p.steps if p.status == "reached" else math.inf


def analyse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Frontier, rules and grids per batch."""
    base_rows = [r for r in rows if r["kind"] == "linear" and int(r["scale"]) == 1]
    if not base_rows:
        raise ValueError("no base run (linear at S = 1) in the CSV")
    base_lr = float(base_rows[0]["lr"])
    batches = sorted(
        {int(r["batch"]) for r in rows if any(q["batch"] == r["batch"] and q["kind"] == "linear" for q in rows)}
    )
    frontier: dict[int, Point] = {}
    grids: dict[int, list[Point]] = {}
    rules: dict[str, dict[int, Point]] = {rule: {} for rule in RULES}
    for batch in batches:
        grid = sorted(
            (point(r, base_lr) for r in rows if int(r["batch"]) == batch and r["kind"] == "grid"),
            key=lambda p: p.factor,
        )
        grids[batch] = grid
        frontier[batch] = min(grid, key=key)
        for r in rows:
            if int(r["batch"]) == batch and r["kind"] in rules:
                rules[r["kind"]][batch] = point(r, base_lr)
        if batch == batches[0] and "linear" in rules and batch in rules["linear"]:
            linear = rules["linear"][batch]  # S = 1: every rule's LR is the base LR, found by the base search
            rules["linear + warmup"].setdefault(batch, linear)  # nothing to warm up from
            if math.isnan(frontier[batch].test_acc) and math.isclose(frontier[batch].factor, linear.factor):
                frontier[batch].test_acc = linear.test_acc  # the base search ran without a budget yet
    return {"base_lr": base_lr, "batches": batches, "frontier": frontier, "grids": grids, "rules": rules}


def fit_mccandlish(batches: Sequence[int], steps: Sequence[float]) -> tuple[float, float]:
    """Least squares in log space of ``S(B) = S_min (1 + B_crit / B)``: for each ``B_crit`` on a fine log grid the best
    ``log S_min`` is the mean residual; the pair with the smallest squared error is returned."""
    best = (math.inf, 0.0, 0.0)
    for i in range(0, 1201):
        b_crit = 10 ** (i / 200)  # 1 ... 1e6
        resid = [math.log(s) - math.log(1 + b_crit / b) for b, s in zip(batches, steps, strict=True)]
        log_s_min = sum(resid) / len(resid)
        err = sum((r - log_s_min) ** 2 for r in resid)
        if err < best[0]:
            best = (err, math.exp(log_s_min), b_crit)
    return best[1], best[2]


def fmt_steps(p: Point | None) -> str:
    if p is None:
        return "–"
    if p.status == "reached":
        return f"{p.steps:.0f}"
    return "diverged" if p.status == "diverged" else f"> {p.cap}"


def fmt_acc(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def within(a: dict[str, Any], rule: str) -> tuple[int | None, int | None, list[int]]:
    """For ``rule``: the largest S up to which (every measured S from 1 on) it needs at most 1.1x the frontier's
    steps, the first S where it does not, and every S where it does."""
    ok: int | None = None
    first_miss: int | None = None
    good = []
    for batch in a["batches"]:
        p, f = a["rules"][rule].get(batch), a["frontier"][batch]
        if p is None:
            continue
        if key(p) <= TOLERANCE * key(f):
            good.append(p.scale)
            if first_miss is None:
                ok = p.scale
        elif first_miss is None:
            first_miss = p.scale
    return ok, first_miss, good


def table(a: dict[str, Any], model: str) -> list[str]:
    rules = [r for r in RULES if a["rules"][r]]
    head = ["S", "batch", "frontier LR (×)", "frontier steps"] + [f"{r} steps (×)" for r in rules]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for batch in a["batches"]:
        f = a["frontier"][batch]
        cells = [str(f.scale), str(batch), f"{a['base_lr'] * f.factor:.3g} (×{f.factor:.3g})", fmt_steps(f)]
        for rule in rules:
            p = a["rules"][rule].get(batch)
            if p is None:
                cells.append("–")
                continue
            ratio = f" ({key(p) / key(f):.2f}×)" if p.status == "reached" and f.status == "reached" else ""
            cells.append(f"{fmt_steps(p)}{ratio} @×{p.factor:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def acc_table(a: dict[str, Any]) -> list[str]:
    rules = [r for r in RULES if a["rules"][r]]
    head = ["S", "frontier"] + rules
    lines = [
        "Test accuracy (%) after the sample budget / when the target loss was reached:",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for batch in a["batches"]:
        f = a["frontier"][batch]
        cells = [str(f.scale), f"{fmt_acc(f.test_acc)} / {fmt_acc(f.acc_at_target)}"]
        for rule in rules:
            p = a["rules"][rule].get(batch)
            cells.append("–" if p is None else f"{fmt_acc(p.test_acc)} / {fmt_acc(p.acc_at_target)}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def grid_lines(a: dict[str, Any]) -> list[str]:
    out = []
    for batch in a["batches"]:
        pts = ", ".join(f"×{p.factor:.3g}: {fmt_steps(p)}" for p in a["grids"][batch])
        out.append(f"- B = {batch}: {pts}")
    return out


def plot(analyses: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(analyses), 2, figsize=(11, 4.2 * len(analyses)), squeeze=False)
    styles = {"linear": ("C0", "o"), "linear + warmup": ("C1", "s"), "sqrt": ("C2", "^"), "adascale": ("C3", "D")}
    for row, (model, a) in enumerate(analyses.items()):
        ax, ax2 = axes[row]
        batches = a["batches"]
        fb = [b for b in batches if a["frontier"][b].status == "reached"]
        ax.plot(fb, [a["frontier"][b].steps for b in fb], "k-", lw=2.5, label="frontier (best fixed LR)")
        if len(fb) >= 3:
            s_min, b_crit = fit_mccandlish(fb, [a["frontier"][b].steps for b in fb])
            xs = [fb[0] * (fb[-1] / fb[0]) ** (i / 50) for i in range(51)]
            ax.plot(xs, [s_min * (1 + b_crit / x) for x in xs], "k:", lw=1, label=f"fit: B_crit ≈ {b_crit:.0f}")
        for rule, (color, marker) in styles.items():
            pts = a["rules"][rule]
            if not pts:
                continue
            reached = [b for b in batches if b in pts and pts[b].status == "reached"]
            ax.plot(reached, [pts[b].steps for b in reached], color=color, marker=marker, label=rule, alpha=0.85)
            for b in batches:
                if b in pts and pts[b].status != "reached":
                    y = pts[b].cap
                    ax.scatter([b], [y], color=color, marker="x" if pts[b].status == "diverged" else marker,
                               facecolors="none" if pts[b].status != "diverged" else color, s=60)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("steps to target training loss")
        ax.set_title(f"{MODELS[model]}\nsteps to target loss (x: diverged, open: > cap)", fontsize=9)
        ax.legend(fontsize=8)
        ax2.plot(batches, [a["frontier"][b].factor for b in batches], "k-", lw=2.5, label="best factor (grid)")
        for rule, (color, marker) in styles.items():
            pts = a["rules"][rule]
            if pts:
                bs = [b for b in batches if b in pts]
                dash = "--" if rule == "linear + warmup" else "-"  # same factor as linear
                ax2.plot(bs, [pts[b].factor for b in bs], dash, color=color, marker=marker, label=rule, alpha=0.85)
        ax2.set_xscale("log", base=2)
        ax2.set_yscale("log", base=2)
        ax2.set_xlabel("batch size")
        ax2.set_ylabel("LR factor over the base LR")
        ax2.set_title(f"{MODELS[model]}\nLR factor chosen (adascale: mean gain)", fontsize=9)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def analyses_in(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The analysis of each model whose CSV in ``out_dir`` has got past its base search."""
    out = {}
    for model in MODELS:
        path = out_dir / f"frontier_{model}.csv"
        rows = load(path) if path.is_file() else []
        if any(r["kind"] == "linear" and r["scale"] == "1" for r in rows):
            out[model] = analyse(rows)
    return out


def report(out_dir: Path, page: Path | None = None) -> str:
    """Write ``frontier.png`` into ``out_dir`` and the page (default ``<repo>/docs/frontier.md``); return the page."""
    plot({m: a for m, a in analyses_in(out_dir).items() if m in PLOTTED}, out_dir / "frontier.png")
    text = render(out_dir)
    (page or out_dir.parent / "frontier.md").write_text(text)
    return text


def render(out_dir: Path) -> str:
    """The page: ``notes.md`` of ``out_dir`` followed by the tables generated from its CSVs."""
    analyses = analyses_in(out_dir)
    notes = out_dir / "notes.md"
    lines = [notes.read_text().rstrip(), ""] if notes.is_file() else []
    lines += ["## Measured (generated by `python benchmarks/frontier.py --report`)", ""]
    for model, a in analyses.items():
        f = a["frontier"]
        fb = [b for b in a["batches"] if f[b].status == "reached"]
        lines += [f"### {MODELS[model]}", "", f"Base LR at batch 32: {a['base_lr']:.3g}.", ""]
        if len(fb) >= 3:
            s_min, b_crit = fit_mccandlish(fb, [f[b].steps for b in fb])
            lines += [f"McCandlish fit to the frontier: S_min = {s_min:.0f} steps, B_crit = {b_crit:.0f}.", ""]
        noise = {b: p.noise_scale for b, p in a["rules"]["adascale"].items() if not math.isnan(p.noise_scale)}
        if noise:
            lines += [
                "B_noise (adascale runs, smoothed, when the target was reached): "
                + ", ".join(f"B = {b}: {v:.0f}" for b, v in sorted(noise.items())),
                "",
            ]
        for rule in RULES:
            if a["rules"][rule]:
                ok, miss, good = within(a, rule)
                lines.append(
                    f"- {rule}: ≤ {TOLERANCE}× the frontier's steps up to S = {ok}, first miss at S = {miss}; "
                    f"≤ {TOLERANCE}× at S = {', '.join(map(str, good))}"
                )
        lines += ["", "Steps to target (ratio to the frontier) @ LR factor:", "", *table(a, model), "", *acc_table(a)]
        lines += ["", "Grid (LR factor: steps) at each batch:", "", *grid_lines(a), ""]
    return "\n".join(lines) + "\n"
