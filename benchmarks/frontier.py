"""Where each scaling rule breaks: steps to a target training loss against the best fixed LR found by search.

For each model (the MNIST CNN of ``examples/mnist.py`` and an MLP 784-128-10), plain SGD, real MNIST in memory:

1. **Base.** At batch 32 the LR is tuned on a log-sqrt(2) grid (a line search that extends the grid until the steps to
   target get worse on both sides of the best point).
2. **Frontier.** At every batch ``32 S`` (S = 1, 2, 4, ...) the same search over fixed LRs ``lr_32 * 2^(j/2)``,
   started from the previous batch's best factor, gives the fewest steps any fixed LR needs: the frontier.
3. **Rules.** The shipped code scales the base LR: ``lightning_lrbs.scale_for_batch`` with ``rule="linear"``,
   ``"sqrt"``, ``"linear"`` + warmup (Goyal et al.: from the unscaled LR over 5 % of the frontier's steps at that
   batch) and ``"adascale"`` (when the installed lightning_lrbs has it; its noise estimator also gives the gradient
   noise scale ``B_noise`` of the same runs). Rules run on their own even where their LR is a grid point; with the
   same seed and data order they then give the grid's numbers exactly (a check that the runs are deterministic).

Steps to target: the training loss on a fixed subset of the training images (model in eval mode) is evaluated every
step for the first 20 steps, then every ``ceil(t / 20)`` steps (5 % resolution); the crossing is interpolated in
log-loss. A run stops at the target (or at the fixed sample budget for test accuracy, whichever comes later), when its
loss is not finite or above 10x the initial loss (diverged), or at its step cap (twice the best steps seen so far at
that batch, or twice the previous batch's frontier): then it needs more than the cap ("slow").

Test accuracy on the full 10,000 test images is taken twice: when the target is reached, and once the run has seen
the sample budget (the samples the base batch needed to reach the target at its tuned LR).

Run (from the repository root; ``make frontier`` runs both models in parallel and writes the report)::

    python benchmarks/frontier.py --model mlp --data-dir ../shared/data
    python benchmarks/frontier.py --model cnn --data-dir ../shared/data --scales 1 4 16 64 256
    python benchmarks/frontier.py --report            # figure + tables from the CSVs

The CSV (``docs/frontier/frontier_<model>.csv``) gets one row per run as it finishes, so a partial run is usable;
``--resume`` skips the runs already in it.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from mnist import MNISTConvNet, load_mnist  # noqa: E402

import lightning_lrbs  # noqa: E402
from lightning_lrbs import scale_for_batch  # noqa: E402

OUT_DIR = ROOT / "docs" / "frontier"
BASE_BATCH = 32
RULES = ("linear", "linear + warmup", "sqrt", "adascale")
WARMUP_FRACTION = 0.05


def has_adascale() -> bool:
    """Whether the installed ``lightning_lrbs`` ships ``rule="adascale"`` (issue 11)."""
    try:
        import lightning_lrbs.adascale  # noqa: F401
    except ImportError:
        return False
    return True


def build_model(name: str) -> nn.Module:
    """``"cnn"``: the network of ``examples/mnist.MNISTConvNet``; ``"mlp"``: 784-128-10 with ReLU; ``"mlp2"``:
    784-256-256-10 with ReLU."""
    if name == "cnn":
        return MNISTConvNet().net
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    if name == "mlp2":  # docs/auto_lr.md: a development setting of issue 21
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
    raise ValueError(f"`--model` must be 'cnn', 'mlp' or 'mlp2', got {name!r}")


@dataclass
class Data:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    eval_x: torch.Tensor  # the fixed training subset the target loss is measured on
    eval_y: torch.Tensor


def load_data(data_dir: str, eval_subset: int, seed: int, train_subset: int | None = None) -> Data:
    train_x, train_y, test_x, test_y = load_mnist(data_dir)
    g = torch.Generator().manual_seed(seed + 12345)
    if train_subset is not None:
        keep = torch.randperm(len(train_x), generator=g)[:train_subset]
        train_x, train_y = train_x[keep], train_y[keep]
    pick = torch.randperm(len(train_x), generator=g)[:eval_subset]
    return Data(train_x, train_y, test_x, test_y, train_x[pick], train_y[pick])


def index_stream(size: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches of indices from successive seeded permutations of ``range(size)``: the same sample order for every
    batch size (a batch may straddle two epochs)."""
    epoch, buffer = 0, torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < batch:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            buffer = torch.cat([buffer, torch.randperm(size, generator=g)])
            epoch += 1
        yield buffer[:batch]
        buffer = buffer[batch:]


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 5000) -> float:
    model.eval()
    total = sum(
        float(F.cross_entropy(model(x[i : i + chunk]), y[i : i + chunk], reduction="sum"))
        for i in range(0, len(x), chunk)
    )
    model.train()
    return total / len(x)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 5000) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + chunk]).argmax(1) == y[i : i + chunk]).sum()) for i in range(0, len(x), chunk))
    model.train()
    return correct / len(x)


