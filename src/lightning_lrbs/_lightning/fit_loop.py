"""What the callback reads from and writes to the fit loop: its limits (lifted and restored), stopping after the
current step, the schedulers' stepping ``frequency``, and logging at the step Lightning logs at."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__: list[str] = []

#: A ``frequency`` at which Lightning never steps a scheduler (``(batch_idx + 1) % frequency`` is never 0).
NEVER = 2**62


def stop_after_this_step(trainer: Any) -> None:
    """End the fit as ``max_steps`` would, now: after the current batch, or before the first one (``max_steps`` wins
    over ``min_epochs``/``min_steps``, as for a Trainer that reaches it; :func:`restore_limits` puts it back)."""
    trainer.fit_loop.epoch_loop.max_steps = trainer.global_step


def lift_limits(
    trainer: Any, epochs: bool = True, intervals: Sequence[str] = ("step", "epoch")
) -> tuple[Any, Any, list[int]]:
    """Let the run go on past ``max_steps`` and, with ``epochs``, ``max_epochs`` (the callback stops it), and keep
    Lightning from stepping the schedulers of the given ``intervals`` (the callback steps them); return what
    :func:`restore_limits` puts back."""
    fit_loop = trainer.fit_loop
    held = (fit_loop.max_epochs, fit_loop.max_steps, [config.frequency for config in trainer.lr_scheduler_configs])
    # A `max_steps` the user set stays set (only larger): Lightning restarts a resumed fit by steps when it is not -1.
    if epochs:
        fit_loop.max_epochs = -1
    fit_loop.epoch_loop.max_steps = -1 if fit_loop.max_steps == -1 else NEVER
    for config in trainer.lr_scheduler_configs:
        if config.interval in intervals:
            config.frequency = NEVER
    return held


def batches_this_epoch(trainer: Any) -> int:
    """The training batches of the current epoch so far (Lightning steps when it divides by the accumulation)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def batches_done_on_resume(trainer: Any) -> int:
    """The batches of the current epoch a resumed fit counts as done when training (re)starts: those of the restored
    epoch when its checkpoint was saved mid-epoch (Lightning counts a batch whose ``on_train_batch_end`` the checkpoint
    saw as done, and replays one it saw before that), else 0 (a new epoch starts)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    if not epoch_loop.restarting:
        return 0
    current = epoch_loop.batch_progress.current
    # Lightning's own rule: from 2.5 on, a batch whose `on_train_batch_end` the checkpoint saw counts as done; before,
    # (and for a checkpoint saved elsewhere in a batch) the fit goes on from the completed ones, replaying the rest
    saw_batch_end = bool(getattr(epoch_loop, "restarted_on_train_batch_end", False))
    done = int(current.processed if saw_batch_end else current.completed)
    return 0 if done >= trainer.num_training_batches else done  # saved after the epoch's last batch: the next one


def restore_limits(trainer: Any, held: tuple[Any, Any, list[int]]) -> None:
    """Undo :func:`lift_limits`."""
    trainer.fit_loop.max_epochs, trainer.fit_loop.epoch_loop.max_steps, frequencies = held
    for config, frequency in zip(trainer.lr_scheduler_configs, frequencies):
        config.frequency = frequency


def logs_now(trainer: Any) -> bool:
    """Whether the Trainer logs at this step (``log_every_n_steps``); ``True`` outside its fit loop."""
    connector = getattr(trainer, "_logger_connector", None)
    return connector is None or bool(connector.should_update_logs)


def log_metrics(trainer: Any, metrics: dict[str, float]) -> None:
    """Log ``metrics`` to every logger at the step Lightning's own ``self.log`` uses."""
    step = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", trainer.global_step)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def scheduled(trainer: Any) -> list[tuple[Any, str | None]]:
    """``(optimizer, name)`` of each of the Trainer's scheduler configs, as ``LearningRateMonitor`` names them."""
    pairs = [(getattr(c.scheduler, "optimizer", None), c.name) for c in trainer.lr_scheduler_configs]
    return [(o, n) for o, n in pairs if o is not None]
