"""What the precision plugin does to the gradients the noise estimator reads: the fp16 AMP loss scale and Lightning's
division of each micro-batch loss by the accumulation."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

__all__: list[str] = []


def loss_scaler(trainer: Any) -> Any:
    """The enabled fp16 AMP gradient scaler of the Trainer's precision plugin, else ``None``."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def micro_batch_loss_scale(trainer: Any) -> float:
    """What the gradients the hooks see are scaled by against the micro-batch's mean loss: the fp16 AMP loss scale,
    over ``accumulate_grad_batches`` (Lightning divides each micro-batch's loss by it)."""
    scaler = loss_scaler(trainer)
    amp = float(scaler.get_scale()) if scaler is not None else 1.0
    return float(amp / trainer.accumulate_grad_batches)


def step_grad_scale(trainer: Any, optimizer: Optimizer, local_micro_batches: int) -> float:
    """What ``.grad`` before ``optimizer.step`` is scaled by against the mean of this rank's micro-batch gradients:
    micro-batches / ``accumulate_grad_batches``, and the fp16 AMP loss scale for fused optimizers, which unscale
    inside ``step`` (``.grad`` is still scaled)."""
    scale = max(local_micro_batches, 1) / trainer.accumulate_grad_batches
    scaler = loss_scaler(trainer)
    if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
        scale *= float(scaler.get_scale())
    return float(scale)
