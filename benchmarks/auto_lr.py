"""Issue 21: an LR rule that finds the best LR at any batch without a search, against the frontier of docs/frontier.md.

Every run uses the protocol of ``benchmarks/frontier.py`` (its data, models, initial weights, sample order, target
loss, evaluation schedule, step caps and outcomes) through its ``train``; a *controller* sets the LR of every step
from what the run measures on its own training batches (never the evaluation loss), and every extra forward it takes
is counted as its cost: a forward of ``n`` samples costs ``n``, a training step of batch ``B`` costs ``3 B`` (forward
plus a backward of twice its cost).

Run (from the repository root; ``make auto-lr`` runs the whole study, docs/auto_lr.md lists every command)::

    python benchmarks/auto_lr.py --data-dir ../shared/data --dev       # every candidate on the development settings
    python benchmarks/auto_lr.py --select                              # the protocol's choice from docs/auto_lr/dev.csv
    python benchmarks/auto_lr.py --data-dir ../shared/data --traces    # fixed LRs with a secant probe at every step
    python benchmarks/auto_lr.py --data-dir ../shared/data --held-out mlp_seed1 mlp_momentum cnn cnn_adam
    python benchmarks/auto_lr.py --report                              # the figure and the tables of docs/auto_lr.md
    python benchmarks/auto_lr.py --data-dir ../shared/data --setting mlp --scales 4 16 --rule catapult \
        --param kappa=1.5                                              # one candidate, for development
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim import Optimizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import frontier  # noqa: E402

OUT_DIR = ROOT / "docs" / "auto_lr"
FRONTIER_DIR = ROOT / "docs" / "frontier"


@dataclass(frozen=True)
class Setting:
    """One model / optimizer / seed of the study and where its frontier lives."""

    model: str
    seed: int
    momentum: float
    optimizer: str
    eval_subset: int
    max_steps: int
    frontier_csv: Path
    held_out: bool


SETTINGS = {
    # development
    "mlp": Setting("mlp", 0, 0.0, "sgd", 5000, 6000, FRONTIER_DIR / "frontier_mlp.csv", False),
    "mlp_adam": Setting("mlp", 0, 0.0, "adam", 5000, 6000, OUT_DIR / "frontier_mlp_adam.csv", False),
    "mlp2": Setting("mlp2", 0, 0.0, "sgd", 5000, 6000, OUT_DIR / "frontier_mlp2.csv", False),
    "mlp2_momentum": Setting("mlp2", 0, 0.9, "sgd", 5000, 6000, OUT_DIR / "frontier_mlp2_momentum.csv", False),
    # held out
    "mlp_seed1": Setting("mlp", 1, 0.0, "sgd", 5000, 6000, FRONTIER_DIR / "frontier_mlp_seed1.csv", True),
    "mlp_momentum": Setting("mlp", 0, 0.9, "sgd", 5000, 6000, FRONTIER_DIR / "frontier_mlp_momentum.csv", True),
    "cnn": Setting("cnn", 0, 0.0, "sgd", 1000, 4000, FRONTIER_DIR / "frontier_cnn.csv", True),
    "cnn_adam": Setting("cnn", 0, 0.0, "adam", 1000, 4000, OUT_DIR / "frontier_cnn_adam.csv", True),
}


def param_list(optimizer: Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def grad_dot_params(optimizer: Optimizer) -> float:
    """``g . theta`` in float64 (``g . Delta`` is its change across a step; the step leaves ``.grad`` alone)."""
    return float(sum(float((p.grad.double() * p.detach().double()).sum()) for p in param_list(optimizer)))


def grad_sq(optimizer: Optimizer) -> float:
    return float(sum(float(p.grad.double().pow(2).sum()) for p in param_list(optimizer)))


@dataclass
class Controller:
    """Base: a fixed LR factor; ``probe_every`` > 0 probes (secant along the step) every that many steps."""

    base_lr: float
    batch: int
    scale: float
    factor: float = 1.0
    probe_every: int = 0
    trace: list[dict[str, float]] | None = None
    factors: list[float] = field(default_factory=list)
    extra_forward: int = 0  # samples forwarded by probes (the cost)
    step: int = 0
    _loss: float = math.nan
    _g_theta: float = math.nan
    _g_sq: float = math.nan
    _lr: float = math.nan

    def lr_factor(self) -> float:
        return self.factor

    def before_step(self, optimizer: Optimizer, loss: float) -> None:
        f = self.lr_factor()
        self._lr = self.base_lr * f
        for group in optimizer.param_groups:
            group["lr"] = self._lr
        self.factors.append(f)
        self._loss = loss
        if self.probing():
            self._g_theta = grad_dot_params(optimizer)
            self._g_sq = grad_sq(optimizer)

    def probing(self) -> bool:
        return self.probe_every > 0 and self.step % self.probe_every == 0

    def after_step(self, optimizer: Optimizer, probe: Callable[[], float]) -> None:
        if self.probing():
            loss_after = probe()
            self.extra_forward += self.batch
            g_delta = grad_dot_params(optimizer) - self._g_theta  # g . Delta (< 0 for a descent step)
            curv = 2.0 * (loss_after - self._loss - g_delta)  # Delta^T H Delta (secant, same batch)
            self.observe(self._lr, self._loss, loss_after, -g_delta, curv, self._g_sq)
        else:
            self.observe_loss(self._lr, self._loss)
        self.step += 1

    def observe(self, lr: float, loss: float, loss_after: float, descent: float, curv: float, g_sq: float) -> None:
        """One probe: ``descent = -g.Delta``, ``curv = Delta^T H Delta`` along the step ``Delta`` at LR ``lr``."""
        if self.trace is not None:
            # per unit LR: the step is Delta = -lr u; gu = g.u, uhu = u^T H u; eta* = gu / uhu (greedy along u)
            gu, uhu = descent / lr, curv / lr**2
            self.trace.append({
                "step": self.step, "lr": lr, "loss": loss, "loss_after": loss_after, "g_sq": g_sq, "gu": gu,
                "uhu": uhu, "eta_star": gu / uhu if uhu > 0 else math.inf,
            })  # fmt: skip

    def observe_loss(self, lr: float, loss: float) -> None:
        if self.trace is not None:
            self.trace.append({"step": self.step, "lr": lr, "loss": loss})


@dataclass
class Greedy(Controller):
    """The issue's candidate: LR = min(linear, c eta*), eta* = g.u / u^T H u (|g|^2 / g^T H g for SGD) from the
    secant along the step every ``probe_every`` steps, smoothed as a ratio of moving averages (``beta``); the base
    LR until the first probe."""

    c: float = 1.5
    beta: float = 0.9
    probe_every: int = 8
    _num: float = 0.0
    _den: float = 0.0

    def lr_factor(self) -> float:
        if self._den <= 0:
            return 1.0
        return min(self.scale, self.c * (self._num / self._den) / self.base_lr)

    def observe(self, lr: float, loss: float, loss_after: float, descent: float, curv: float, g_sq: float) -> None:
        super().observe(lr, loss, loss_after, descent, curv, g_sq)
        self._num = self.beta * self._num + (1 - self.beta) * descent / lr
        self._den = self.beta * self._den + (1 - self.beta) * max(curv, 0.0) / lr**2


@dataclass
class Ceiling(Controller):
    """McCandlish's eps_opt(B) = eps_max / (1 + B_noise / B) with eps_max = c eta*_0, the greedy step along the first
    update (secant, one extra forward at step 0, taken at the base LR), and B_noise eliminated by the base LR:
    eps_opt(B_base) = lr_base. In factors of the base LR, with the SDE exponent p (1: SGD, 2: Adam):
    f(S) = (1 / C^p + (1 - 1 / C^p) / S)^(-1/p), C = eps_max / lr_base."""

    c: float = 1.0
    p: float = 1.0
    probe_every: int = 0

    def probing(self) -> bool:
        return self.step == 0

    def observe(self, lr: float, loss: float, loss_after: float, descent: float, curv: float, g_sq: float) -> None:
        super().observe(lr, loss, loss_after, descent, curv, g_sq)
        eta0 = (descent / lr) / (curv / lr**2) if curv > 0 else math.inf
        cap = self.c * eta0 / self.base_lr
        self.eta0 = eta0
        self.factor = (1 / cap**self.p + (1 - 1 / cap**self.p) / self.scale) ** (-1 / self.p)


@dataclass
class Ramp(Controller):
    """An LR range test inside the run: the factor grows by ``gamma`` per step from 1 (at most to the linear rule's
    S) until the training loss of a step exceeds ``detect`` times the lowest loss so far; then the factor is the one
    ``lag`` steps before the detection, times ``backoff``, for the rest of the run."""

    gamma: float = 1.1
    detect: float = 1.5
    backoff: float = 0.5
    lag: int = 0
    _low: float = math.inf
    _history: list[float] = field(default_factory=list)
    frozen: bool = False

    def observe_loss(self, lr: float, loss: float) -> None:
        super().observe_loss(lr, loss)
        self._history.append(self.factor)
        if self.frozen:
            return
        if math.isfinite(self._low) and (not math.isfinite(loss) or loss > self.detect * self._low):
            self.frozen = True
            back = self._history[max(0, len(self._history) - 1 - int(self.lag))]
            self.factor = max(1.0, back * self.backoff)
            return
        self._low = min(self._low, loss)
        self.factor = min(self.scale, self.factor * self.gamma)


@dataclass
class Aimd(Controller):
    """Bold driver / AIMD on the free loss sequence: the factor grows by ``gamma`` per step (at most to S) and is cut
    by ``backoff`` when a step's training loss exceeds ``detect`` times the moving average of the losses before it
    (``beta``); after each cut the growth exponent is multiplied by ``damp`` (it settles)."""

    gamma: float = 1.05
    detect: float = 1.5
    backoff: float = 0.5
    beta: float = 0.9
    damp: float = 0.5
    _avg: float = math.nan
    _growth: float = 0.0
    cuts: int = 0

    def observe_loss(self, lr: float, loss: float) -> None:
        super().observe_loss(lr, loss)
        if math.isnan(self._avg):
            self._avg, self._growth = loss, math.log(self.gamma)
        elif not math.isfinite(loss) or loss > self.detect * self._avg:
            self.factor = max(1.0, self.factor * self.backoff)
            self._growth *= self.damp
            self.cuts += 1
        else:
            self.factor = min(self.scale, self.factor * math.exp(self._growth))
        if math.isfinite(loss):
            self._avg = self.beta * self._avg + (1 - self.beta) * loss


@dataclass
class Mccandlish(Controller):
    """No measurement: McCandlish's eps_opt(B) = eps_max / (1 + B_noise / B) with eps_max = C lr_base and B_noise
    eliminated by eps_opt(B_base) = lr_base (AdaScale's gain with the noise scale fixed at (C - 1) B_base), in the
    SDE exponent p (1: SGD, 2: Adam): f(S) = (1 / C^p + (1 - 1 / C^p) / S)^(-1/p)."""

    cap: float = 2.83
    p: float = 1.0

    def lr_factor(self) -> float:
        c = self.cap**self.p
        return float((1 / c + (1 - 1 / c) / self.scale) ** (-1 / self.p))


class Restart(Exception):  # noqa: N818
    """Raised by a controller to start the run again from the initial weights at ``factor``."""

    def __init__(self, factor: float, steps: int) -> None:
        super().__init__(factor, steps)
        self.factor, self.steps = factor, steps


@dataclass
class Descend(Controller):
    """Start at min(S, ``fmax``) times the base LR; during the first ``horizon`` steps, divide the factor by ``ratio``
    (not below 1) whenever a step's training loss exceeds ``kappa`` times the first step's (a loss catapult), and
    start again from the initial weights at the divided factor when it exceeds ``blow`` times the first (the weights
    are damaged). After ``horizon`` steps the factor is fixed."""

    kappa: float = 1.5
    blow: float = 4.0
    fmax: float = 16.0
    horizon: int = 20
    ratio: float = math.sqrt(2)
    start: float = 0.0  # the factor to start at (a restart's); 0: min(S, fmax)
    _first: float = math.nan
    cuts: int = 0

    def __post_init__(self) -> None:
        self.factor = self.start or min(self.scale, self.fmax)

    @property
    def screening(self) -> bool:
        """Within the horizon the study's divergence stop waits for this rule's own check on the next forward."""
        return self.step < self.horizon and self.factor > 1.0

    def before_step(self, optimizer: Optimizer, loss: float) -> None:
        if self.step == 0:
            self.factorirst = loss
        elif self.step < self.horizon and self.factor > 1.0:
            if not loss <= self.blow * self.factorirst:
                raise Restart(max(1.0, self.factor / self.ratio), self.step)
            if loss > self.kappa * self.factorirst:
                self.factor = max(1.0, self.factor / self.ratio)
                self.cuts += 1
        super().before_step(optimizer, loss)


RULES: dict[str, type[Controller]] = {
    "mccandlish": Mccandlish,
    "descend": Descend,
    "fixed": Controller,
    "greedy": Greedy,
    "ceiling": Ceiling,
    "ramp": Ramp,
    "aimd": Aimd,
}


def family(setting: Setting) -> str:
    """``"sgd"``, ``"momentum"`` or ``"adam"``: candidates may have one set of constants per family."""
    if setting.optimizer == "adam":
        return "adam"
    return "momentum" if setting.momentum else "sgd"


#: Every candidate run on the development settings (``--dev``): (rule, constants, families it runs for).
DEV_GRID: list[tuple[str, dict[str, float], tuple[str, ...]]] = [
    ("greedy", {"c": 1.25, "probe_every": 8}, ("sgd", "momentum", "adam")),
    ("greedy", {"c": 1.5, "probe_every": 8}, ("sgd", "momentum", "adam")),
    ("ceiling", {"c": 0.5, "p": 1}, ("sgd", "momentum")),
    ("ceiling", {"c": 1.0, "p": 1}, ("sgd", "momentum")),
    ("ceiling", {"c": 0.5, "p": 2}, ("adam",)),
    ("ceiling", {"c": 1.0, "p": 2}, ("adam",)),
    ("ramp", {"gamma": 1.1, "detect": 1.5, "backoff": 0.5}, ("sgd", "momentum", "adam")),
    ("aimd", {"detect": 2.0, "damp": 0.7, "backoff": 0.7}, ("sgd", "momentum", "adam")),
    ("catapult", {"kappa": 1.25, "fmax": 16, "steps": 20}, ("sgd", "momentum", "adam")),
    ("catapult", {"kappa": 1.5, "fmax": 16, "steps": 20}, ("sgd", "momentum", "adam")),
    ("descend", {"kappa": 1.5, "blow": 4.0, "fmax": 16, "horizon": 20}, ("sgd", "momentum", "adam")),
    *(("mccandlish", {"cap": c, "p": 1}, ("sgd",)) for c in (2.0, 2.83, 4.0)),
    *(("mccandlish", {"cap": c, "p": 1}, ("momentum",)) for c in (5.66, 8.0, 11.3, 16.0)),
    *(("mccandlish", {"cap": c, "p": 2}, ("adam",)) for c in (5.66, 8.0, 11.3, 16.0)),
]
DEV_SETTINGS = ("mlp", "mlp2", "mlp2_momentum", "mlp_adam")
DEV_SCALES = (4, 16, 64, 256)
HELD_OUT_SCALES = {"mlp_seed1": (4, 16, 64, 256), "mlp_momentum": (4, 16, 64, 256), "cnn": (4, 16, 64),
                   "cnn_adam": (4, 16, 64)}  # fmt: skip
BAR = 1.2
MAX_COST = 0.05

#: The rule chosen by :func:`select` from the development runs, frozen before any held-out run: (rule, constants per
#: optimizer family). ``None`` until then.
FROZEN: tuple[str, dict[str, dict[str, float]]] | None = (
    "mccandlish",
    {"sgd": {"cap": 2.83, "p": 1.0}, "momentum": {"cap": 11.3, "p": 1.0}, "adam": {"cap": 8.0, "p": 2.0}},
)


def base_lr_of(setting: Setting) -> float:
    """The base LR of the setting's frontier: the LR of its ``linear`` run at S = 1 (tuned at batch 32)."""
    with setting.frontier_csv.open() as f:
        for row in csv.DictReader(f):
            if row["kind"] == "linear" and row["scale"] == "1":
                return float(row["lr"])
    raise SystemExit(f"{setting.frontier_csv}: no base run (measure the frontier first)")


def frontier_caps(setting: Setting) -> dict[int, tuple[float, int, int]]:
    """Per batch: (frontier steps, the cap the frontier's rule runs had, the sample budget)."""
    with setting.frontier_csv.open() as f:
        rows = list(csv.DictReader(f))
    out = {}
    for batch in sorted({int(r["batch"]) for r in rows}):
        grid = [float(r["steps"]) for r in rows if int(r["batch"]) == batch and r["kind"] == "grid"]
        grid = [s for s in grid if math.isfinite(s)]
        rule = [r for r in rows if int(r["batch"]) == batch and r["kind"] == "linear"]
        if grid and rule:
            out[batch] = (min(grid), int(rule[0]["cap"]), int(rule[0]["budget"]))
    return out


def run_one(args: argparse.Namespace, setting: Setting, data: frontier.Data, init: dict[str, torch.Tensor],
            scale: int, rule: str, params: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """One run of ``rule`` (a controller of :data:`RULES`, or ``"lr_find"``: train at the LR finder's suggestion)
    at batch 32 S, with the frontier's step cap and sample budget at that batch."""
    base_lr = base_lr_of(setting)
    batch = frontier.BASE_BATCH * scale
    best, cap, budget = frontier_caps(setting)[batch]
    trace: list[dict[str, float]] | None = [] if args.trace else None
    controller: Controller | None = None
    t0 = time.perf_counter()
    if rule == "lr_find":
        lr, sweep = lr_finder(setting, data, init, batch, base_lr)
        extra = 3 * batch * sweep  # the sweep's steps: forward and backward
    elif rule == "catapult":
        f, extra, log = catapult_test(
            setting, data, init, batch, base_lr, scale, params.get("kappa", 1.5), params.get("fmax", 16.0),
            int(params.get("steps", 20)), params.get("ratio", math.sqrt(2)),
        )  # fmt: skip
        lr = base_lr * f
    else:
        lr, extra = base_lr, 0
    restarts = 0
    while True:
        if rule not in ("lr_find", "catapult"):
            controller = RULES[rule](base_lr=base_lr, batch=batch, scale=scale, trace=trace, **params)  # type: ignore[arg-type]
        try:
            result = frontier.train(
                setting.model, init, data, base_lr=base_lr, batch=batch, lr=lr, rule="grid", warmup_steps=0,
                target=args.target_loss, cap=cap, budget=budget, seed=setting.seed, momentum=setting.momentum,
                micro_batches=1, optimizer_name=setting.optimizer, controller=controller,
            )  # fmt: skip
        except Restart as restart:  # the steps taken and the forward that saw the loss are the cost
            extra += 3 * batch * restart.steps + batch + (controller.extra_forward if controller else 0)
            params = {**params, "start": restart.factor}
            restarts += 1
            continue
        break
    if controller is not None:
        extra += controller.extra_forward
    # the rule's share of the compute of its run up to the target (or to where it stopped)
    done = result["steps"] if result["status"] == "reached" else result["steps_run"]
    result.update(
        setting=args.setting,
        rule=rule,
        params=" ".join(f"{k}={v:g}" for k, v in params.items()),
        scale=scale,
        batch=batch,
        frontier_steps=best,
        ratio=result["steps"] / best,
        cap=cap,
        cost=extra / (3 * batch * max(done, 1)),
        final_factor=controller.factors[-1] if controller else lr / base_lr,
        total_wall_s=time.perf_counter() - t0,
        restarts=restarts,
    )
    if trace is not None:
        path = Path(args.trace)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in trace for k in row)))
            writer.writeheader()
            writer.writerows(trace)
    return result


