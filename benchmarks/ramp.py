"""Batch-size warmup (issue 20): steps and samples to a target loss with a growing batch, against fixed batches.

On the settings of the batch-size study (``benchmarks/frontier.py``, ``docs/frontier.md``: real MNIST in memory, the
MLP 784-128-10 with plain SGD and with momentum 0.9, the CNN of ``examples/mnist.py``; the base LR tuned at batch 32;
the target loss on a fixed subset of the training images) plus Adam on the CNN, each run trains with

- ``fixed``: a fixed batch (32 = the base; 128 = the ramp's target under each rule), or
- ``ramp``: ``BatchScalingCallback(batch_ramp=(start, increment, samples))``'s batch, or
- ``noise``: a batch that doubles when a measured noise scale passes ``k`` times the batch (never shrinks, up to the
  target), the candidate ``noise`` schedule of issue 20.

The loop is plain PyTorch, but it applies exactly what the callback applies: the per-device micro-batch is 32 (one
device, so the batch grows by accumulation), the accumulation changes only after an optimizer step at a batch of the
epoch that the new accumulation divides (:class:`LightningAccumulation`, Lightning's own rule), an epoch's last
window may be short and its loss is still divided by the accumulation, and the LR (Adam's betas and epsilon under
``sde``) is the module's own value scaled by the rule at ``B / 32``, never compounded. A window is drawn as one batch
of its micro-batches (the same mean gradient). ``tests/test_ramp.py`` compares this loop with a real ``Trainer`` fit
using ``BatchScalingCallback(batch_ramp=...)``, step by step.

Steps and samples to target are interpolated at the crossing as in the batch-size study; test accuracy is taken when
the target is reached and once the run has seen the base run's samples (equal samples).

Run (from the repository root; ``make ramp`` runs the whole study)::

    python benchmarks/ramp.py --setting mlp --data-dir ../shared/data
    python benchmarks/ramp.py --report          # figure + tables of docs/ramp.md from docs/ramp/*.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier import BASE_BATCH, Data, accuracy, better, build_model, eval_due, load_data, mean_loss  # noqa: E402

import lightning_lrbs  # noqa: E402
from lightning_lrbs import scale_factor  # noqa: E402
from lightning_lrbs.batch_ramp import BatchRamp, aligned  # noqa: E402
from lightning_lrbs.noise import BiasCorrectedEMA, grad_sq_norm_estimate, grad_var_estimate  # noqa: E402
from lightning_lrbs.sde import scale_beta, scale_eps  # noqa: E402

OUT_DIR = ROOT / "docs" / "ramp"
ROUND = BASE_BATCH  # the per-device micro-batch: one device, so the batch grows by accumulation
DIVERGE_FACTOR = 10.0
TRACE_FIELDS = ["label", "step", "samples", "batch", "lr", "loss", "simple", "hessian", "g2", "trs", "ghg", "trhs"]


@dataclass(frozen=True)
class Setting:
    model: str
    optimizer: str  # "sgd" or "adam"
    momentum: float
    base_lr: float | None  # None: tuned here at batch 32 (Adam)
    eval_subset: int
    rules: tuple[str, ...]  # the fixed target batch under each rule
    ramp_rules: tuple[str, ...]  # the ramp (and noise) under the rule the package would use first
    max_steps: int


SETTINGS = {
    # base LRs: the batch-size study's tuned values (docs/frontier.md)
    "mlp": Setting("mlp", "sgd", 0.0, 0.2, 5000, ("linear", "sqrt"), ("linear", "sqrt"), 6000),
    "mlp_momentum": Setting("mlp", "sgd", 0.9, 0.02, 5000, ("linear", "sqrt"), ("linear", "sqrt"), 6000),
    "cnn": Setting("cnn", "sgd", 0.0, 0.05 * 2**1.5, 1000, ("linear", "sqrt"), ("linear", "sqrt"), 4000),
    "cnn_adam": Setting("cnn", "adam", 0.0, None, 1000, ("linear", "sqrt", "sde"), ("sde", "sqrt"), 4000),
}


# --------------------------------------------------------------------------- what the callback applies


@dataclass(frozen=True)
class Window:
    """One optimizer step as Lightning runs it: micro-batches ``first .. first + size - 1`` of ``epoch``."""

    epoch: int
    first: int
    size: int  # micro-batches; fewer than ``accumulation`` only for an epoch's last window
    accumulation: int  # the Trainer's accumulate_grad_batches: the loss of each micro-batch is divided by it


class LightningAccumulation:
    """The windows of a fit whose accumulation a batch schedule sets, as ``BatchSchedule`` and Lightning run it.

    Lightning steps after a batch when the batches of the epoch so far divide by the accumulation, or at the epoch's
    last batch; the callback counts ``round_size`` samples per micro-batch and, after each step and at each epoch
    start, asks ``wanted(consumed)`` for the accumulation and takes it only where the batches of the epoch so far
    divide by it (:func:`lightning_lrbs.batch_ramp.aligned`).

    Args:
        round_size: Samples of one micro-batch on every replica (per-device batch × replicas).
        epoch_batches: Micro-batches per epoch.
        target_accumulation: The Trainer's ``accumulate_grad_batches``, in force until the first ``wanted``.
        wanted: The accumulation the schedule asks for after ``consumed`` samples.
    """

    def __init__(
        self, round_size: int, epoch_batches: int, target_accumulation: int, wanted: Callable[[float], int]
    ) -> None:
        self.round_size, self.epoch_batches = round_size, epoch_batches
        self.accumulation, self.wanted = target_accumulation, wanted
        self.consumed = 0.0

    def _follow(self, batches: int) -> None:
        want = self.wanted(self.consumed)
        if want != self.accumulation and aligned(batches, want):
            self.accumulation = want

    def windows(self) -> Iterator[Window]:
        """The windows in order, forever; ``consumed`` and the accumulation follow each one once it is done."""
        self._follow(0)  # on_train_start
        epoch = 0
        while True:
            self._follow(0)  # on_train_epoch_start
            first = 0
            while first < self.epoch_batches:
                size = min(self.accumulation, self.epoch_batches - first)
                yield Window(epoch, first, size, self.accumulation)
                self.consumed += size * self.round_size
                first += size
                self._follow(first)
            epoch += 1


class Scaled:
    """The optimizer's hyperparameters at batch ``B`` as the callback sets them: each group's own LR times
    ``scale_factor(B / base, rule)``; under ``rule="sde"`` Adam's betas ``beta ** kappa`` and epsilon
    ``eps / sqrt(kappa)`` too (``lightning_lrbs.sde``), from the originals, never compounded."""

    def __init__(self, optimizer: torch.optim.Optimizer, rule: str, base_batch: int) -> None:
        self.optimizer, self.rule, self.base_batch = optimizer, rule, base_batch
        self.originals = [{k: g[k] for k in ("lr", "betas", "eps") if k in g} for g in optimizer.param_groups]
        self.batch: int | None = None

    def apply(self, batch: int) -> None:
        if batch == self.batch:
            return
        kappa = batch / self.base_batch
        factor = scale_factor(kappa, self.rule, self.optimizer)  # type: ignore[arg-type]
        for group, original in zip(self.optimizer.param_groups, self.originals, strict=True):
            group["lr"] = original["lr"] * factor
            if self.rule == "sde" and "betas" in original:
                group["betas"] = tuple(scale_beta(b, kappa) for b in original["betas"])
                group["eps"] = scale_eps(original["eps"], kappa)
        self.batch = batch


# --------------------------------------------------------------------------- batch schedules


class Fixed:
    """A fixed batch of ``accumulation`` micro-batches."""

    measures = False

    def __init__(self, accumulation: int) -> None:
        self.accumulation = accumulation

    def wanted(self, consumed: float) -> int:
        return self.accumulation

    def observe(self, stats: dict[str, float]) -> None:
        pass


class Ramp:
    """The shipped ramp: ``BatchRamp(start, increment, samples).accumulation(consumed, target, round)``."""

    measures = False

    def __init__(self, ramp: BatchRamp, target: int) -> None:
        ramp.check(target, ROUND)  # the callback's check at fit start
        self.ramp, self.target = ramp, target

    def wanted(self, consumed: float) -> int:
        return self.ramp.accumulation(consumed, self.target, ROUND)

    def observe(self, stats: dict[str, float]) -> None:
        pass


class NoiseDoubling:
    r"""Double the batch (never shrink, up to ``target``) when a measured signal says the doubled batch pays, after at
    least ``warm`` measurements of it.

    Measured (bias-corrected EMAs, each quantity smoothed apart, as ``lightning_lrbs.noise`` does): from the two
    half-batch gradients of every step, :math:`|G|^2` and :math:`tr(Sigma)` (the package's two-batch estimates);
    with ``hessian_every``, from Hessian-vector products on an independent batch of 256 training images (double
    backward), :math:`G^T H G` and :math:`tr(H Sigma)`. Signals:

    - ``simple``: McCandlish et al.'s simple noise scale :math:`tr(Sigma) / |G|^2`; doubles when it is at least ``k``
      times the batch (an averaged :math:`|G|^2 \le 0` reads as an infinite noise scale, as the package reports it).
    - ``simple_lb``: the package's 2-sigma lower bound on it (``GradientNoiseScale.noise_scale_lower_bound``:
      :math:`tr(Sigma) / (|G|^2 + 2 se)`, se the standard error of the averaged :math:`|G|^2`); doubles when it is
      finite and at least ``k`` times the batch: only a resolved measurement makes the batch grow.
    - ``hessian``: their Hessian-weighted :math:`B_noise = tr(H Sigma) / G^T H G`; doubles when at least ``k`` times
      the batch.
    - ``progress``: the quadratic model's loss decrease per sample of one step at batch :math:`B` with the LR
      :math:`\eta(B)` the rule gives it (``lr_at``, the effective LR), :math:`p(B) = [\eta|G|^2 - \eta^2 (G^T H G +
      tr(H Sigma)/B) / 2] / B`; doubles when :math:`p(2B) \ge (1 - k)\, p(B) > 0`: ``k`` is the loss of
      progress per sample tolerated.
    """

    measures = True

    def __init__(
        self, signal: str, k: float, target: int, smoothing: float = 0.95, warm: int = 10,
        lr_at: Callable[[int], float] | None = None,
    ) -> None:  # fmt: skip
        self.signal, self.k, self.target, self.warm, self.lr_at = signal, k, target, warm, lr_at
        self.smoothing = smoothing
        self.emas = {key: BiasCorrectedEMA(smoothing) for key in ("g2", "trs", "ghg", "trhs", "g2sq")}
        self.measurements = {"simple": 0, "hessian": 0}
        self.accumulation = 1

    def _ema(self, key: str) -> float:
        value = self.emas[key].value
        return math.nan if value is None else value

    def value(self, key: str) -> float:
        """The smoothed ``simple`` or ``hessian`` noise scale (``nan`` before its first measurement)."""
        num, den = (self._ema("trs"), self._ema("g2")) if key == "simple" else (self._ema("trhs"), self._ema("ghg"))
        if math.isnan(num) or math.isnan(den):
            return math.nan
        return num / den if den > 0 else math.inf

    def lower_bound(self) -> float:
        """``GradientNoiseScale.noise_scale_lower_bound``'s formula on these averages."""
        sq, var, sq2 = self._ema("g2"), self._ema("trs"), self._ema("g2sq")
        if math.isnan(sq):
            return math.nan
        n = min(float(self.measurements["simple"]), (1 + self.smoothing) / (1 - self.smoothing))
        stderr = math.sqrt(max(sq2 - sq * sq, 0.0) / max(n, 1.0))
        return max(var, 0.0) / (sq + 2 * stderr) if sq + 2 * stderr > 0 else math.inf

    def progress(self, batch: int) -> float:
        """:math:`p(B)`, the quadratic model's loss decrease per sample of one step at ``batch``."""
        assert self.lr_at is not None, "the progress signal needs the LR at each batch"
        eta = self.lr_at(batch)
        return (eta * self._ema("g2") - eta**2 * (self._ema("ghg") + self._ema("trhs") / batch) / 2) / batch

    @property
    def estimate(self) -> float:
        if self.signal == "progress":
            batch = self.accumulation * ROUND
            return self.progress(2 * batch) / self.progress(batch)
        if self.signal == "simple_lb":
            return self.lower_bound()
        return self.value(self.signal)

    def raw(self) -> dict[str, float]:
        return {key: self._ema(key) for key in self.emas}

    def wanted(self, consumed: float) -> int:
        return self.accumulation

    def observe(self, stats: dict[str, float]) -> None:
        for key in ("simple", "hessian"):
            if f"{key}_num" in stats:
                num, den = ("trs", "g2") if key == "simple" else ("trhs", "ghg")
                self.emas[num].update(stats[f"{key}_num"])
                self.emas[den].update(stats[f"{key}_den"])
                self.measurements[key] += 1
        if "simple_den" in stats:
            self.emas["g2sq"].update(stats["simple_den"] ** 2)
        batch = self.accumulation * ROUND
        decides = "simple" if self.signal.startswith("simple") else "hessian"
        if self.measurements[decides] < self.warm or batch >= self.target or f"{decides}_num" not in stats:
            return
        if self.signal == "progress":
            now = self.progress(batch)
            grow = now > 0 and self.progress(2 * batch) >= (1 - self.k) * now
        elif self.signal == "simple_lb":
            grow = math.isfinite(self.estimate) and self.estimate >= self.k * batch
        else:
            grow = self.estimate >= self.k * batch
        if grow:
            self.accumulation *= 2


