"""A one-way channel from spawned worker processes back to the process that started them.

Pure Python (``multiprocessing``), no Lightning import.

Under ``strategy="ddp_spawn"`` Lightning pickles the Trainer, its callbacks included, into each worker: the callback
object the user holds in the launching process never sees the fit. Lightning itself brings a few results back
(``ModelCheckpoint.best_model_path``, ``trainer.callback_metrics``) through the queue of its launcher
(``lightning.pytorch.strategies.launchers.multiprocessing``: ``_WorkerOutput``, ``get_extra_results``,
``update_main_process_results``); a callback has no hook in the launching process to receive anything there.

:class:`ResultChannel` does it without touching Lightning: when it is pickled *for a process spawn*
(``multiprocessing.context.get_spawning_popen()`` is set, as during ``Process.start`` with the ``spawn`` or
``forkserver`` start method), it creates a pipe-backed ``SimpleQueue`` and travels with it; a worker
:meth:`~ResultChannel.send`\\ s a small picklable value, the launching process :meth:`~ResultChannel.receive`\\ s the
latest one after the workers have ended. Any other pickling or copy (a checkpoint, ``copy.deepcopy``) carries no
queue, and nothing is sent.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
from typing import Any

__all__ = ["ResultChannel"]


class ResultChannel:
    """Carries a value from a spawned worker back to the object it was pickled from.

    Example::

        >>> channel = ResultChannel()
        >>> channel.send({"a": 1})  # not in a spawned worker: nothing to send to
        >>> channel.receive() is None, channel.get("a", 0)
        (True, 0)
    """

    def __init__(self) -> None:
        self._queue: Any = None
        self._owner_pid: int | None = None
        self._latest: Any = None  # the latest mapping received, kept until `forget`

    def __getstate__(self) -> dict[str, Any]:
        if multiprocessing.context.get_spawning_popen() is None:  # not pickled for a spawned process
            return {"_queue": None, "_owner_pid": None}
        if self._queue is None or self._owner_pid != os.getpid():
            self._queue = multiprocessing.get_context("spawn").SimpleQueue()
            self._owner_pid = os.getpid()
        return {"_queue": self._queue, "_owner_pid": self._owner_pid}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._queue = state["_queue"]
        self._owner_pid = state["_owner_pid"]
        self._latest = None

    def send(self, value: Any) -> None:
        """Send ``value`` (small and picklable) to the launching process; does nothing outside a spawned worker."""
        if self._queue is not None and self._owner_pid != os.getpid():
            self._queue.put(value)

    def receive(self) -> Any:
        """The latest value a worker sent and not yet received here, or ``None``; only in the launching process."""
        if self._queue is None or self._owner_pid != os.getpid():
            return None
        latest = None
        while not self._queue.empty():
            latest = self._queue.get()
        return latest

    def get(self, key: str, local: Any) -> Any:
        """``[key]`` of the latest mapping the workers sent (kept until :meth:`forget`), else ``local``."""
        report = self.receive()
        if report is not None:
            self._latest = report
        return self._latest[key] if self._latest is not None else local

    def forget(self) -> None:
        """Drop what the workers sent so far: a new run starts."""
        self.receive()
        self._latest = None