def catapult_test(
    setting: Setting,
    data: frontier.Data,
    init: dict[str, torch.Tensor],
    batch: int,
    base_lr: float,
    scale: float,
    kappa: float,
    fmax: float,
    steps: int,
    ratio: float,
) -> tuple[float, int, list[str]]:
    """The largest factor of ``fmax, fmax / ratio, ...`` (at most S, at least 1) whose first ``steps`` steps from the
    initial weights keep every training loss below ``kappa`` times the first one (the loss catapult of a too-large LR,
    Lewkowycz et al. 2020). A candidate is dropped at the first loss above that: its steps and that forward are the
    cost (returned in samples forwarded, a step counting 3 B). The accepted candidate's steps are the run's own
    first steps (the run replays them exactly), so they cost nothing."""
    import torch.nn.functional as F  # noqa: N812

    cost, log = 0, []
    f = min(fmax, scale)
    while f > 1.0 + 1e-9:
        torch.manual_seed(setting.seed)
        model = frontier.build_model(setting.model)
        model.load_state_dict(init)
        model.train()
        opt = frontier.make_optimizer(setting.optimizer, model, base_lr * f, setting.momentum)
        stream = frontier.index_stream(len(data.train_x), batch, setting.seed)
        first, failed = math.nan, False
        for t in range(steps):
            idx = next(stream)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            value = float(loss.detach())
            first = value if t == 0 else first
            if not value <= kappa * first:
                cost += 3 * batch * t + batch  # t steps, then this forward
                failed = True
                log.append(f"x{f:.3g} dropped at step {t}")
                break
            loss.backward()
            opt.step()
        if not failed:
            log.append(f"x{f:.3g} kept")
            return f, cost, log
        f /= ratio
    return 1.0, cost, log


