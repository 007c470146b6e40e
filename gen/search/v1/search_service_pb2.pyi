from google.protobuf import struct_pb2 as _struct_pb2
from search.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreCombination(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORE_COMBINATION_UNSPECIFIED: _ClassVar[ScoreCombination]
    SCORE_COMBINATION_RERANK_ONLY: _ClassVar[ScoreCombination]
    SCORE_COMBINATION_WEIGHTED_ZSCORE: _ClassVar[ScoreCombination]
    SCORE_COMBINATION_WEIGHTED_RRF: _ClassVar[ScoreCombination]

class RerankPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RERANK_POLICY_UNSPECIFIED: _ClassVar[RerankPolicy]
    RERANK_POLICY_ALWAYS: _ClassVar[RerankPolicy]
    RERANK_POLICY_AUTO: _ClassVar[RerankPolicy]
    RERANK_POLICY_NEVER: _ClassVar[RerankPolicy]

class DegradedReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEGRADED_REASON_UNSPECIFIED: _ClassVar[DegradedReason]
    DEGRADED_REASON_RERANKER_ERROR: _ClassVar[DegradedReason]
    DEGRADED_REASON_RERANKER_TIMEOUT: _ClassVar[DegradedReason]
    DEGRADED_REASON_RERANKER_CIRCUIT_OPEN: _ClassVar[DegradedReason]
    DEGRADED_REASON_RERANKER_OVERLOADED: _ClassVar[DegradedReason]

class RerankReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RERANK_REASON_UNSPECIFIED: _ClassVar[RerankReason]
    RERANK_REASON_ALWAYS: _ClassVar[RerankReason]
    RERANK_REASON_NEVER: _ClassVar[RerankReason]
    RERANK_REASON_AUTO_UNCERTAIN: _ClassVar[RerankReason]
    RERANK_REASON_AUTO_CONFIDENT: _ClassVar[RerankReason]
    RERANK_REASON_NO_CANDIDATES: _ClassVar[RerankReason]
    RERANK_REASON_AUTO_WEAK_LIST: _ClassVar[RerankReason]
    RERANK_REASON_AUTO_BUSY: _ClassVar[RerankReason]
SCORE_COMBINATION_UNSPECIFIED: ScoreCombination
SCORE_COMBINATION_RERANK_ONLY: ScoreCombination
SCORE_COMBINATION_WEIGHTED_ZSCORE: ScoreCombination
SCORE_COMBINATION_WEIGHTED_RRF: ScoreCombination
RERANK_POLICY_UNSPECIFIED: RerankPolicy
RERANK_POLICY_ALWAYS: RerankPolicy
RERANK_POLICY_AUTO: RerankPolicy
RERANK_POLICY_NEVER: RerankPolicy
DEGRADED_REASON_UNSPECIFIED: DegradedReason
DEGRADED_REASON_RERANKER_ERROR: DegradedReason
DEGRADED_REASON_RERANKER_TIMEOUT: DegradedReason
DEGRADED_REASON_RERANKER_CIRCUIT_OPEN: DegradedReason
DEGRADED_REASON_RERANKER_OVERLOADED: DegradedReason
RERANK_REASON_UNSPECIFIED: RerankReason
RERANK_REASON_ALWAYS: RerankReason
RERANK_REASON_NEVER: RerankReason
RERANK_REASON_AUTO_UNCERTAIN: RerankReason
RERANK_REASON_AUTO_CONFIDENT: RerankReason
RERANK_REASON_NO_CANDIDATES: RerankReason
RERANK_REASON_AUTO_WEAK_LIST: RerankReason
RERANK_REASON_AUTO_BUSY: RerankReason

class RerankOptions(_message.Message):
    __slots__ = ("enabled", "candidates", "combination", "rerank_weight", "policy")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    COMBINATION_FIELD_NUMBER: _ClassVar[int]
    RERANK_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    candidates: int
    combination: ScoreCombination
    rerank_weight: float
    policy: RerankPolicy
    def __init__(self, enabled: _Optional[bool] = ..., candidates: _Optional[int] = ..., combination: _Optional[_Union[ScoreCombination, str]] = ..., rerank_weight: _Optional[float] = ..., policy: _Optional[_Union[RerankPolicy, str]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "top_k", "filter", "rerank", "mode", "fusion", "offset", "page_token")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    top_k: int
    filter: _common_pb2.Filter
    rerank: RerankOptions
    mode: _common_pb2.RetrievalMode
    fusion: _common_pb2.FusionOptions
    offset: int
    page_token: str
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ..., rerank: _Optional[_Union[RerankOptions, _Mapping]] = ..., mode: _Optional[_Union[_common_pb2.RetrievalMode, str]] = ..., fusion: _Optional[_Union[_common_pb2.FusionOptions, _Mapping]] = ..., offset: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("id", "score", "retrieval_score", "rerank_score", "title", "text", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    RERANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    retrieval_score: float
    rerank_score: float
    title: str
    text: str
    payload: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., retrieval_score: _Optional[float] = ..., rerank_score: _Optional[float] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "degraded", "degraded_reason", "reranked", "mode", "next_page_token", "collection", "rerank_decision")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    RERANKED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    RERANK_DECISION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    degraded: bool
    degraded_reason: DegradedReason
    reranked: bool
    mode: _common_pb2.RetrievalMode
    next_page_token: str
    collection: str
    rerank_decision: RerankDecision
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[_Union[DegradedReason, str]] = ..., reranked: _Optional[bool] = ..., mode: _Optional[_Union[_common_pb2.RetrievalMode, str]] = ..., next_page_token: _Optional[str] = ..., collection: _Optional[str] = ..., rerank_decision: _Optional[_Union[RerankDecision, _Mapping]] = ...) -> None: ...

class RerankDecision(_message.Message):
    __slots__ = ("policy", "depth", "reason", "signal")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    policy: RerankPolicy
    depth: int
    reason: RerankReason
    signal: float
    def __init__(self, policy: _Optional[_Union[RerankPolicy, str]] = ..., depth: _Optional[int] = ..., reason: _Optional[_Union[RerankReason, str]] = ..., signal: _Optional[float] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "documents")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Document]
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[_common_pb2.Document, _Mapping]]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "filter_fields", "sparse", "late_interaction")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELDS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    LATE_INTERACTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    filter_fields: _containers.RepeatedCompositeFieldContainer[_common_pb2.FilterField]
    sparse: bool
    late_interaction: bool
    def __init__(self, name: _Optional[str] = ..., filter_fields: _Optional[_Iterable[_Union[_common_pb2.FilterField, _Mapping]]] = ..., sparse: _Optional[bool] = ..., late_interaction: _Optional[bool] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: _common_pb2.CollectionInfo
    def __init__(self, collection: _Optional[_Union[_common_pb2.CollectionInfo, _Mapping]] = ...) -> None: ...

class DescribeCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: _common_pb2.CollectionInfo
    def __init__(self, collection: _Optional[_Union[_common_pb2.CollectionInfo, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "aliases")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[_common_pb2.CollectionInfo]
    aliases: _containers.RepeatedCompositeFieldContainer[_common_pb2.Alias]
    def __init__(self, collections: _Optional[_Iterable[_Union[_common_pb2.CollectionInfo, _Mapping]]] = ..., aliases: _Optional[_Iterable[_Union[_common_pb2.Alias, _Mapping]]] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetDocumentsResponse(_message.Message):
    __slots__ = ("documents", "missing_ids", "collection")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Document]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    collection: str
    def __init__(self, documents: _Optional[_Iterable[_Union[_common_pb2.Document, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ..., collection: _Optional[str] = ...) -> None: ...

class CreateAliasRequest(_message.Message):
    __slots__ = ("alias", "collection")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    collection: str
    def __init__(self, alias: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class CreateAliasResponse(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: _common_pb2.Alias
    def __init__(self, alias: _Optional[_Union[_common_pb2.Alias, _Mapping]] = ...) -> None: ...

class SwitchAliasRequest(_message.Message):
    __slots__ = ("alias", "collection", "expected_collection")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    collection: str
    expected_collection: str
    def __init__(self, alias: _Optional[str] = ..., collection: _Optional[str] = ..., expected_collection: _Optional[str] = ...) -> None: ...

class SwitchAliasResponse(_message.Message):
    __slots__ = ("alias", "previous_collection")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    alias: _common_pb2.Alias
    previous_collection: str
    def __init__(self, alias: _Optional[_Union[_common_pb2.Alias, _Mapping]] = ..., previous_collection: _Optional[str] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    def __init__(self, alias: _Optional[str] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAliasesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAliasesResponse(_message.Message):
    __slots__ = ("aliases",)
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[_common_pb2.Alias]
    def __init__(self, aliases: _Optional[_Iterable[_Union[_common_pb2.Alias, _Mapping]]] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("collection", "documents", "sequence")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Document]
    sequence: int
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[_common_pb2.Document, _Mapping]]] = ..., sequence: _Optional[int] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("sequence", "upserted", "total_upserted", "error")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_UPSERTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    upserted: int
    total_upserted: int
    error: IngestError
    def __init__(self, sequence: _Optional[int] = ..., upserted: _Optional[int] = ..., total_upserted: _Optional[int] = ..., error: _Optional[_Union[IngestError, _Mapping]] = ...) -> None: ...

class IngestError(_message.Message):
    __slots__ = ("code", "message", "field", "sequence")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field: str
    sequence: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class ReindexRequest(_message.Message):
    __slots__ = ("source", "target", "reembed", "add_filter_fields")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REEMBED_FIELD_NUMBER: _ClassVar[int]
    ADD_FILTER_FIELDS_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    reembed: bool
    add_filter_fields: _containers.RepeatedCompositeFieldContainer[_common_pb2.FilterField]
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., reembed: _Optional[bool] = ..., add_filter_fields: _Optional[_Iterable[_Union[_common_pb2.FilterField, _Mapping]]] = ...) -> None: ...

class ReindexResponse(_message.Message):
    __slots__ = ("phase", "copied", "total", "source_collection", "target_collection", "alias", "reembedded")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    COPIED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    REEMBEDDED_FIELD_NUMBER: _ClassVar[int]
    phase: _common_pb2.ReindexPhase
    copied: int
    total: int
    source_collection: str
    target_collection: str
    alias: str
    reembedded: bool
    def __init__(self, phase: _Optional[_Union[_common_pb2.ReindexPhase, str]] = ..., copied: _Optional[int] = ..., total: _Optional[int] = ..., source_collection: _Optional[str] = ..., target_collection: _Optional[str] = ..., alias: _Optional[str] = ..., reembedded: _Optional[bool] = ...) -> None: ...

class ExportSnapshotRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ExportSnapshotResponse(_message.Message):
    __slots__ = ("header", "points")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.SnapshotHeader
    points: _containers.RepeatedCompositeFieldContainer[_common_pb2.StoredPoint]
    def __init__(self, header: _Optional[_Union[_common_pb2.SnapshotHeader, _Mapping]] = ..., points: _Optional[_Iterable[_Union[_common_pb2.StoredPoint, _Mapping]]] = ...) -> None: ...

class RestoreSnapshotRequest(_message.Message):
    __slots__ = ("collection", "header", "points")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    header: _common_pb2.SnapshotHeader
    points: _containers.RepeatedCompositeFieldContainer[_common_pb2.StoredPoint]
    def __init__(self, collection: _Optional[str] = ..., header: _Optional[_Union[_common_pb2.SnapshotHeader, _Mapping]] = ..., points: _Optional[_Iterable[_Union[_common_pb2.StoredPoint, _Mapping]]] = ...) -> None: ...

class RestoreSnapshotResponse(_message.Message):
    __slots__ = ("collection", "points")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    collection: _common_pb2.CollectionInfo
    points: int
    def __init__(self, collection: _Optional[_Union[_common_pb2.CollectionInfo, _Mapping]] = ..., points: _Optional[int] = ...) -> None: ...
