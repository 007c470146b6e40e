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

class DegradedReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEGRADED_REASON_UNSPECIFIED: _ClassVar[DegradedReason]
    DEGRADED_REASON_RERANKER_ERROR: _ClassVar[DegradedReason]
    DEGRADED_REASON_RERANKER_TIMEOUT: _ClassVar[DegradedReason]
    DEGRADED_REASON_RERANKER_CIRCUIT_OPEN: _ClassVar[DegradedReason]
    DEGRADED_REASON_RERANKER_OVERLOADED: _ClassVar[DegradedReason]
SCORE_COMBINATION_UNSPECIFIED: ScoreCombination
SCORE_COMBINATION_RERANK_ONLY: ScoreCombination
SCORE_COMBINATION_WEIGHTED_ZSCORE: ScoreCombination
SCORE_COMBINATION_WEIGHTED_RRF: ScoreCombination
DEGRADED_REASON_UNSPECIFIED: DegradedReason
DEGRADED_REASON_RERANKER_ERROR: DegradedReason
DEGRADED_REASON_RERANKER_TIMEOUT: DegradedReason
DEGRADED_REASON_RERANKER_CIRCUIT_OPEN: DegradedReason
DEGRADED_REASON_RERANKER_OVERLOADED: DegradedReason

class RerankOptions(_message.Message):
    __slots__ = ("enabled", "candidates", "combination", "rerank_weight")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    COMBINATION_FIELD_NUMBER: _ClassVar[int]
    RERANK_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    candidates: int
    combination: ScoreCombination
    rerank_weight: float
    def __init__(self, enabled: _Optional[bool] = ..., candidates: _Optional[int] = ..., combination: _Optional[_Union[ScoreCombination, str]] = ..., rerank_weight: _Optional[float] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "top_k", "filter", "rerank", "mode", "fusion")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    top_k: int
    filter: _common_pb2.Filter
    rerank: RerankOptions
    mode: _common_pb2.RetrievalMode
    fusion: _common_pb2.FusionOptions
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ..., rerank: _Optional[_Union[RerankOptions, _Mapping]] = ..., mode: _Optional[_Union[_common_pb2.RetrievalMode, str]] = ..., fusion: _Optional[_Union[_common_pb2.FusionOptions, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("results", "degraded", "degraded_reason", "reranked", "mode")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    RERANKED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    degraded: bool
    degraded_reason: DegradedReason
    reranked: bool
    mode: _common_pb2.RetrievalMode
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[_Union[DegradedReason, str]] = ..., reranked: _Optional[bool] = ..., mode: _Optional[_Union[_common_pb2.RetrievalMode, str]] = ...) -> None: ...

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
    __slots__ = ("name", "filter_fields", "sparse")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELDS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    name: str
    filter_fields: _containers.RepeatedCompositeFieldContainer[_common_pb2.FilterField]
    sparse: bool
    def __init__(self, name: _Optional[str] = ..., filter_fields: _Optional[_Iterable[_Union[_common_pb2.FilterField, _Mapping]]] = ..., sparse: _Optional[bool] = ...) -> None: ...

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