def lr_finder(setting: Setting, data: frontier.Data, init: dict[str, torch.Tensor], batch: int,
              base_lr: float) -> tuple[float, int]:  # fmt: skip
    """Lightning's LR finder at the effective batch, with its defaults (``Tuner(trainer).lr_find(module)``: 100 steps
    from 1e-8 to 1, exponential, early stop at 4x the best loss; suggestion = steepest descent of the smoothed loss)
    on a LightningModule wrapping the same model, initial weights and training images. Returns the suggestion and the
    sweep's optimizer steps (its cost)."""
    import lightning.pytorch as pl
    import torch.nn.functional as F  # noqa: N812
    from lightning.pytorch.tuner import Tuner
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = frontier.build_model(setting.model)
            self.net.load_state_dict(init)
            self.lr = base_lr

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Optimizer:
            return frontier.make_optimizer(setting.optimizer, self.net, self.lr, setting.momentum)

    torch.manual_seed(setting.seed)
    loader = DataLoader(
        TensorDataset(data.train_x, data.train_y), batch_size=batch, shuffle=True,
        generator=torch.Generator().manual_seed(setting.seed),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as root:  # the finder's checkpoint of the initial state
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
        )  # fmt: skip
        finder = Tuner(trainer).lr_find(Module(), train_dataloaders=loader)
    assert finder is not None
    suggestion = finder.suggestion()
    return (math.nan if suggestion is None else float(suggestion)), len(finder.results["lr"])