def eval_due(step: int) -> bool:
    """Evaluate after optimizer step ``step`` (1-based): every step up to 20, then every ceil(step / 20)."""
    return step <= 20 or step % math.ceil(step / 20) == 0


@dataclass
class Run:
    model: str
    batch: int
    scale: int
    kind: str  # "grid" or a rule
    lr: float  # the LR the optimizer was set to (before warmup / AdaScale gain)
    factor: float  # lr / base lr; for adascale the mean gain applied
    warmup_steps: int
    status: str  # reached / diverged / slow
    steps: float  # interpolated steps to target (nan unless reached)
    cap: int
    steps_run: int
    final_loss: float
    test_acc: float  # at the sample budget (nan if the run stopped before it)
    acc_at_target: float  # test accuracy when the target was reached
    budget: int
    noise_scale: float  # B_noise (smoothed) when the target was reached (adascale runs only)
    wall_s: float


def train(
    name: str,
    init: dict[str, torch.Tensor],
    data: Data,
    *,
    base_lr: float,
    batch: int,
    lr: float | None,
    rule: str,
    warmup_steps: int,
    target: float,
    cap: int,
    budget: int,
    seed: int,
    momentum: float,
    micro_batches: int,
    diverge_factor: float = 10.0,
    optimizer_name: str = "sgd",
    controller: Any = None,
) -> dict[str, Any]:
    """One run: a fixed ``lr`` (``rule="grid"``) or ``base_lr`` scaled by the shipped ``scale_for_batch``.

    ``controller`` (``rule="grid"`` only; ``benchmarks/auto_lr.py``) sets the LR of every step itself: its
    ``before_step(optimizer, loss)`` runs after the backward (``loss``: the batch's training loss) and its
    ``after_step(optimizer, probe)`` after ``optimizer.step()``, where ``probe()`` is one extra forward of the new
    weights on the same batch, with the same dropout masks (the RNG state of the training forward)."""
    torch.manual_seed(seed)
    model = build_model(name)
    model.load_state_dict(init)
    model.train()
    accumulation = micro_batches if rule == "adascale" else 1
    optimizer = make_optimizer(optimizer_name, model, lr if rule == "grid" else base_lr, momentum)
    scaling = None
    if rule != "grid":
        shipped = "linear" if rule == "linear + warmup" else rule
        factor = (batch / BASE_BATCH) if shipped == "linear" else math.sqrt(batch / BASE_BATCH)
        with warnings.catch_warnings():  # S = 1: "nothing to scale" is the point of the base run
            warnings.filterwarnings("ignore", message=".*nothing to scale", category=RuntimeWarning)
            scaling = scale_for_batch(
                optimizer,
                per_device_batch_size=batch // accumulation,
                accumulation=accumulation,
                base_batch_size=BASE_BATCH,
                rule=shipped,  # type: ignore[arg-type]
                warmup_steps=warmup_steps,
                warmup_start_factor=(1.0 / factor) if warmup_steps and shipped != "adascale" else None,
            )
    set_lr = optimizer.param_groups[0]["lr"]
    stream = index_stream(len(data.train_x), batch, seed)
    initial = mean_loss(model, data.eval_x, data.eval_y)
    prev_step, prev_loss = 0, initial
    steps = math.nan
    status, test_acc, noise_at_target, acc_at_target = "slow", math.nan, math.nan, math.nan
    gains: list[float] = []
    step = 0
    start = time.perf_counter()
    loss_now = initial
    while step < cap:
        idx = next(stream)
        x, y = data.train_x[idx], data.train_y[idx]
        optimizer.zero_grad(set_to_none=True)
        if controller is not None:
            rng = torch.get_rng_state()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            controller.before_step(optimizer, float(loss.detach()))
        elif accumulation == 1:
            F.cross_entropy(model(x), y).backward()
        else:
            noise = getattr(scaling, "noise", None)
            if noise is not None and not lightning_lrbs.adascale.preconditioner_ready(optimizer):
                noise = None  # Adam: no preconditioner before its first step (the gain stays 1 there)
            for xc, yc in zip(x.chunk(accumulation), y.chunk(accumulation), strict=True):
                if noise is not None:
                    noise.micro_batch(len(xc), loss_scale=1.0 / accumulation)
                (F.cross_entropy(model(xc), yc) / accumulation).backward()
            if noise is not None:
                noise.step()
        if getattr(scaling, "adascale", None) is not None:
            gains.append(float(scaling.adascale.factor))  # type: ignore[union-attr]
        optimizer.step()
        if controller is not None:
            controller.after_step(optimizer, lambda x=x, y=y, rng=rng: _probe(model, x, y, rng))
        step += 1
        if eval_due(step) or step == cap:
            loss_now = mean_loss(model, data.eval_x, data.eval_y)
            blown = not math.isfinite(loss_now) or loss_now > diverge_factor * initial
            if blown and not getattr(controller, "screening", False):  # a controller may react on its next forward
                status = "diverged"
                break
            if math.isnan(steps) and loss_now <= target:
                # interpolate the crossing in log-loss between the last two evaluations
                a, b = math.log(prev_loss), math.log(loss_now)
                steps = prev_step + (step - prev_step) * ((a - math.log(target)) / (a - b) if a > b else 1.0)
                status = "reached"
                acc_at_target = accuracy(model, data.test_x, data.test_y)
                if getattr(scaling, "noise", None) is not None:
                    noise_at_target = float(scaling.noise.noise_scale or math.nan)
            prev_step, prev_loss = step, loss_now
        if budget > 0 and math.isnan(test_acc) and step * batch >= budget:
            test_acc = accuracy(model, data.test_x, data.test_y)
        if status == "reached" and (budget <= 0 or not math.isnan(test_acc)):
            break
    if scaling is not None and scaling.warmup is not None:
        scaling.warmup.remove()
    if controller is not None:
        gains = list(controller.factors)
    factor_used = (sum(gains) / len(gains)) if gains else set_lr / base_lr
    return {
        "lr": set_lr,
        "factor": factor_used,
        "status": status,
        "steps": steps,
        "steps_run": step,
        "final_loss": loss_now,
        "test_acc": test_acc,
        "acc_at_target": acc_at_target,
        "noise_scale": noise_at_target,
        "wall_s": time.perf_counter() - start,
    }


