"""A lock many users share or one owner holds alone (a readers-writer lock that prefers the
writer): the embedded engine's open shards (queries and writes share it, closing and swapping
own it) and the retrieval write gate (writes share it, a reindex's catch-up owns it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    """Many users at once (:meth:`shared`) or one owner alone (:meth:`owned`); an owner waiting
    goes before new users, so a steady stream of users cannot starve it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._users = 0
        self._owner = False
        self._waiting = 0

    def free(self) -> bool:
        """Whether :meth:`shared` would enter now without waiting (no owner holds it or waits)."""
        with self._cond:
            return not (self._owner or self._waiting)

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._owner or self._waiting:
                self._cond.wait()
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                if not self._users:
                    self._cond.notify_all()

    @contextmanager
    def owned(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._owner or self._users:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._owner = True
        try:
            yield
        finally:
            with self._cond:
                self._owner = False
                self._cond.notify_all()
