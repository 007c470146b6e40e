"""The late-interaction stage through the store, with the real ColBERT model, on both backends."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition
from services.common.model_dir import default_models_dir
from services.retrieval.store import DocumentIn, Fusion, LateInteraction
from tests.store.conftest import make_store
from tests.store.test_contract import DOCS, FIELDS

COLBERT = default_models_dir() / "answerai-colbert-small-v1"


@pytest.fixture(scope="session")
def colbert():
    if not (COLBERT / "model.onnx").is_file():
        pytest.skip(f"model answerai-colbert-small-v1 not in {COLBERT.parent}; run `searchctl models fetch`")
    from services.retrieval.late_interaction import LateInteractionEncoder

    return LateInteractionEncoder(COLBERT, max_length=128, intra_op_threads=1)


@pytest.fixture
def late_store(backend, encoder, colbert):
    store = make_store(backend, encoder)
    store.late = LateInteraction(colbert, candidates=10, weight=0.4)
    store.create_collection("li", FIELDS, late_interaction=True)
    store.upsert("li", DOCS)
    return store


def test_collection_records_and_reports_the_stage(late_store, colbert):
    desc = late_store.describe("li")
    assert (desc.late_interaction_model, desc.late_interaction_dimension) == (colbert.name, colbert.dimension)
    assert late_store.backend.schema("li").late_quantization == "int8"
    plain = late_store.create_collection("plain", FIELDS, late_interaction=False)
    assert (plain.late_interaction_model, plain.late_interaction_dimension) == ("", 0)
    assert "late_interaction" not in late_store.backend.schema("plain").metadata["models"]


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
@pytest.mark.parametrize("method", ["weighted_zscore", "weighted_rrf"])
def test_the_stage_ranks_and_can_be_turned_off_per_request(late_store, mode, method):
    for query, expected in {"why does the sea level rise and fall": "tides",
                            "bread starter with wild yeast": "sourdough"}.items():
        with_stage, used = late_store.retrieve("li", query, 3, mode=mode, fusion_options=Fusion(method=method))
        without, _ = late_store.retrieve("li", query, 3, mode=mode, fusion_options=Fusion(method=method, late_interaction=False))
        assert used == mode and with_stage[0].id == expected and without[0].id == expected
        assert with_stage[0].title and with_stage[0].payload["topic"]
        assert [c.score for c in with_stage] != [c.score for c in without]  # the MaxSim list took part
        assert [c.score for c in with_stage] == sorted((c.score for c in with_stage), reverse=True)


def test_filters_hold_with_the_stage(late_store):
    from search.v1 import common_pb2 as c
    from services.retrieval.filters import to_filter

    flt = to_filter(c.Filter(must=[c.Condition(field=c.FieldCondition(key="topic", keyword="geology"))]))
    got, _ = late_store.retrieve("li", "science", 10, query_filter=flt)
    assert {x.id for x in got} == {"volcano", "tides"}


def test_a_service_without_the_model_refuses_a_collection_with_the_stage(late_store, backend, encoder):
    other = make_store(backend, encoder)  # no late-interaction model loaded
    with pytest.raises(FailedPrecondition, match="late"):
        other.retrieve("li", "lava", 3)
    with pytest.raises(FailedPrecondition, match="late"):
        other.upsert("li", [DocumentIn("x", "", "y")])
    with pytest.raises(FailedPrecondition, match="RETRIEVAL_LATE_INTERACTION_MODEL_DIR"):
        other.create_collection("wants_it", {}, late_interaction=True)
