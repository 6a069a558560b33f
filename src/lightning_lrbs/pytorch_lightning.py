"""Batch scaling for projects that ``import pytorch_lightning as pl``.

The ``lightning`` and ``pytorch_lightning`` packages ship the same Trainer under two namespaces whose classes are
distinct: a callback must subclass the ``Callback`` of the namespace its Trainer comes from, or
``pytorch_lightning.cli.LightningCLI`` refuses it, ``isinstance(cb, pytorch_lightning.Callback)`` is ``False`` and type
checkers reject ``pytorch_lightning.Trainer(callbacks=[...])``. The rank-zero logging and the batch-size helpers must
also come from the namespace the Trainer runs on.

:class:`BatchScalingCallback` here is :class:`lightning_lrbs.BatchScalingCallback` for ``pytorch_lightning``: same
arguments, behaviour, logs and checkpoint state (stored under the same ``state_key``, ``"BatchScalingCallback"``,
so checkpoints move between the two namespaces). It needs ``pip install pytorch-lightning``.

Example::

    >>> import pytorch_lightning as pl
    >>> from lightning_lrbs.pytorch_lightning import BatchScalingCallback
    >>> trainer = pl.Trainer(callbacks=[BatchScalingCallback(base_batch_size=32, rule="sqrt")], logger=False)
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

try:
    import pytorch_lightning
except ModuleNotFoundError as error:  # pragma: no cover - exercised in an environment without the package
    if error.name != "pytorch_lightning":
        raise
    raise ModuleNotFoundError(
        "`lightning_lrbs.pytorch_lightning` is the callback for `pytorch_lightning.Trainer` and needs the "
        "`pytorch_lightning` package: `pip install pytorch-lightning`. With the `lightning` package, use "
        "`from lightning_lrbs import BatchScalingCallback`.",
        name=error.name,
    ) from error

from lightning_lrbs import callback as _callback
from lightning_lrbs import plugin as _plugin

__all__ = ["BatchScalingCallback", "EnvironmentBatchScalingCallback"]


# The two bases annotate their hooks with their own namespace's Trainer; at run time both are the same code.
class BatchScalingCallback(_callback.BatchScalingCallback, pytorch_lightning.Callback):  # type: ignore[misc]
    """:class:`lightning_lrbs.BatchScalingCallback` for ``pytorch_lightning.Trainer``: same arguments and behaviour.

    Example::

        >>> import pytorch_lightning as pl
        >>> from lightning_lrbs.pytorch_lightning import BatchScalingCallback
        >>> isinstance(BatchScalingCallback(), pl.Callback)
        True
    """

    _pl: ClassVar[ModuleType] = pytorch_lightning


class EnvironmentBatchScalingCallback(_plugin.EnvironmentBatchScalingCallback, BatchScalingCallback):  # type: ignore[misc]
    """:class:`lightning_lrbs.plugin.EnvironmentBatchScalingCallback` for ``pytorch_lightning.Trainer``: what the
    entry point ``pytorch_lightning.callbacks_factory`` adds when ``LRBS_*`` variables are set."""
