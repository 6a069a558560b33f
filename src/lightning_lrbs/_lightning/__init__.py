"""Adapters: what the components read from, check on and write to a Lightning Trainer, one module per thing read.

Plain functions that hold no state: :mod:`.loaders` (batch sizes, accumulation), :mod:`.strategy` (ranks),
:mod:`.fit_loop` (limits, scheduler stepping, logging), :mod:`.precision` (AMP loss scale) and :mod:`.callbacks` (the
Trainer's other callbacks). They import no Lightning: a function that needs a Lightning class takes the namespace as
``pl`` (``lightning.pytorch``, or ``pytorch_lightning`` for :mod:`lightning_lrbs.pytorch_lightning`), so the callback of
either namespace reads its own Trainer's classes. Every private Lightning attribute the package touches is read here.
"""
