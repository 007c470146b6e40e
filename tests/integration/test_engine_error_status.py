"""An engine error through the real retrieval server over gRPC (services.common.server.run with
the retrieval service, its models and Qdrant Edge): a collection whose shard handle was closed
under it, as a swap retires one, answers UNAVAILABLE with retry advice, not INTERNAL
(services/common/status.py, ``ENGINE_ERRORS``; every row: tests/store/test_engine_errors.py)."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from search.v1 import common_pb2, retrieval_service_pb2 as pb, retrieval_service_pb2_grpc as pb_grpc
from services.common import config as cfg
from services.common.server import Endpoint, run
from services.retrieval.config import RetrievalConfig
from services.retrieval.server import RetrievalService
from tests.conftest import require_models
from services.cli.procs import free_port, wait_serving

pytestmark = pytest.mark.integration


def edge_backend(service: RetrievalService):
    """The Qdrant Edge backend under the service's write versions."""
    return service._backend.backend


async def test_a_closed_shard_answers_unavailable_with_retry_advice(tmp_path):
    require_models()
    port = free_port()
    env = {**os.environ, "QDRANT_PATH": str(tmp_path / "qdrant"), "RETRIEVAL_FUSION_CALIBRATION": "false",
           "ORT_INTRA_OP_THREADS": "1"}
    service = RetrievalService(cfg.load(RetrievalConfig, None, env))
    stop = asyncio.Event()
    server = asyncio.ensure_future(run(service, Endpoint("127.0.0.1", port, 0, 0.5), stop_event=stop))
    address = f"127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_serving, address, 180)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            await stub.CreateCollection(pb.RetrievalServiceCreateCollectionRequest(name="c"), timeout=60)
            docs = [common_pb2.Document(id="tides", text="The moon's pull raises the tides twice a day.")]
            await stub.Upsert(pb.RetrievalServiceUpsertRequest(collection="c", documents=docs), timeout=60)
            assert (await stub.Retrieve(pb.RetrieveRequest(collection="c", query="moon tides"), timeout=60)).candidates

            collection = edge_backend(service)._get("c")
            collection.shard.close()  # the state of the handle a swap retires
            try:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Retrieve(pb.RetrieveRequest(collection="c", query="moon tides"), timeout=60)
            finally:
                collection.shard = None  # closed already: nothing to flush when the service stops
    finally:
        stop.set()
        await asyncio.wait_for(server, 60)
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    assert error.details().startswith("shard being swapped") and "retry" in error.details()
    status = rpc_status.from_call(error)
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details) and retry.retry_delay.seconds == 1
