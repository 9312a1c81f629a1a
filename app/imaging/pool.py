"""The decode threads: a thread pool that knows how many of its tasks are outstanding."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class DecodePool(ThreadPoolExecutor):
    """The decode threads, counting their outstanding tasks so that work can borrow a thread that
    would otherwise sit idle.

    `submit_if_idle` runs a task only when fewer tasks are queued or running than there are
    threads: an idle thread picks it up at once. When every thread has work it returns None and
    the caller does the work itself, so borrowing never puts one request's work ahead of another
    request's decode.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "preprocess") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.workers = max_workers
        self._outstanding = 0
        self._lock = threading.Lock()

    @property
    def outstanding(self) -> int:
        """Tasks submitted and not yet finished (queued or running)."""
        return self._outstanding

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            self._outstanding += 1
        return self._counted(fn, args, kwargs)

    def submit_if_idle(self, fn: Callable[..., Any], /, *args: Any) -> Future | None:
        """Submit `fn(*args)` if a thread is free to start it now; otherwise None."""
        with self._lock:
            if self._outstanding >= self.workers:
                return None
            self._outstanding += 1
        return self._counted(fn, args, {})

    def _counted(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Future:
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:  # shut down: the task never existed
            self._finished(None)
            raise
        future.add_done_callback(self._finished)  # also runs on cancel()
        return future

    def _finished(self, _: Future | None) -> None:
        with self._lock:
            self._outstanding -= 1
