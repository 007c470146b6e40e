from google.protobuf import struct_pb2 as _struct_pb2
from search.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetrieveRequest(_message.Message):
    __slots__ = ("collection", "query", "limit", "filter", "mode", "fusion")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    limit: int
    filter: _common_pb2.Filter
    mode: _common_pb2.RetrievalMode
    fusion: _common_pb2.FusionOptions
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., limit: _Optional[int] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ..., mode: _Optional[_Union[_common_pb2.RetrievalMode, str]] = ..., fusion: _Optional[_Union[_common_pb2.FusionOptions, _Mapping]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("id", "score", "title", "text", "payload", "dense_score", "sparse_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DENSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    title: str
    text: str
    payload: _struct_pb2.Struct
    dense_score: float
    sparse_score: float
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dense_score: _Optional[float] = ..., sparse_score: _Optional[float] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("candidates", "mode", "collection", "one_list_weak")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ONE_LIST_WEAK_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    mode: _common_pb2.RetrievalMode
    collection: str
    one_list_weak: bool
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., mode: _Optional[_Union[_common_pb2.RetrievalMode, str]] = ..., collection: _Optional[str] = ..., one_list_weak: _Optional[bool] = ...) -> None: ...

class RetrievalServiceUpsertRequest(_message.Message):
    __slots__ = ("collection", "documents")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Document]
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[_common_pb2.Document, _Mapping]]] = ...) -> None: ...

class RetrievalServiceUpsertResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class RetrievalServiceDeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RetrievalServiceDeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class RetrievalServiceCreateCollectionRequest(_message.Message):
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

class RetrievalServiceCreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: _common_pb2.CollectionInfo
    def __init__(self, collection: _Optional[_Union[_common_pb2.CollectionInfo, _Mapping]] = ...) -> None: ...

class RetrievalServiceDescribeCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RetrievalServiceDescribeCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: _common_pb2.CollectionInfo
    def __init__(self, collection: _Optional[_Union[_common_pb2.CollectionInfo, _Mapping]] = ...) -> None: ...

class RetrievalServiceDeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RetrievalServiceDeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RetrievalServiceListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RetrievalServiceListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "aliases")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[_common_pb2.CollectionInfo]
    aliases: _containers.RepeatedCompositeFieldContainer[_common_pb2.Alias]
    def __init__(self, collections: _Optional[_Iterable[_Union[_common_pb2.CollectionInfo, _Mapping]]] = ..., aliases: _Optional[_Iterable[_Union[_common_pb2.Alias, _Mapping]]] = ...) -> None: ...

class RetrievalServiceGetDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RetrievalServiceGetDocumentsResponse(_message.Message):
    __slots__ = ("documents", "missing_ids", "collection")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Document]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    collection: str
    def __init__(self, documents: _Optional[_Iterable[_Union[_common_pb2.Document, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ..., collection: _Optional[str] = ...) -> None: ...

class RetrievalServiceCreateAliasRequest(_message.Message):
    __slots__ = ("alias", "collection")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    collection: str
    def __init__(self, alias: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class RetrievalServiceCreateAliasResponse(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: _common_pb2.Alias
    def __init__(self, alias: _Optional[_Union[_common_pb2.Alias, _Mapping]] = ...) -> None: ...

class RetrievalServiceSwitchAliasRequest(_message.Message):
    __slots__ = ("alias", "collection", "expected_collection")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    collection: str
    expected_collection: str
    def __init__(self, alias: _Optional[str] = ..., collection: _Optional[str] = ..., expected_collection: _Optional[str] = ...) -> None: ...

class RetrievalServiceSwitchAliasResponse(_message.Message):
    __slots__ = ("alias", "previous_collection")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    alias: _common_pb2.Alias
    previous_collection: str
    def __init__(self, alias: _Optional[_Union[_common_pb2.Alias, _Mapping]] = ..., previous_collection: _Optional[str] = ...) -> None: ...

class RetrievalServiceDeleteAliasRequest(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    def __init__(self, alias: _Optional[str] = ...) -> None: ...

class RetrievalServiceDeleteAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RetrievalServiceListAliasesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RetrievalServiceListAliasesResponse(_message.Message):
    __slots__ = ("aliases",)
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[_common_pb2.Alias]
    def __init__(self, aliases: _Optional[_Iterable[_Union[_common_pb2.Alias, _Mapping]]] = ...) -> None: ...

class RetrievalServiceReindexRequest(_message.Message):
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

class RetrievalServiceReindexResponse(_message.Message):
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

class RetrievalServiceExportSnapshotRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class RetrievalServiceExportSnapshotResponse(_message.Message):
    __slots__ = ("header", "points")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.SnapshotHeader
    points: _containers.RepeatedCompositeFieldContainer[_common_pb2.StoredPoint]
    def __init__(self, header: _Optional[_Union[_common_pb2.SnapshotHeader, _Mapping]] = ..., points: _Optional[_Iterable[_Union[_common_pb2.StoredPoint, _Mapping]]] = ...) -> None: ...

class RetrievalServiceRestoreSnapshotRequest(_message.Message):
    __slots__ = ("collection", "header", "points")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    header: _common_pb2.SnapshotHeader
    points: _containers.RepeatedCompositeFieldContainer[_common_pb2.StoredPoint]
    def __init__(self, collection: _Optional[str] = ..., header: _Optional[_Union[_common_pb2.SnapshotHeader, _Mapping]] = ..., points: _Optional[_Iterable[_Union[_common_pb2.StoredPoint, _Mapping]]] = ...) -> None: ...

class RetrievalServiceRestoreSnapshotResponse(_message.Message):
    __slots__ = ("collection", "points")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    collection: _common_pb2.CollectionInfo
    points: int
    def __init__(self, collection: _Optional[_Union[_common_pb2.CollectionInfo, _Mapping]] = ..., points: _Optional[int] = ...) -> None: ...
