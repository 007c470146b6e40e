"""Client-streaming handlers: answer a refusal only once the caller has finished writing.

A status sent while an asyncio gRPC client is still writing its request stream races that
client's next write, and grpcio's aio client then reports INTERNAL "Internal error from Core"
instead of the status the server sent (grpc/grpc#36066). A handler that refuses a stream early
reads the rest of it first, so the caller sees the real status: bounded by the caller's deadline
where the caller has said who it is, and by ``DRAIN_SECONDS`` where the gateway's access guard
refuses a caller it does not let in (services/gateway/guard.py), so that nobody can hold a handler
by writing forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

#: How long a refused stream is read (and dropped) waiting for the client to half-close, where
#: a bound is asked for (the gateway's refusals of callers it does not admit, and its Ingest).
DRAIN_SECONDS = 5.0


async def drain(request_iterator: AsyncIterator[Any], seconds: float | None = None) -> None:
    """Read a request stream to its end, dropping what is left; give up after ``seconds`` (None: no
    bound) with ``asyncio.TimeoutError``."""

    async def read_all() -> None:
        async for _ in request_iterator:
            pass

    await asyncio.wait_for(read_all(), seconds)  # asyncio.timeout() would need Python 3.11


async def drain_quietly(request_iterator: AsyncIterator[Any], seconds: float = DRAIN_SECONDS) -> None:
    """:func:`drain` for a call that is being refused anyway: a stream that fails to read (the
    caller went away) or outlasts ``seconds`` ends the drain, and the refusal is answered."""
    try:
        await drain(request_iterator, seconds)
    except Exception:  # noqa: BLE001 - TimeoutError or a failed read: whatever the stream does, the refusal stands
        pass