Schedule = Fixed | Ramp | NoiseDoubling


# --------------------------------------------------------------------------- one run


def make_optimizer(setting: Setting, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if setting.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=setting.momentum)


class EpochOrder:
    """Epoch ``e`` is ``randperm(size)`` seeded with ``seed * 1_000_003 + e``: ``frontier.index_stream``'s order and
    ``examples/mnist.EpochShuffleSampler``'s."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.epoch, self.order = -1, torch.empty(0, dtype=torch.long)

    def take(self, epoch: int, start: int, stop: int) -> torch.Tensor:
        if epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self.epoch, self.order = epoch, torch.randperm(self.size, generator=g)
        return self.order[start:stop]


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _hvp(model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor, vectors: list[torch.Tensor]):
    """Hessian-vector products of the mean cross-entropy on ``(x, y)`` (model in eval mode: no dropout)."""
    model.eval()
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = _flat(grads)
    out = [_flat(torch.autograd.grad(flat @ v, params, retain_graph=True)) for v in vectors]
    model.train()
    return out


def measured_backward(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float, hessian: tuple[torch.Tensor, torch.Tensor] | None
) -> dict[str, float]:
    """Set ``.grad`` to ``weight`` times the mean gradient over ``(x, y)`` from its two halves, and return the
    two-batch statistics of ``lightning_lrbs.noise`` (and the Hessian-weighted ones with ``hessian``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    half = len(x) // 2
    g = []
    for xs, ys in ((x[:half], y[:half]), (x[half:], y[half:])):
        g.append(_flat(torch.autograd.grad(F.cross_entropy(model(xs), ys), params)))
    mean = (g[0] + g[1]) / 2
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = (mean[offset : offset + n] * weight).view_as(p).clone()
        offset += n
    small, big = float(half), float(len(x))
    s = float((g[0] @ g[0] + g[1] @ g[1]) / 2)
    ell = float(mean @ mean)
    stats = {
        "simple_num": grad_var_estimate(s, ell, small, big),
        "simple_den": grad_sq_norm_estimate(s, ell, small, big),
    }
    if hessian is not None:
        h0, h1 = _hvp(model, params, hessian[0], hessian[1], [g[0], g[1]])
        cross = float(g[0] @ h1)  # E = G^T H G (independent halves)
        diff = float(g[0] @ h0 - 2 * cross + g[1] @ h1)  # E = 2 tr(H Sigma) / half
        stats["hessian_num"] = diff * small / 2
        stats["hessian_den"] = cross
    return stats


@dataclass
class Result:
    status: str = "slow"  # reached / diverged / slow (cap)
    steps: float = math.nan  # interpolated steps to target
    samples: float = math.nan  # interpolated samples to target
    batch_at_target: int = 0
    test_acc: float = math.nan  # at the budget (equal samples)
    acc_at_target: float = math.nan
    noise_at_target: float = math.nan
    steps_run: int = 0
    samples_run: int = 0
    final_loss: float = math.nan
    growth: str = ""  # where the batch changed: consumed samples -> batch
    wall_s: float = 0.0
    trace: list[dict[str, float]] = field(default_factory=list)  # at each evaluation
    applied: list[dict[str, Any]] = field(default_factory=list)  # every step: batch, accumulation and hyperparameters
    model: nn.Module | None = None  # the weights at the end


def train(
    setting: Setting,
    data: Data,
    init: dict[str, torch.Tensor],
    schedule: Schedule,
    *,
    rule: str,
    lr: float,
    seed: int,
    target_loss: float,
    target_accumulation: int,
    budget: int | None,
    cap_steps: int,
    cap_samples: float,
    hessian_every: int = 0,
) -> Result:
    """One run. ``budget``: the samples at which test accuracy is taken (``None``: the run is the base run, whose
    budget is its own samples to target, ``ceil(steps) * 32``, measured from snapshots of the weights)."""
    torch.manual_seed(seed)
    model = build_model(setting.model)
    model.load_state_dict(init)
    model.train()
    optimizer = make_optimizer(setting, model, lr)
    scaled = Scaled(optimizer, rule, BASE_BATCH)
    order = EpochOrder(len(data.train_x), seed)
    plan = LightningAccumulation(ROUND, math.ceil(len(data.train_x) / ROUND), target_accumulation, schedule.wanted)
    h_gen = torch.Generator().manual_seed(seed + 777)
    initial = loss_now = mean_loss(model, data.eval_x, data.eval_y)
    prev = (0, 0.0, initial)  # step, consumed, loss at the last evaluation
    result = Result()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    step, consumed, last_batch = 0, 0.0, 0
    growth: list[str] = []
    start = time.perf_counter()
    for window in plan.windows():
        batch = window.accumulation * ROUND
        if batch != last_batch:
            growth.append(f"{consumed:.0f}:{batch}")
            last_batch = batch
        scaled.apply(batch)
        idx = order.take(window.epoch, window.first * ROUND, (window.first + window.size) * ROUND)
        x, y = data.train_x[idx], data.train_y[idx]
        weight = window.size / window.accumulation  # Lightning divides each micro-batch's loss by the accumulation
        optimizer.zero_grad(set_to_none=True)
        stats: dict[str, float] = {}
        if schedule.measures:
            hess = None
            if hessian_every and step % hessian_every == 0:
                pick = torch.randint(len(data.train_x), (256,), generator=h_gen)
                hess = (data.train_x[pick], data.train_y[pick])
            stats = measured_backward(model, x, y, weight, hess)
        else:
            if len(idx) == window.size * ROUND:  # full micro-batches: their mean gradient is the window's mean
                (F.cross_entropy(model(x), y) * weight).backward()
            else:  # an epoch's short last micro-batch weighs as much as a full one, as in Lightning
                for xs, ys in zip(x.split(ROUND), y.split(ROUND), strict=True):
                    (F.cross_entropy(model(xs), ys) / window.accumulation).backward()
        group = optimizer.param_groups[0]
        result.applied.append({"batch": batch, "accumulation": window.accumulation, "size": window.size,
                               **{k: group[k] for k in ("lr", "betas", "eps") if k in group}})  # fmt: skip
        optimizer.step()
        step += 1
        consumed += window.size * ROUND  # the callback counts a micro-batch round per batch
        stats["consumed"] = consumed
        schedule.observe(stats)
        if budget is None:
            snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        done = step >= cap_steps or consumed >= cap_samples
        if eval_due(step) or done:
            loss_now = mean_loss(model, data.eval_x, data.eval_y)
            estimate = getattr(schedule, "estimate", math.nan)
            signals = {}
            if isinstance(schedule, NoiseDoubling):
                signals = {"simple": schedule.value("simple"), "hessian": schedule.value("hessian"), **schedule.raw()}
            result.trace.append(
                {"step": step, "samples": consumed, "batch": batch, "lr": optimizer.param_groups[0]["lr"],
                 "loss": loss_now, **{k: signals.get(k, math.nan) for k in TRACE_FIELDS[6:]}}
            )  # fmt: skip
            if not math.isfinite(loss_now) or loss_now > DIVERGE_FACTOR * initial:
                result.status = "diverged"
                break
            if math.isnan(result.steps) and loss_now <= target_loss:
                a, b = math.log(prev[2]), math.log(loss_now)
                frac = (a - math.log(target_loss)) / (a - b) if a > b else 1.0
                result.steps = prev[0] + (step - prev[0]) * frac
                result.samples = prev[1] + (consumed - prev[1]) * frac
                result.status, result.batch_at_target = "reached", batch
                result.acc_at_target = accuracy(model, data.test_x, data.test_y)
                result.noise_at_target = estimate
                if budget is None:  # the base run: its budget is its own samples to target
                    budget = math.ceil(result.steps) * ROUND
                    probe = build_model(setting.model)
                    probe.load_state_dict(snapshots[math.ceil(result.steps)])
                    result.test_acc = accuracy(probe, data.test_x, data.test_y)
            prev = (step, consumed, loss_now)
            if budget is None:
                snapshots = {step: snapshots[step]}
        if budget is not None and math.isnan(result.test_acc) and consumed >= budget:
            result.test_acc = accuracy(model, data.test_x, data.test_y)
        if (result.status == "reached" and budget is not None and not math.isnan(result.test_acc)) or done:
            break
    result.steps_run, result.samples_run, result.final_loss = step, int(consumed), loss_now
    result.growth = " ".join(growth)
    result.wall_s = time.perf_counter() - start
    result.model = model
    return result


# --------------------------------------------------------------------------- the study


@dataclass
class Row:
    setting: str
    seed: int
    label: str
    kind: str  # search / base / fixed / ramp / noise
    rule: str
    lr: float  # the module's own (base) LR
    target_batch: int
    constants: str  # ramp: start+increment/samples; noise: signal, k
    status: str
    steps: float
    samples: float
    steps_vs_base: float
    samples_vs_base: float
    batch_at_target: int
    test_acc: float
    acc_at_target: float
    budget: int
    noise_at_target: float
    steps_run: int
    samples_run: int
    final_loss: float
    growth: str
    wall_s: float


class Study:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.setting = SETTINGS[args.setting]
        self.name = args.name or (args.setting if args.seed == 0 else f"{args.setting}_seed{args.seed}")
        eval_subset = args.eval_subset or self.setting.eval_subset
        self.data = load_data(args.data_dir, eval_subset, args.seed, args.train_subset)
        torch.manual_seed(args.seed)
        self.init = {k: v.clone() for k, v in build_model(self.setting.model).state_dict().items()}
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.csv, self.trace_csv = out / f"ramp_{self.name}.csv", out / f"trace_{self.name}.csv"
        self.done: dict[str, dict[str, Any]] = {}
        if args.resume and self.csv.is_file():
            with self.csv.open() as f:
                self.done = {row["label"]: row for row in csv.DictReader(f)}
        else:
            for path in (self.csv, self.trace_csv):
                path.unlink(missing_ok=True)
        self.base: dict[str, Any] | None = None
        self.lr = math.nan

    def run(
        self, label: str, kind: str, schedule: Schedule, rule: str, *, lr: float | None = None, target: int = 128,
        constants: str = "", own_budget: bool = False, cap_steps: int | None = None, hessian_every: int = 0,
    ) -> dict[str, Any]:  # fmt: skip
        """One run, recorded; ``own_budget``: a base run (test accuracy at its own samples to target)."""
        if label in self.done:
            return _parse(self.done[label])
        a, base = self.args, self.base
        lr = self.lr if lr is None else lr
        budget: int | None = None
        cap_samples = math.inf
        if not own_budget:
            assert base is not None, "the base run comes first"
            budget = int(base["budget"])
            cap_steps = cap_steps or math.ceil(a.cap_steps * float(base["steps"]))
            cap_samples = a.cap_samples * budget
        result = train(
            self.setting, self.data, self.init, schedule, rule=rule, lr=lr, seed=a.seed, target_loss=a.target_loss,
            target_accumulation=target // ROUND, budget=budget, cap_steps=cap_steps or self.setting.max_steps,
            cap_samples=cap_samples, hessian_every=hessian_every,
        )  # fmt: skip
        if budget is None:
            budget = math.ceil(result.steps) * ROUND if result.status == "reached" else 0
        reference = (
            base
            if base is not None
            else (
                {"steps": result.steps, "samples": result.samples}
                if kind == "base"
                else {"steps": math.nan, "samples": math.nan}
            )
        )
        base_steps, base_samples = float(reference["steps"]), float(reference["samples"])
        row = Row(
            self.name, a.seed, label, kind, rule, lr, target, constants, result.status, result.steps, result.samples,
            result.steps / base_steps, result.samples / base_samples, result.batch_at_target, result.test_acc,
            result.acc_at_target, budget, result.noise_at_target, result.steps_run, result.samples_run,
            result.final_loss, result.growth, result.wall_s,
        )  # fmt: skip
        self.record(row, result.trace)
        self.done[label] = asdict(row)
        return _parse(self.done[label])

    def record(self, row: Row, trace: list[dict[str, float]]) -> None:
        for path, rows, names in (
            (self.csv, [asdict(row)], [f.name for f in fields(Row)]),
            (self.trace_csv, [{"label": row.label, **t} for t in trace], TRACE_FIELDS),
        ):  # fmt: skip
            new = not path.is_file()
            with path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=names)
                if new:
                    writer.writeheader()
                for r in rows:
                    writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        steps = f"{row.steps:.1f} steps, {row.samples:.0f} samples" if row.status == "reached" else row.status
        print(
            f"[{row.setting}] {row.label:42s} lr={row.lr:.4g} -> {steps} ({row.steps_vs_base:.2f}x steps, "
            f"{row.samples_vs_base:.2f}x samples), test acc {row.test_acc:.4f} / {row.acc_at_target:.4f}, "
            f"batch {row.growth}, {row.wall_s:.1f}s",
            flush=True,
        )

    def tune(self) -> float:
        """Adam's base LR at batch 32: the batch-size study's line search on a sqrt(2) grid (``--base-lr-start``)."""
        unit = self.args.base_lr_start
        results: dict[int, dict[str, Any]] = {}

        def at(j: int) -> dict[str, Any]:
            if j not in results:
                lr = unit * 2 ** (j / 2)
                best = min((float(r["steps"]) for r in results.values() if r["status"] == "reached"), default=math.inf)
                cap = (
                    self.setting.max_steps if math.isinf(best) else min(self.setting.max_steps, math.ceil(2 * best) + 2)
                )
                results[j] = self.run(f"search lr={lr:.4g}", "search", Fixed(1), "linear", lr=lr, target=ROUND,
                                      own_budget=True, cap_steps=cap)  # fmt: skip
            return results[j]

        best_j = 0
        at(0)
        for direction in (1, -1):
            j = direction
            while better(at(j), at(best_j)):
                best_j = j
                j += direction
            if best_j != 0:
                break
        return unit * 2 ** (best_j / 2)


