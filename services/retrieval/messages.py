"""The retrieval API's messages and the store's types, each way: fusion options, declared filter
fields, collection descriptions, payloads. No gRPC calls, only message types; the servicer
(server.py) and the collection operations (operations.py) both use them."""

from __future__ import annotations

from google.protobuf import struct_pb2

from search.v1 import common_pb2
from services.common import api_names, validation
from services.retrieval.store import DEFAULT_DENSE_WEIGHT, CollectionDescription, Fusion

DEFAULT_FUSION = Fusion()


def fusion_options(options: common_pb2.FusionOptions) -> Fusion:
    """The store's Fusion for validated ``options`` (services/common/validation.py checks them)."""
    validation.fusion_options(options)
    return Fusion(
        method=api_names.FUSION_METHODS.get(options.method, DEFAULT_FUSION.method),
        dense_weight=options.dense_weight if options.HasField("dense_weight") else None,
        rrf_k=options.rrf_k if options.HasField("rrf_k") else DEFAULT_FUSION.rrf_k,
        prefetch_limit=options.prefetch_limit if options.HasField("prefetch_limit") else DEFAULT_FUSION.prefetch_limit,
        late_interaction=options.late_interaction if options.HasField("late_interaction") else None,
        late_candidates=(options.late_interaction_candidates
                         if options.HasField("late_interaction_candidates") else None),
    )


def filter_fields(fields, field: str = "filter_fields") -> dict[str, str]:
    """Declared filter fields -> ``{key: type name}``, validated as the gateway validates them
    (``field``: the request field they came in, for the error)."""
    validation.filter_fields(fields, field)
    return {f.key: api_names.FIELD_TYPES[f.type] for f in fields}


def collection_info(desc: CollectionDescription) -> common_pb2.CollectionInfo:
    calibration = desc.calibration
    return common_pb2.CollectionInfo(
        name=desc.name,
        document_count=desc.document_count,
        point_count=desc.point_count,
        dense_model=desc.dense_model,
        dense_dimension=desc.dense_dimension,
        sparse_enabled=desc.sparse_enabled,
        filter_fields=[
            common_pb2.FilterField(key=key, type=api_names.FIELD_TYPE_ENUM[kind]) for key, kind in sorted(desc.filter_fields.items())
        ],
        late_interaction_model=desc.late_interaction_model,
        late_interaction_dimension=desc.late_interaction_dimension,
        fusion_dense_weight=calibration.dense_weight if calibration else DEFAULT_DENSE_WEIGHT,
        fusion_calibration=common_pb2.FusionCalibration(
            dense_recall=calibration.dense_recall, sparse_recall=calibration.sparse_recall,
            sample=calibration.sample, documents=calibration.documents,
            dense_weight=calibration.dense_weight, measured_at=calibration.measured_at,
        ) if calibration else None,
    )


def struct(payload: dict) -> struct_pb2.Struct | None:
    """A payload as the API's Struct; None (no message to build) for an empty one."""
    if not payload:
        return None
    message = struct_pb2.Struct()
    message.update(payload)
    return message
