"""The live API's OpenAPI document is valid: every ``$ref`` resolves."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from mediadrive.node.api import MAX_NUMBER, openapi_document


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_the_openapi_document_validates_and_every_ref_resolves() -> None:
    document = openapi_document()
    validate(document)
    found = refs(document)
    assert "#/components/schemas/ManifestEntry" in found
    for ref in found:
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict), ref


def test_numbers_in_the_document_are_bounded() -> None:
    schemas = openapi_document()["components"]["schemas"]
    assert schemas["RestoreRequest"]["properties"]["version"]["maximum"] == MAX_NUMBER
    read = openapi_document()["paths"]["/v1/read"]["get"]["parameters"]
    assert [p["schema"].get("maximum") for p in read] == [None, MAX_NUMBER]
