from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetrievalMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETRIEVAL_MODE_UNSPECIFIED: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_DENSE: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_SPARSE: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_HYBRID: _ClassVar[RetrievalMode]

class FusionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_METHOD_UNSPECIFIED: _ClassVar[FusionMethod]
    FUSION_METHOD_RRF: _ClassVar[FusionMethod]
    FUSION_METHOD_DBSF: _ClassVar[FusionMethod]
    FUSION_METHOD_WEIGHTED_ZSCORE: _ClassVar[FusionMethod]
    FUSION_METHOD_WEIGHTED_RRF: _ClassVar[FusionMethod]

class FieldType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_TYPE_UNSPECIFIED: _ClassVar[FieldType]
    FIELD_TYPE_KEYWORD: _ClassVar[FieldType]
    FIELD_TYPE_INTEGER: _ClassVar[FieldType]
    FIELD_TYPE_FLOAT: _ClassVar[FieldType]
    FIELD_TYPE_BOOL: _ClassVar[FieldType]

class ReindexPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REINDEX_PHASE_UNSPECIFIED: _ClassVar[ReindexPhase]
    REINDEX_PHASE_COPYING: _ClassVar[ReindexPhase]
    REINDEX_PHASE_CATCHING_UP: _ClassVar[ReindexPhase]
    REINDEX_PHASE_DONE: _ClassVar[ReindexPhase]
RETRIEVAL_MODE_UNSPECIFIED: RetrievalMode
RETRIEVAL_MODE_DENSE: RetrievalMode
RETRIEVAL_MODE_SPARSE: RetrievalMode
RETRIEVAL_MODE_HYBRID: RetrievalMode
FUSION_METHOD_UNSPECIFIED: FusionMethod
FUSION_METHOD_RRF: FusionMethod
FUSION_METHOD_DBSF: FusionMethod
FUSION_METHOD_WEIGHTED_ZSCORE: FusionMethod
FUSION_METHOD_WEIGHTED_RRF: FusionMethod
FIELD_TYPE_UNSPECIFIED: FieldType
FIELD_TYPE_KEYWORD: FieldType
FIELD_TYPE_INTEGER: FieldType
FIELD_TYPE_FLOAT: FieldType
FIELD_TYPE_BOOL: FieldType
REINDEX_PHASE_UNSPECIFIED: ReindexPhase
REINDEX_PHASE_COPYING: ReindexPhase
REINDEX_PHASE_CATCHING_UP: ReindexPhase
REINDEX_PHASE_DONE: ReindexPhase

