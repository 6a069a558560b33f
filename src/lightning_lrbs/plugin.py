"""Trainer plugin: a ``BatchScalingCallback`` from ``LRBS_*`` environment variables, with no change to the project.

Lightning extends the callbacks of every ``Trainer`` it builds with the lists returned by the factories registered
under the entry-point group ``lightning.pytorch.callbacks_factory`` (``pytorch_lightning.callbacks_factory`` for
``pytorch_lightning.Trainer``): ``_CallbackConnector.on_trainer_init`` calls
``lightning.fabric.utilities.registry._load_external_callbacks``, which calls each factory without arguments. This
package registers :func:`lightning_callbacks` and :func:`pytorch_lightning_callbacks` there (``pyproject.toml``). They
return ``[]`` unless the ``LRBS_*`` variables ask for the callback (:mod:`lightning_lrbs.environment`), so

.. code-block:: bash

    LRBS_BASE_BATCH_SIZE=256 LRBS_RULE=sqrt LRBS_WARMUP_EPOCHS=1 torchrun --nproc-per-node 8 train.py

scales an unmodified ``train.py``. An unknown variable, a value that does not parse and an argument the callback
refuses raise a ``ValueError`` naming the variable and its value when the ``Trainer`` is built.

**The code wins.** A ``Trainer`` that already has a :class:`~lightning_lrbs.BatchScalingCallback` (passed in code, from
a LightningCLI config, a subclass, or returned by ``LightningModule.configure_callbacks``) keeps it: the callback from
the environment leaves the Trainer's callbacks in its ``setup`` hook, with one info line. Until then its ``state_key``
is its own class name, so Lightning's check for two stateful callbacks with one key (run when the ``Trainer`` is
built, before any hook could tell) never fails; from ``setup`` on it is ``"BatchScalingCallback"``, so checkpoints move
between the callback from the environment and one in code, both ways.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from typing_extensions import Self, override

from lightning_lrbs.callback import BatchScalingCallback
from lightning_lrbs.environment import SOURCE_NOTE, describe, parse_environment, setting_variables, variables_named_in

__all__ = ["EnvironmentBatchScalingCallback", "lightning_callbacks", "pytorch_lightning_callbacks"]


class EnvironmentBatchScalingCallback(BatchScalingCallback):
    """:class:`~lightning_lrbs.BatchScalingCallback` configured by ``LRBS_*`` environment variables, which steps aside
    for one configured in the code.

    Build it with :meth:`from_environment`; the entry-point factories do.

    Args:
        variables: The ``LRBS_*`` variables it was built from (for its messages), by name.
        **kwargs: The arguments of :class:`~lightning_lrbs.BatchScalingCallback`.

    Raises:
        ValueError: As :class:`~lightning_lrbs.BatchScalingCallback`, and in ``setup`` if the processes of a
            distributed run were launched with different ``LRBS_*`` variables.

    Example::

        >>> callback = EnvironmentBatchScalingCallback.from_environment({"LRBS_RULE": "sqrt"})
        >>> callback.rule, callback.variables
        ('sqrt', {'LRBS_RULE': 'sqrt'})
        >>> EnvironmentBatchScalingCallback.from_environment({}) is None
        True
    """

    def __init__(self, variables: Mapping[str, str], **kwargs: Any) -> None:
        self.variables = dict(variables)
        self._in_charge = False  # set in `setup` when no callback from the code takes precedence
        super().__init__(**kwargs)
        self._summary.note = SOURCE_NOTE  # the summary line says where its settings came from

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Self | None:
        """The callback the ``LRBS_*`` variables ask for, or ``None`` when they ask for none.

        Args:
            environ: The environment to read; ``None`` reads ``os.environ``.

        Raises:
            ValueError: For an unknown variable, a value that does not parse, or an argument the callback refuses;
                the message names the variables and their values.
        """
        environ = os.environ if environ is None else environ
        kwargs = parse_environment(environ)
        if kwargs is None:
            return None
        variables = setting_variables(environ)
        try:
            return cls(variables, **kwargs)
        except ValueError as error:
            named = variables_named_in(str(error), variables) or variables
            raise ValueError(f"{describe(named)}: {error}") from error

    @property
    @override
    def state_key(self) -> str:
        # The code's key once in charge (checkpoints move both ways); its own until then, so that Lightning's check
        # for duplicate keys at Trainer construction passes beside a callback from the code.
        return BatchScalingCallback.__qualname__ if self._in_charge else super().state_key

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        callbacks: list[pl.Callback] = getattr(trainer, "callbacks", [])
        owner = next(
            (
                c
                for c in callbacks
                if isinstance(c, BatchScalingCallback) and not isinstance(c, EnvironmentBatchScalingCallback)
            ),
            None,
        )
        if owner is not None:
            self._step_aside(trainer, owner)
            return
        self._check_every_rank_agrees(trainer)
        self._in_charge = True
        super().setup(trainer, pl_module, stage)

    def _step_aside(self, trainer: Any, owner: BatchScalingCallback) -> None:
        """Leave the Trainer's callbacks to the one from the code (a new list: the hook loop runs over the old one)."""
        trainer.callbacks = [c for c in trainer.callbacks if c is not self]
        self._in_charge = False
        self._pl.utilities.rank_zero.rank_zero_info(
            f"{type(self).__name__}: the Trainer already has a {type(owner).__name__} from the code, which wins; the "
            f"LRBS_* environment variables ({describe(self.variables)}) are not used"
        )

    def _check_every_rank_agrees(self, trainer: Any) -> None:
        """Raise on every rank when any rank was launched with other ``LRBS_*`` variables than rank 0."""
        if trainer.world_size <= 1:
            return
        mine = sorted(self.variables.items())
        first = trainer.strategy.broadcast(mine, src=0)
        if not trainer.strategy.reduce_boolean_decision(first != mine, all=False):
            return
        if first != mine:
            other = f"rank 0 was launched with {describe(dict(first))}"
        else:
            other = "another rank was launched with other LRBS_* variables"
        raise ValueError(
            f"the processes of this run disagree: rank {trainer.global_rank} was launched with "
            f"{describe(self.variables)}, {other}; launch every process with the same LRBS_* environment variables"
        )


def lightning_callbacks() -> list[EnvironmentBatchScalingCallback]:
    """The factory of the entry-point group ``lightning.pytorch.callbacks_factory``: the callback the ``LRBS_*``
    variables ask for, or ``[]``.

    Raises:
        ValueError: As :meth:`EnvironmentBatchScalingCallback.from_environment`.
    """
    callback = EnvironmentBatchScalingCallback.from_environment()
    return [] if callback is None else [callback]


def pytorch_lightning_callbacks() -> list[EnvironmentBatchScalingCallback]:
    """The factory of the entry-point group ``pytorch_lightning.callbacks_factory``: as :func:`lightning_callbacks`,
    with :class:`lightning_lrbs.pytorch_lightning.BatchScalingCallback`'s subclass.

    Raises:
        ValueError: As :meth:`EnvironmentBatchScalingCallback.from_environment`.
    """
    from lightning_lrbs.pytorch_lightning import EnvironmentBatchScalingCallback as ForPytorchLightning

    callback = ForPytorchLightning.from_environment()
    return [] if callback is None else [callback]
