"""The API's enum values and the names the domain code and the CLI use for them: one map each,
derived from the proto enums (``FUSION_METHOD_WEIGHTED_RRF`` -> ``"weighted_rrf"``).

The transport layers translate with these (enum -> name on the way in, name -> enum on the
way out); domain modules (the store, fusion, score combination) speak the names only.
"""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from search.v1 import common_pb2, search_service_pb2


def _names(enum: EnumTypeWrapper, prefix: str) -> dict[int, str]:
    """``{value: lower-case name without prefix}`` for every value but UNSPECIFIED."""
    return {value: name[len(prefix):].lower() for name, value in enum.items() if not name.endswith("_UNSPECIFIED")}


def _inverse(names: dict[int, str]) -> dict[str, int]:
    return {name: value for value, name in names.items()}


#: Fusion methods, payload field types and score combinations; UNSPECIFIED (fusion, score
#: combination) means the service's default and has no name.
FUSION_METHODS = _names(common_pb2.FusionMethod, "FUSION_METHOD_")
FUSION_METHOD_ENUM = _inverse(FUSION_METHODS)
FIELD_TYPES = _names(common_pb2.FieldType, "FIELD_TYPE_")
FIELD_TYPE_ENUM = _inverse(FIELD_TYPES)
SCORE_COMBINATIONS = _names(search_service_pb2.ScoreCombination, "SCORE_COMBINATION_")
SCORE_COMBINATION_ENUM = _inverse(SCORE_COMBINATIONS)

#: Retrieval modes. UNSPECIFIED is the service's default, hybrid (dense on collections without
#: sparse vectors: the store decides and reports the mode it used).
RETRIEVAL_MODE_ENUM = _inverse(_names(common_pb2.RetrievalMode, "RETRIEVAL_MODE_"))
RETRIEVAL_MODES = {**_inverse(RETRIEVAL_MODE_ENUM), common_pb2.RETRIEVAL_MODE_UNSPECIFIED: "hybrid"}
#: searchctl's ``--mode`` choices: the modes plus ``default`` (leave it to the service).
CLI_RETRIEVAL_MODES = {**RETRIEVAL_MODE_ENUM, "default": common_pb2.RETRIEVAL_MODE_UNSPECIFIED}

#: Rerank policies (UNSPECIFIED: the gateway's default, GATEWAY_RERANK_POLICY) and the reasons a
#: Search reports for its reranking decision.
RERANK_POLICIES = _names(search_service_pb2.RerankPolicy, "RERANK_POLICY_")
RERANK_POLICY_ENUM = _inverse(RERANK_POLICIES)
RERANK_REASON_ENUM = _inverse(_names(search_service_pb2.RerankReason, "RERANK_REASON_"))