class Document(_message.Message):
    __slots__ = ("id", "title", "text", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    text: str
    payload: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class FusionOptions(_message.Message):
    __slots__ = ("method", "dense_weight", "rrf_k", "prefetch_limit", "late_interaction", "late_interaction_candidates")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LATE_INTERACTION_FIELD_NUMBER: _ClassVar[int]
    LATE_INTERACTION_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    method: FusionMethod
    dense_weight: float
    rrf_k: int
    prefetch_limit: int
    late_interaction: bool
    late_interaction_candidates: int
    def __init__(self, method: _Optional[_Union[FusionMethod, str]] = ..., dense_weight: _Optional[float] = ..., rrf_k: _Optional[int] = ..., prefetch_limit: _Optional[int] = ..., late_interaction: _Optional[bool] = ..., late_interaction_candidates: _Optional[int] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("must", "should", "must_not")
    MUST_FIELD_NUMBER: _ClassVar[int]
    SHOULD_FIELD_NUMBER: _ClassVar[int]
    MUST_NOT_FIELD_NUMBER: _ClassVar[int]
    must: _containers.RepeatedCompositeFieldContainer[Condition]
    should: _containers.RepeatedCompositeFieldContainer[Condition]
    must_not: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, must: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., should: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., must_not: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("field", "filter")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    field: FieldCondition
    filter: Filter
    def __init__(self, field: _Optional[_Union[FieldCondition, _Mapping]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class FieldCondition(_message.Message):
    __slots__ = ("key", "keyword", "integer", "boolean", "any_keyword", "any_integer", "range")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    ANY_KEYWORD_FIELD_NUMBER: _ClassVar[int]
    ANY_INTEGER_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    keyword: str
    integer: int
    boolean: bool
    any_keyword: KeywordList
    any_integer: IntegerList
    range: Range
    def __init__(self, key: _Optional[str] = ..., keyword: _Optional[str] = ..., integer: _Optional[int] = ..., boolean: _Optional[bool] = ..., any_keyword: _Optional[_Union[KeywordList, _Mapping]] = ..., any_integer: _Optional[_Union[IntegerList, _Mapping]] = ..., range: _Optional[_Union[Range, _Mapping]] = ...) -> None: ...

class KeywordList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class IntegerList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class FilterField(_message.Message):
    __slots__ = ("key", "type")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    key: str
    type: FieldType
    def __init__(self, key: _Optional[str] = ..., type: _Optional[_Union[FieldType, str]] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "document_count", "point_count", "dense_model", "dense_dimension", "sparse_enabled", "filter_fields", "late_interaction_model", "late_interaction_dimension", "fusion_dense_weight", "fusion_calibration")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    POINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    DENSE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DENSE_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    SPARSE_ENABLED_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELDS_FIELD_NUMBER: _ClassVar[int]
    LATE_INTERACTION_MODEL_FIELD_NUMBER: _ClassVar[int]
    LATE_INTERACTION_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    FUSION_DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    FUSION_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    document_count: int
    point_count: int
    dense_model: str
    dense_dimension: int
    sparse_enabled: bool
    filter_fields: _containers.RepeatedCompositeFieldContainer[FilterField]
    late_interaction_model: str
    late_interaction_dimension: int
    fusion_dense_weight: float
    fusion_calibration: FusionCalibration
    def __init__(self, name: _Optional[str] = ..., document_count: _Optional[int] = ..., point_count: _Optional[int] = ..., dense_model: _Optional[str] = ..., dense_dimension: _Optional[int] = ..., sparse_enabled: _Optional[bool] = ..., filter_fields: _Optional[_Iterable[_Union[FilterField, _Mapping]]] = ..., late_interaction_model: _Optional[str] = ..., late_interaction_dimension: _Optional[int] = ..., fusion_dense_weight: _Optional[float] = ..., fusion_calibration: _Optional[_Union[FusionCalibration, _Mapping]] = ...) -> None: ...

class FusionCalibration(_message.Message):
    __slots__ = ("dense_recall", "sparse_recall", "sample", "documents", "dense_weight", "measured_at")
    DENSE_RECALL_FIELD_NUMBER: _ClassVar[int]
    SPARSE_RECALL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MEASURED_AT_FIELD_NUMBER: _ClassVar[int]
    dense_recall: float
    sparse_recall: float
    sample: int
    documents: int
    dense_weight: float
    measured_at: float
    def __init__(self, dense_recall: _Optional[float] = ..., sparse_recall: _Optional[float] = ..., sample: _Optional[int] = ..., documents: _Optional[int] = ..., dense_weight: _Optional[float] = ..., measured_at: _Optional[float] = ...) -> None: ...

class Alias(_message.Message):
    __slots__ = ("alias", "collection")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    collection: str
    def __init__(self, alias: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class SparseValues(_message.Message):
    __slots__ = ("indices", "values")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class StoredPoint(_message.Message):
    __slots__ = ("id", "dense", "sparse", "payload_json", "late")
    ID_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    dense: _containers.RepeatedScalarFieldContainer[float]
    sparse: SparseValues
    payload_json: bytes
    late: _containers.RepeatedCompositeFieldContainer[FloatRow]
    def __init__(self, id: _Optional[str] = ..., dense: _Optional[_Iterable[float]] = ..., sparse: _Optional[_Union[SparseValues, _Mapping]] = ..., payload_json: _Optional[bytes] = ..., late: _Optional[_Iterable[_Union[FloatRow, _Mapping]]] = ...) -> None: ...

class FloatRow(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("format", "collection", "dense_dimension", "sparse", "filter_fields", "metadata_json", "point_count", "engine", "method", "created_at", "late_dimension", "late_quantization")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DENSE_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    POINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LATE_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    LATE_QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    format: str
    collection: str
    dense_dimension: int
    sparse: bool
    filter_fields: _containers.RepeatedCompositeFieldContainer[FilterField]
    metadata_json: str
    point_count: int
    engine: str
    method: str
    created_at: str
    late_dimension: int
    late_quantization: str
    def __init__(self, format: _Optional[str] = ..., collection: _Optional[str] = ..., dense_dimension: _Optional[int] = ..., sparse: _Optional[bool] = ..., filter_fields: _Optional[_Iterable[_Union[FilterField, _Mapping]]] = ..., metadata_json: _Optional[str] = ..., point_count: _Optional[int] = ..., engine: _Optional[str] = ..., method: _Optional[str] = ..., created_at: _Optional[str] = ..., late_dimension: _Optional[int] = ..., late_quantization: _Optional[str] = ...) -> None: ...