def _parse(row: dict[str, Any]) -> dict[str, Any]:
    """A recorded row with its numbers as numbers (rows read back from the CSV are strings)."""
    out = dict(row)
    for fl in fields(Row):
        value = row[fl.name]
        out[fl.name] = float(value) if fl.type == "float" else int(value) if fl.type == "int" else value
    return out


def study(args: argparse.Namespace) -> None:
    s = Study(args)
    t0 = time.perf_counter()
    setting = s.setting
    print(f"lightning_lrbs {lightning_lrbs.__version__}; setting {s.name}", flush=True)
    if args.base_lr is not None:
        s.lr = args.base_lr
    elif setting.base_lr is not None:
        s.lr = setting.base_lr
    else:
        s.lr = s.tune()
    base = s.run("base 32", "base", Fixed(1), "linear", target=ROUND, own_budget=True)
    if base["status"] != "reached":
        raise SystemExit(f"the base batch did not reach the target loss {args.target_loss}")
    s.base = base
    e0 = base["budget"]
    print(f"[{s.name}] base LR {s.lr:.4g}: {base['steps']:.1f} steps, {base['samples']:.0f} samples; E0 = {e0}")
    groups = set(args.groups)

    def ramp_run(rule: str, target: int, fraction: float) -> None:
        ramp = BatchRamp(ROUND, ROUND, int(e0 * fraction))
        constants = f"{ramp.start}+{ramp.increment}/{ramp.samples}"
        s.run(f"ramp {rule} {constants} -> {target}", "ramp", Ramp(ramp, target), rule, target=target,
              constants=constants)  # fmt: skip

    if "core" in groups:
        for rule in setting.rules:
            s.run(f"fixed 128 {rule}", "fixed", Fixed(4), rule, target=128)
        for rule in setting.ramp_rules:
            ramp_run(rule, 128, args.ramp_fraction)
    if "sensitivity" in groups:
        for rule in setting.rules:
            s.run(f"fixed 256 {rule}", "fixed", Fixed(8), rule, target=256)
        rule = setting.ramp_rules[0]
        for fraction in (args.ramp_fraction / 2, args.ramp_fraction * 2):
            ramp_run(rule, 128, fraction)
        ramp_run(rule, 256, args.ramp_fraction)

    def lr_at(rule: str) -> Callable[[int], float]:
        """The effective LR (over 1 - momentum) the rule gives a batch: the progress signal's eta."""
        return lambda batch: s.lr * scale_factor(batch / BASE_BATCH, rule) / (1 - setting.momentum)

    def noise_run(rule: str, signal: str, k: float, target: int) -> None:
        schedule = NoiseDoubling(signal, k, target, lr_at=lr_at(rule) if signal == "progress" else None)
        s.run(f"noise {rule} {signal} k={k:g} -> {target}", "noise", schedule, rule, target=target,
              constants=f"{signal} k={k:g}",
              hessian_every=args.hessian_every if signal in ("hessian", "progress") else 0)  # fmt: skip

    if "noise" in groups or "probe" in groups:
        rule = setting.ramp_rules[0]
        if "probe" in groups:  # the signals along the base run (the batch never grows)
            s.run("probe 32 simple+hessian", "probe", NoiseDoubling("simple", math.inf, ROUND), rule, target=ROUND,
                  constants="measure only", hessian_every=args.hessian_every)  # fmt: skip
        if "noise" in groups:
            for rule in args.noise_rules or setting.ramp_rules[:1]:
                for signal in args.noise_signals:
                    for k in args.noise_k:
                        for target in args.noise_targets:
                            noise_run(rule, signal, k, target)
    print(f"[{s.name}] done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--setting", choices=sorted(SETTINGS), default="mlp")
    p.add_argument("--name", default=None, help="CSV name (default: the setting, _seed<k> for seed k > 0)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out-dir", default=str(OUT_DIR))
    p.add_argument("--groups", nargs="+", default=["core", "sensitivity"],
                   choices=("core", "sensitivity", "probe", "noise"))  # fmt: skip
    p.add_argument("--target-loss", type=float, default=0.1)
    p.add_argument("--base-lr", type=float, default=None, help="override the setting's base LR")
    p.add_argument("--base-lr-start", type=float, default=0.001, help="Adam: first LR of the base search (grid unit)")
    p.add_argument("--ramp-fraction", type=float, default=0.25, help="ramp samples = this x the base's samples")
    p.add_argument("--cap-steps", type=float, default=1.5, help="runs stop after this x the base's steps ...")
    p.add_argument("--cap-samples", type=float, default=3.0, help="... or this x its samples")
    p.add_argument(
        "--noise-signals", nargs="+", default=["simple"], choices=("simple", "simple_lb", "hessian", "progress")
    )
    p.add_argument("--noise-rules", nargs="+", default=None, help="noise runs under these rules (default: the first)")
    p.add_argument("--noise-k", type=float, nargs="+", default=[8.0])
    p.add_argument("--noise-targets", type=int, nargs="+", default=[128])
    p.add_argument("--hessian-every", type=int, default=5, help="Hessian-weighted signal: every n steps")
    p.add_argument("--eval-subset", type=int, default=None, help="override the setting's evaluation subset")
    p.add_argument("--train-subset", type=int, default=None, help="train on this many images (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="keep the CSVs and skip the runs already in them")
    p.add_argument("--report", action="store_true", help="only write the figure and docs/ramp.md from the CSVs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        from ramp_report import report

        report(Path(args.out_dir))
        return 0
    study(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