@torch.no_grad()
def _probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rng: torch.Tensor) -> float:
    """The training loss of the current weights on ``(x, y)`` with the dropout masks of RNG state ``rng``; the RNG
    stream of the run is left where it was."""
    after = torch.get_rng_state()
    torch.set_rng_state(rng)
    loss = float(F.cross_entropy(model(x), y))
    torch.set_rng_state(after)
    return loss


def make_optimizer(name: str, model: nn.Module, lr: float, momentum: float) -> torch.optim.Optimizer:
    """``"sgd"`` (with ``momentum``) or ``"adam"`` (torch defaults: betas (0.9, 0.999), eps 1e-8)."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(f"`--optimizer` must be 'sgd' or 'adam', got {name!r}")


def better(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    """Whether run ``a`` reaches the target in fewer steps than ``b`` (unreached runs: lower final loss)."""
    if b is None:
        return True
    ka = (0, a["steps"]) if a["status"] == "reached" else (1, a["final_loss"] if a["status"] == "slow" else math.inf)
    kb = (0, b["steps"]) if b["status"] == "reached" else (1, b["final_loss"] if b["status"] == "slow" else math.inf)
    return ka < kb


class Study:
    def __init__(self, args: argparse.Namespace, data: Data) -> None:
        self.args = args
        self.data = data
        torch.manual_seed(args.seed)
        self.init = {k: v.clone() for k, v in build_model(args.model).state_dict().items()}
        self.csv = Path(args.out_dir) / f"frontier_{args.name or args.model}.csv"
        self.done: dict[tuple[int, str, str, int], dict[str, Any]] = {}
        if args.resume and self.csv.is_file():
            with self.csv.open() as f:
                for row in csv.DictReader(f):
                    lr = f"{float(row['lr']):.6g}" if row["kind"] == "grid" else ""
                    self.done[(int(row["batch"]), row["kind"], lr, int(row["warmup_steps"]))] = row
        elif self.csv.exists():
            self.csv.unlink()

    def record(self, run: Run) -> None:
        new = not self.csv.is_file()
        self.csv.parent.mkdir(parents=True, exist_ok=True)
        with self.csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Run)])
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(run).items()})
        steps = f"{run.steps:.1f}" if run.status == "reached" else f"{run.status} (cap {run.cap})"
        print(
            f"[{run.model}] B={run.batch:5d} {run.kind:16s} lr={run.lr:.4g} (x{run.factor:.3g}) -> {steps}, "
            f"test acc {run.test_acc:.4f}, {run.wall_s:.1f}s",
            flush=True,
        )

    def run(self, batch: int, kind: str, lr: float | None, cap: int, warmup: int = 0) -> dict[str, Any]:
        a = self.args
        key = (batch, kind, f"{lr:.6g}" if kind == "grid" else "", warmup)
        if key in self.done:
            return _parse(self.done[key])
        result = train(
            a.model, self.init, self.data, base_lr=self.base_lr, batch=batch, lr=lr, rule=kind,
            warmup_steps=warmup, target=a.target_loss, cap=cap, budget=self.budget, seed=a.seed,
            momentum=a.momentum, micro_batches=a.micro_batches, optimizer_name=a.optimizer,
        )  # fmt: skip
        run = Run(a.model, batch, batch // BASE_BATCH, kind, warmup_steps=warmup, cap=cap, budget=self.budget, **result)
        self.record(run)
        stored = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(run).items()}
        self.done[key] = stored
        return result

    base_lr: float = 0.0
    budget: int = 0

    def search(self, batch: int, center: float, unit: float, cap: int) -> tuple[float, dict[str, Any]]:
        """Line search over LRs ``unit * sqrt(2)^j`` from ``center``: extend in the better direction until the steps
        get worse, so the best point has both neighbours measured. Each new run's cap is twice the best so far."""
        j0 = round(2 * math.log2(center / unit))
        results: dict[int, dict[str, Any]] = {}

        def at(j: int) -> dict[str, Any]:
            if j not in results:
                best = min((r["steps"] for r in results.values() if r["status"] == "reached"), default=math.inf)
                this_cap = cap if math.isinf(best) else min(cap, math.ceil(2 * best) + 2)
                results[j] = self.run(batch, "grid", unit * 2 ** (j / 2), this_cap)
            return results[j]

        best_j = j0
        at(j0)
        for direction in (1, -1):
            j = j0 + direction
            while better(at(j), at(best_j)):
                best_j = j
                j += direction
            if best_j != j0:
                break
        return unit * 2 ** (best_j / 2), results[best_j]


