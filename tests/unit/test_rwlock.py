"""services/common/locks.py: the readers-writer lock the embedded engine's shards share, and
whether a reader would enter it now without waiting (what lets a search run on the event loop)."""

from __future__ import annotations

import threading
import time

from services.common.locks import ReadWriteLock


def test_free_while_only_users_hold_it_and_not_while_an_owner_holds_or_waits():
    lock = ReadWriteLock()
    assert lock.free()
    with lock.shared():
        assert lock.free()  # more users may enter
        waiting = threading.Event()

        def owner():
            waiting.set()
            with lock.owned():
                pass

        thread = threading.Thread(target=owner)
        thread.start()
        waiting.wait(5)
        deadline = time.monotonic() + 5
        while lock.free() and time.monotonic() < deadline:  # the owner is queued behind this user
            time.sleep(0.001)
        assert not lock.free()
    thread.join(5)
    assert not thread.is_alive() and lock.free()
    with lock.owned():
        assert not lock.free()
    assert lock.free()