def parse_params(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        k, v = item.split("=")
        out[k] = float(v)
    return out


def append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def describe(r: dict[str, Any]) -> str:
    steps = f"{r['steps']:.1f} steps ({r['ratio']:.2f}x)" if r["status"] == "reached" else r["status"]
    return (
        f"[{r['setting']}] S={r['scale']:4d} {r['rule']} {r['params']}: {steps} (frontier {r['frontier_steps']:.0f}, "
        f"cap {r['cap']}), factor mean {r['factor']:.3g} final {r['final_factor']:.3g}, cost {100 * r['cost']:.1f}%, "
        f"restarts {r['restarts']}, {r['total_wall_s']:.0f}s"
    )


def dev(args: argparse.Namespace) -> int:
    """Every candidate of :data:`DEV_GRID` on every development setting at :data:`DEV_SCALES`."""
    out = Path(args.out or OUT_DIR / "dev.csv")
    done = set()
    if out.is_file():
        with out.open() as f:
            done = {(r["setting"], r["rule"], r["params"], int(r["scale"])) for r in csv.DictReader(f)}
    for name in DEV_SETTINGS:
        setting = SETTINGS[name]
        assert not setting.held_out
        args.setting = name
        data = frontier.load_data(args.data_dir, setting.eval_subset, setting.seed)
        torch.manual_seed(setting.seed)
        init = {k: v.clone() for k, v in frontier.build_model(setting.model).state_dict().items()}
        for rule, params, families in DEV_GRID:
            if family(setting) not in families:
                continue
            for scale in DEV_SCALES:
                key = (name, rule, " ".join(f"{k}={v:g}" for k, v in params.items()), scale)
                if key in done:
                    continue
                r = run_one(args, setting, data, init, scale, rule, dict(params))
                r["params"] = key[2]
                print(describe(r), flush=True)
                append_row(out, r)
    return 0


def select(path: Path) -> tuple[str | None, dict[str, dict[str, float]], list[str]]:
    """The protocol's mechanical selection from the development rows: per candidate and optimizer family the eligible
    constant set (cost <= 5 % everywhere) with the fewest points missing the bar (ties: smaller largest ratio); then
    the candidate with the fewest missed points over all development settings (ties: smaller largest ratio)."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    fam = {name: family(SETTINGS[name]) for name in DEV_SETTINGS}

    def ratio(r: dict[str, Any]) -> float:
        return float(r["ratio"]) if r["status"] == "reached" else math.inf

    lines: list[str] = []
    best_rule: tuple[int, float, str, dict[str, dict[str, float]]] | None = None
    for rule in dict.fromkeys(r["rule"] for r in rows):
        chosen: dict[str, dict[str, float]] = {}
        missed, worst, complete = 0, 0.0, True
        for family_name in ("sgd", "momentum", "adam"):
            options = []
            for params in dict.fromkeys(r["params"] for r in rows if r["rule"] == rule):
                pts = [
                    r for r in rows if r["rule"] == rule and r["params"] == params and fam[r["setting"]] == family_name
                ]
                if not pts:
                    continue
                eligible = all(float(r["cost"]) <= MAX_COST for r in pts)
                miss = sum(ratio(r) > BAR for r in pts)
                options.append((not eligible, miss, max(ratio(r) for r in pts), params, len(pts)))
            if not options:
                complete = False
                continue
            ineligible, miss, top, params, n = min(options)
            lines.append(
                f"{rule} [{family_name}] {params}: {'INELIGIBLE (cost > 5 %) ' if ineligible else ''}"
                f"{miss}/{n} points miss the bar, largest ratio {top:.2f}"
            )
            if ineligible:
                complete = False
            chosen[family_name] = parse_params(params.split())
            missed, worst = missed + miss, max(worst, top)
        if complete and (best_rule is None or (missed, worst) < best_rule[:2]):
            best_rule = (missed, worst, rule, chosen)
    if best_rule is None:
        return None, {}, [*lines, "selected: none (no candidate is eligible on every optimizer family)"]
    lines.append(
        f"selected: {best_rule[2]} {best_rule[3]} ({best_rule[0]} points miss the bar, largest {best_rule[1]:.2f})"
    )
    return best_rule[2], best_rule[3], lines


#: Fixed-LR development runs with a secant probe at every step (setting, S, factor): the greedy step they measure.
TRACES = [("mlp", 16, 1.0), ("mlp", 16, 2.0), ("mlp", 16, 4.0), ("mlp2", 64, 1.0), ("mlp2", 64, 2.0), ("mlp2", 64, 4.0)]


def traces(args: argparse.Namespace) -> int:
    for name, scale, factor in TRACES:
        setting = SETTINGS[name]
        args.setting = name
        args.trace = str(OUT_DIR / f"trace_{name}_S{scale}_x{factor:g}.csv")
        data = frontier.load_data(args.data_dir, setting.eval_subset, setting.seed)
        torch.manual_seed(setting.seed)
        init = {k: v.clone() for k, v in frontier.build_model(setting.model).state_dict().items()}
        r = run_one(args, setting, data, init, scale, "fixed", {"factor": factor, "probe_every": 1})
        print(describe(r), flush=True)
    return 0


def held_out(args: argparse.Namespace) -> int:
    """The frozen rule and the LR finder once at every point of the held-out settings named."""
    if FROZEN is None:
        raise SystemExit("no frozen rule yet: select it on the development runs first (--select)")
    rule, constants = FROZEN
    out = Path(args.out or OUT_DIR / "held_out.csv")
    for name in args.held_out:
        setting = SETTINGS[name]
        assert setting.held_out
        args.setting = name
        data = frontier.load_data(args.data_dir, setting.eval_subset, setting.seed)
        torch.manual_seed(setting.seed)
        init = {k: v.clone() for k, v in frontier.build_model(setting.model).state_dict().items()}
        for scale in HELD_OUT_SCALES[name]:
            for kind, params in ((rule, constants[family(setting)]), ("lr_find", {})):
                r = run_one(args, setting, data, init, scale, kind, dict(params))
                r["params"] = " ".join(f"{k}={v:g}" for k, v in params.items())
                print(describe(r), flush=True)
                append_row(out, r)
    return 0


def report(out_dir: Path, page: Path, figure: Path | None = OUT_DIR / "auto_lr.png") -> str:
    """The figure (unless ``figure`` is ``None``) and the generated block of the page from the CSVs in ``out_dir``."""
    import auto_lr_report

    dev_rows = auto_lr_report.load(out_dir / "dev.csv")
    selection = select(out_dir / "dev.csv")[2] if dev_rows else []
    held_rows = auto_lr_report.load(out_dir / "held_out.csv")
    rule = FROZEN[0] if FROZEN else None
    held = {
        name: (auto_lr_report.load(SETTINGS[name].frontier_csv), [r for r in held_rows if r["setting"] == name])
        for name in HELD_OUT_SCALES
        if any(r["setting"] == name for r in held_rows) and SETTINGS[name].frontier_csv.is_file()
    }
    if rule is not None and held and figure is not None:
        auto_lr_report.plot(held, rule, figure)
    traces = {
        path.stem.removeprefix("trace_"): auto_lr_report.load(path) for path in sorted(out_dir.glob("trace_*.csv"))
    }
    block = auto_lr_report.render(dev_rows, selection, held, rule, DEV_SETTINGS, DEV_SCALES, traces)
    return auto_lr_report.write_page(page, block)


def main(argv: Sequence[str] | None = None) -> int:
    frontier.relative_warnings()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no machine paths in the committed logs
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=sorted(SETTINGS), default="mlp")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--scales", type=int, nargs="+", default=[4, 16, 64, 256])
    p.add_argument("--rule", choices=[*sorted(RULES), "lr_find", "catapult"], default="fixed")
    p.add_argument("--param", nargs="*", default=[], help="controller constants, name=value")
    p.add_argument("--target-loss", type=float, default=0.1)
    p.add_argument("--trace", default=None, help="write the per-step trace of the (last) run here")
    p.add_argument("--out", default=None, help="append one CSV row per run here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dev", action="store_true", help="run DEV_GRID on the development settings into --out")
    p.add_argument("--select", action="store_true", help="the protocol's selection from docs/auto_lr/dev.csv")
    p.add_argument("--traces", action="store_true", help="the fixed-LR runs of TRACES with a probe at every step")
    p.add_argument("--report", action="store_true", help="the figure and the tables of docs/auto_lr.md")
    p.add_argument("--held-out", nargs="+", choices=sorted(HELD_OUT_SCALES), help="run FROZEN and the LR finder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dev:
        return dev(args)
    if args.select:
        print("\n".join(select(Path(args.out or OUT_DIR / "dev.csv"))[2]))
        return 0
    if args.held_out:
        return held_out(args)
    if args.traces:
        return traces(args)
    if args.report:
        report(OUT_DIR, ROOT / "docs" / "auto_lr.md")
        return 0
    setting = SETTINGS[args.setting]
    data = frontier.load_data(args.data_dir, setting.eval_subset, setting.seed)
    torch.manual_seed(setting.seed)
    init = {k: v.clone() for k, v in frontier.build_model(setting.model).state_dict().items()}
    params = parse_params(args.param)
    for scale in args.scales:
        r = run_one(args, setting, data, init, scale, args.rule, dict(params))
        print(describe(r), flush=True)
        if args.out:
            append_row(Path(args.out), r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