def _parse(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fl in fields(Run):
        value = row[fl.name]
        out[fl.name] = float(value) if fl.type == "float" else int(value) if fl.type == "int" else value
    return out


def study(args: argparse.Namespace) -> None:
    data = load_data(args.data_dir, args.eval_subset, args.seed, args.train_subset)
    s = Study(args, data)
    t0 = time.perf_counter()
    # 1. base LR at batch 32 (the budget is not known yet: these runs stop at the target)
    s.budget, s.base_lr = 0, args.base_lr_start
    base_lr, base = s.search(BASE_BATCH, args.base_lr_start, args.base_lr_start, args.max_steps)
    if base["status"] != "reached":
        raise SystemExit(f"no LR reached the target loss {args.target_loss} at batch {BASE_BATCH}")
    s.base_lr = base_lr
    s.budget = math.ceil(base["steps"]) * BASE_BATCH
    print(f"[{args.model}] base LR {base_lr:.4g}: {base['steps']:.1f} steps; sample budget {s.budget}", flush=True)
    rules = [r for r in RULES if r != "adascale" or (has_adascale() and not args.no_adascale)]
    best_factor, prev_steps = 1.0, float(base["steps"])
    for scale in args.scales:
        batch = BASE_BATCH * scale
        cap = min(args.max_steps, math.ceil(2 * prev_steps) + 2)
        start = base_lr * best_factor * (math.sqrt(2) if scale > 1 else 1.0)
        lr, best = s.search(batch, start, base_lr, cap)
        best_factor = lr / base_lr
        steps = float(best["steps"]) if best["status"] == "reached" else math.inf
        rule_cap = cap if math.isinf(steps) else min(cap, math.ceil(2 * steps) + 2)
        warmup = max(1, round(WARMUP_FRACTION * steps)) if math.isfinite(steps) else max(1, round(0.05 * cap))
        for rule in rules:
            if rule == "linear + warmup" and scale == 1:
                continue  # the unscaled LR is the LR: nothing to warm up from
            s.run(batch, rule, None, rule_cap, warmup if rule == "linear + warmup" else 0)
        if math.isfinite(steps):
            prev_steps = steps
        print(f"[{args.model}] B={batch}: frontier x{best_factor:.3g} {steps:.1f} steps; "
              f"{(time.perf_counter() - t0) / 60:.1f} min so far", flush=True)  # fmt: skip
    print(f"[{args.model}] done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", choices=("mlp", "mlp2", "cnn"), default="mlp")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out-dir", default=str(OUT_DIR))
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    p.add_argument("--target-loss", type=float, default=0.1)
    p.add_argument("--base-lr-start", type=float, default=0.1, help="first LR of the base search (grid unit)")
    p.add_argument("--max-steps", type=int, default=6000)
    p.add_argument("--eval-subset", type=int, default=5000)
    p.add_argument("--train-subset", type=int, default=None, help="train on this many images (smoke tests)")
    p.add_argument("--micro-batches", type=int, default=2, help="adascale: micro-batches per step (>= 2)")
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="adam: torch defaults but the LR")
    p.add_argument("--name", default=None, help="the CSV is frontier_<name>.csv (default: the model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-adascale", action="store_true", help="skip rule='adascale' even when it is installed")
    p.add_argument("--resume", action="store_true", help="keep the CSV and skip the runs already in it")
    p.add_argument("--report", action="store_true", help="only write the figure and tables from the CSVs")
    return p


def relative_warnings() -> None:
    """Print warnings with paths relative to the repository (the logs are committed)."""
    show = warnings.formatwarning

    def formatted(message: Any, category: Any, filename: str, lineno: int, line: str | None = None) -> str:
        path = Path(filename).resolve()
        name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
        return show(message, category, name, lineno, line)

    warnings.formatwarning = formatted  # type: ignore[assignment]


def main(argv: Sequence[str] | None = None) -> int:
    relative_warnings()
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        from frontier_report import report

        report(Path(args.out_dir))
        return 0
    print(f"lightning_lrbs {lightning_lrbs.__version__}; adascale: {has_adascale()}", flush=True)
    study(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
