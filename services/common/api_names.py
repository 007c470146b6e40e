"""The API's enum values and the names the domain code and the CLI use for them: one map each.

The transport layers translate with these (enum -> name on the way in, name -> enum on the
way out); domain modules (the store, fusion, score combination) speak the names only.
"""

from __future__ import annotations

from search.v1 import common_pb2, search_service_pb2

#: Retrieval modes; UNSPECIFIED is the service's default (hybrid, dense on collections
#: without sparse vectors: the store decides and reports the mode it used).
RETRIEVAL_MODES = {
    common_pb2.RETRIEVAL_MODE_UNSPECIFIED: "hybrid",
    common_pb2.RETRIEVAL_MODE_DENSE: "dense",
    common_pb2.RETRIEVAL_MODE_SPARSE: "sparse",
    common_pb2.RETRIEVAL_MODE_HYBRID: "hybrid",
}
RETRIEVAL_MODE_ENUM = {
    "dense": common_pb2.RETRIEVAL_MODE_DENSE,
    "sparse": common_pb2.RETRIEVAL_MODE_SPARSE,
    "hybrid": common_pb2.RETRIEVAL_MODE_HYBRID,
}
#: searchctl's ``--mode`` choices: the modes plus ``default`` (leave it to the service).
CLI_RETRIEVAL_MODES = {**RETRIEVAL_MODE_ENUM, "default": common_pb2.RETRIEVAL_MODE_UNSPECIFIED}

#: Hybrid fusion methods (UNSPECIFIED: the service's default).
FUSION_METHODS = {
    common_pb2.FUSION_METHOD_RRF: "rrf",
    common_pb2.FUSION_METHOD_DBSF: "dbsf",
    common_pb2.FUSION_METHOD_WEIGHTED_ZSCORE: "weighted_zscore",
    common_pb2.FUSION_METHOD_WEIGHTED_RRF: "weighted_rrf",
}
FUSION_METHOD_ENUM = {name: value for value, name in FUSION_METHODS.items()}

#: Payload field types declared for filtering.
FIELD_TYPES = {
    common_pb2.FIELD_TYPE_KEYWORD: "keyword",
    common_pb2.FIELD_TYPE_INTEGER: "integer",
    common_pb2.FIELD_TYPE_FLOAT: "float",
    common_pb2.FIELD_TYPE_BOOL: "bool",
}
FIELD_TYPE_ENUM = {name: value for value, name in FIELD_TYPES.items()}

#: How the gateway combines rerank and first-stage scores (UNSPECIFIED: GATEWAY_SCORE_COMBINATION).
SCORE_COMBINATIONS = {
    search_service_pb2.SCORE_COMBINATION_RERANK_ONLY: "rerank_only",
    search_service_pb2.SCORE_COMBINATION_WEIGHTED_ZSCORE: "weighted_zscore",
    search_service_pb2.SCORE_COMBINATION_WEIGHTED_RRF: "weighted_rrf",
}
SCORE_COMBINATION_ENUM = {name: value for value, name in SCORE_COMBINATIONS.items()}
