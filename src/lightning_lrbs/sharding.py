r"""Where a micro-batch's gradient lives when the model is sharded, and how its squared norm adds up over ranks.

Pure PyTorch (``torch.distributed``), no Lightning import. Used by :class:`~lightning_lrbs.noise.GradientNoiseScale`.

- **DDP** (and one process): parameters are plain tensors. ``Tensor.register_hook`` sees the rank's local micro-batch
  gradient; after backward ``.grad`` holds the mean over ranks, the same on every rank.
- **FSDP2** (``torch.distributed.fsdp.fully_shard``): the optimizer holds sharded ``DTensor`` parameters that forward
  never touches. Forward and backward run on an *unsharded twin* that FSDP all-gathers; a micro-batch's local
  gradient exists only there, before FSDP reduce-scatters it into the sharded ``.grad`` (the mean over the
  data-parallel ranks, each rank holding a shard). Hooks on the sharded parameters never fire; :func:`hook_targets`
  finds the twins (made once with ``FSDPModule.unshard`` / ``reshard``, kept by FSDP for the rest of training).
- **Tensor parallelism** (``parallelize_module``): parameters and gradients are ``DTensor``\ s sharded or replicated
  over the tensor-parallel ranks, which all compute the same micro-batch; combined with FSDP2 the twin is a
  tensor-parallel ``DTensor``.

A ``DTensor``'s squared norm is the sum of its local pieces' squared norms over the ranks that hold *distinct*
pieces. :func:`local_sq_norm` returns a rank's local part scaled by :math:`1/n_\text{copies}`, the number of ranks
holding each piece (the product of the mesh sizes of its ``Replicate`` dimensions), so that a sum over all ranks
counts every piece once:

.. math::

    |g|^2 = \sum_{\text{ranks } r} \frac{|g_r|^2}{n_\text{copies}}.

A ``Partial`` placement (pending sums) is first reduced to ``Replicate`` (a collective, on every rank alike).

FSDP2's twins are read from its state (``FSDPModule._get_fsdp_state()``, ``FSDPParam._unsharded_param``): private
attributes of ``torch.distributed.fsdp`` (checked with torch 2.14; :func:`fsdp_twins` raises a ``RuntimeError``
naming what it did not find, rather than measuring the wrong tensors).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["fsdp_twins", "hook_targets", "is_dtensor", "local_sq_norm", "replication"]

try:  # torch >= 2.4 with distributed support
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover - a torch build without distributed support
    DTensor = Replicate = None  # type: ignore[assignment,misc]


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor``."""
    return DTensor is not None and isinstance(tensor, DTensor)


def replication(tensor: Tensor) -> int:
    """How many ranks hold each piece of ``tensor``: 1 for a plain tensor, else the product of the sizes of the mesh
    dimensions on which its placement is ``Replicate``."""
    if not is_dtensor(tensor):
        return 1
    copies = 1
    for dim, placement in enumerate(tensor.placements):  # type: ignore[attr-defined]
        if placement.is_replicate():
            copies *= tensor.device_mesh.size(dim)  # type: ignore[attr-defined]
    return copies


def local_sq_norm(tensor: Tensor) -> Tensor:
    r"""This rank's share of :math:`|t|^2` (float32, on the tensor's device): the squared norm of its local piece over
    :func:`replication`, so that the sum over all ranks is :math:`|t|^2`. A plain tensor gives its squared norm.

    Example::

        >>> local_sq_norm(torch.tensor([3.0, 4.0]))
        tensor(25.)
    """
    copies = 1
    if is_dtensor(tensor):
        placements = tensor.placements  # type: ignore[attr-defined]
        if any(p.is_partial() for p in placements):  # pending sums: reduce them first
            tensor = tensor.redistribute(  # type: ignore[attr-defined]
                tensor.device_mesh,  # type: ignore[attr-defined]
                [Replicate() if p.is_partial() else p for p in placements],
            )
        copies = replication(tensor)
        tensor = tensor.to_local()  # type: ignore[attr-defined]
    flat = tensor.detach().float().reshape(-1)
    sq = torch.dot(flat, flat)
    return sq / copies if copies != 1 else sq


def fsdp_twins(modules: Iterable[torch.nn.Module]) -> dict[int, tuple[Any, Any]]:
    """``id(sharded parameter) -> (FSDPModule, FSDPParam)`` for every parameter FSDP2 manages in ``modules`` (e.g.
    ``model.modules()``); ``{}`` without FSDP2.

    Raises:
        RuntimeError: If an FSDP2 module does not expose its parameters the way this package reads them.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return {}
    found: dict[int, tuple[Any, Any]] = {}
    for module in modules:
        if not isinstance(module, FSDPModule):
            continue
        try:
            state = module._get_fsdp_state()
            groups = list(getattr(state, "_fsdp_param_groups", None) or [state._fsdp_param_group])
            pairs = [(fp.sharded_param, fp) for group in groups if group is not None for fp in group.fsdp_params]
        except AttributeError as error:  # pragma: no cover - another torch's FSDP2 internals
            raise RuntimeError(
                f"the gradient noise scale reads FSDP2's unsharded parameters from its state, and this torch "
                f"{torch.__version__} does not expose them as expected ({error})"
            ) from error
        for sharded, fsdp_param in pairs:
            found[id(sharded)] = (module, fsdp_param)
    return found


def hook_targets(params: Sequence[Tensor], modules: Iterable[torch.nn.Module] = ()) -> list[Tensor]:
    """For each of ``params``, the tensor whose ``register_hook`` sees each micro-batch's local gradient: the
    parameter itself, or, for a parameter FSDP2 manages in ``modules``, its unsharded twin (made now, on every rank,
    with one ``unshard`` / ``reshard`` of its module when it does not exist yet: call it on all ranks alike, before a
    forward pass)."""
    twins = fsdp_twins(modules)
    if not twins:
        return list(params)
    for module in dict.fromkeys(m for m, fp in twins.values() if getattr(fp, "_unsharded_param", None) is None):
        module.unshard()
        module.reshard()
    targets = []
    for param in params:
        twin = twins.get(id(param))
        target = None if twin is None else getattr(twin[1], "_unsharded_param", None)
        if twin is not None and target is None:  # pragma: no cover - another torch's FSDP2 internals
            raise RuntimeError(f"FSDP2 made no unsharded parameter for a parameter of shape {tuple(param.shape)}")
        targets.append(param if target is None else target)
    return targets
