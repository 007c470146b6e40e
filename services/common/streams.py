"""Client-streaming handlers: answer a refusal only once the caller has finished writing.

A status sent while an asyncio gRPC client is still writing its request stream races that
client's next write, and grpcio's aio client then reports INTERNAL "Internal error from Core"
instead of the status the server sent (grpc/grpc#36066). A handler that refuses a stream early
reads the rest of it first (bounded by the caller's deadline), so the caller sees the real status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


async def drain(request_iterator: AsyncIterator[Any]) -> None:
    """Read a request stream to its end, dropping what is left."""
    async for _ in request_iterator:
        pass
