"""Payload values at a key the collection declares for filtering (services/common/payload_types.py)."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.common import payload_types

DECLARED = {"year": "integer", "score": "float", "tag": "keyword", "open": "bool", "meta.lang": "keyword"}


@pytest.mark.parametrize("payload", [
    {},  # no declared key at all
    {"year": 2020, "score": 2, "tag": "a", "open": False, "meta": {"lang": "en"}},
    {"year": 2020.0, "score": 0.5},  # a Struct's numbers are doubles
    {"tag": ["a", "b"], "year": [2019, 2020]},  # arrays of the type
    {"meta": [{"lang": "en"}, {"lang": "fr"}]},  # through arrays of objects, as filters go
    {"year": None, "meta": {"other": 1}, "undeclared": {"any": ["thing", 1]}},
])
def test_values_of_the_declared_types_pass(payload):
    payload_types.check("c", DECLARED, [payload])


@pytest.mark.parametrize("payload, field_name, said", [
    ({"year": "2020"}, "documents[1].payload.year", "the string '2020' is not an integer"),
    ({"year": 2021.5}, "documents[1].payload.year", "the number 2021.5 is not an integer"),
    ({"year": True}, "documents[1].payload.year", "the boolean true is not an integer"),
    ({"score": "high"}, "documents[1].payload.score", "the string 'high' is not a float"),
    ({"tag": 7}, "documents[1].payload.tag", "the number 7 is not a keyword"),
    ({"tag": ["a", 7]}, "documents[1].payload.tag", "the number 7 is not a keyword"),
    ({"open": 1}, "documents[1].payload.open", "the number 1 is not a bool"),
    ({"meta": {"lang": {"code": "en"}}}, "documents[1].payload.meta.lang", "an object is not a keyword"),
])
def test_another_type_is_refused_naming_the_document_and_the_key(payload, field_name, said):
    with pytest.raises(InvalidArgument) as err:
        payload_types.check("papers", DECLARED, [{"year": 2020}, payload])
    assert err.value.field == field_name
    key = field_name.split(".payload.")[1]
    assert err.value.description.startswith(f"collection 'papers' declares {key!r} ")
    assert f"(filter_fields); {said}, and no filter on {key!r} would match this document" in err.value.description


def test_a_collection_without_declared_fields_takes_any_payload():
    payload_types.check("c", {}, [{"year": "whatever"}])
