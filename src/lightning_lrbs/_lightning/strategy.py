"""What the strategy says about the processes: how many data-parallel replicas the data is sharded over, which
processes compute the same micro-batches (tensor parallelism), every replica's batch size, and which strategies the
features that read per-rank gradients are verified on.

Lightning tells every strategy's sampler how to shard the data through ``strategy.distributed_sampler_kwargs``
(``num_replicas``, ``rank``): the world size under DDP, FSDP and DeepSpeed, the size of the ``"data_parallel"`` mesh
dimension under ``ModelParallelStrategy``, where the ranks of one tensor-parallel group feed the same samples.
Single-device strategies have none: one replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

__all__: list[str] = []


@dataclass(frozen=True)
class Parallelism:
    """How a Trainer's processes split the work.

    Attributes:
        world_size: The processes.
        replicas: The data-parallel size: the number of distinct shards of the data, each fed by ``group_size``
            processes.
        replica: This process's data-parallel rank.
        group_size: The processes that feed the same samples (the tensor-parallel size; 1 without it).
        group_rank: This process's rank among them.
    """

    world_size: int
    replicas: int
    replica: int
    group_size: int
    group_rank: int


def parallelism(trainer: Any) -> Parallelism:
    """The Trainer's :class:`Parallelism`, from its strategy's sampler arguments."""
    world = int(trainer.world_size)
    kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None)
    if not kwargs:  # single device
        return Parallelism(world, 1, 0, world, int(trainer.global_rank))
    replicas, replica = int(kwargs["num_replicas"]), int(kwargs["rank"])
    group = max(world // max(replicas, 1), 1)
    mesh: Any = getattr(trainer.strategy, "_device_mesh", None)  # ModelParallelStrategy's
    names = getattr(mesh, "mesh_dim_names", None) or ()
    rank = mesh["tensor_parallel"].get_local_rank() if "tensor_parallel" in names else int(trainer.global_rank) % group
    return Parallelism(world, replicas, replica, group, int(rank))


def replica_sizes(trainer: Any, local: int) -> list[int]:
    """Every data-parallel replica's batch size, in replica order, identical on all ranks (the sizes of the ranks that
    feed one replica's samples count once)."""
    layout = parallelism(trainer)
    tensor = torch.tensor([layout.replica, local], dtype=torch.long, device=trainer.strategy.root_device)
    gathered = trainer.strategy.all_gather(tensor).reshape(-1, 2).tolist()
    sizes: dict[int, int] = {}
    for replica, size in gathered:
        sizes.setdefault(int(replica), int(size))
    return [sizes[r] for r in sorted(sizes)]


def micro_batches(trainer: Any, accumulation: int) -> int:
    """Distinct micro-batch gradients per optimizer step: data-parallel replicas × accumulation (the noise scale needs
    2 or more)."""
    return parallelism(trainer).replicas * int(accumulation)


def one_replica(trainer: Any) -> str:
    """How to name a run with a single data-parallel replica in messages: ``one device``, or ``one data-parallel
    replica (2 devices, tensor parallel)``."""
    world = int(trainer.world_size)
    return "one device" if world == 1 else f"one data-parallel replica ({world} devices, tensor parallel)"


def describe(trainer: Any) -> str | None:
    """``"2 data-parallel (4 devices: tensor parallel 2)"`` when the processes are not all data-parallel, else
    ``None`` (the summary names devices and nodes)."""
    layout = parallelism(trainer)
    if layout.group_size == 1:
        return None
    return f"{layout.replicas} data-parallel ({layout.world_size} devices: tensor parallel {layout.group_size})"


def unverified_for_gradients(pl: ModuleType, trainer: Any) -> str | None:
    """The name of the Trainer's strategy when the features that read per-rank gradients (the noise scale, AdaScale)
    are not verified on it (``FSDPStrategy`` and ``DeepSpeedStrategy``, which keep gradients in flat buffers of
    their own and refuse the CPU this package is tested on), else ``None``."""
    for name in ("FSDPStrategy", "DeepSpeedStrategy"):
        cls = getattr(pl.strategies, name, None)
        if cls is not None and isinstance(trainer.strategy, cls):
            return name
    return None
