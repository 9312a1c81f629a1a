"""DecodePool: the count of outstanding tasks that lets a resize borrow only an idle thread."""

from __future__ import annotations

import threading

from app.imaging import (
    DecodePool,
)


def test_decode_pool_counts_queued_running_and_cancelled_tasks() -> None:
    release = threading.Event()
    with DecodePool(1) as pool:
        running = pool.submit(release.wait)
        assert pool.submit_if_idle(int) is None  # the one thread is busy
        queued = pool.submit(int, 7)
        assert pool.outstanding == 2
        assert queued.cancel() and pool.outstanding == 1
        release.set()
        running.result(timeout=10)
        assert pool.outstanding == 0
        idle = pool.submit_if_idle(int, 3)
        assert idle is not None and idle.result(timeout=10) == 3
    assert pool.outstanding == 0
