"""``python -m mediadrive.operator.crds [ROOT]``: write what the models define.

``crds/``, the chart's ``crds/`` and its ``values.schema.json`` are generated,
never edited; a test fails when they drift from the models.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from . import chart
from .resources import drivevolume, storagepod, tierpolicy
from .schema import Kind

KINDS: tuple[Kind, ...] = (tierpolicy.KIND, storagepod.KIND, drivevolume.KIND)
HEADER = "# Generated from the pydantic models by `make crds`; do not edit.\n"


def peering_definitions() -> list[dict[str, Any]]:
    """kopf's peering resources, so several operator replicas keep one active."""
    schema = {
        "openAPIV3Schema": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
        }
    }
    found = []
    for kind, plural, scope in (
        ("KopfPeering", "kopfpeerings", "Namespaced"),
        ("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
    ):
        found.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "group": "kopf.dev",
                    "scope": scope,
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": schema}],
                },
            }
        )
    return found


def documents() -> dict[str, dict[str, Any]]:
    """File name → CRD, for every resource the operator serves or uses."""
    docs = {f"{kind.crd_name}.yaml": kind.definition() for kind in KINDS}
    for crd in peering_definitions():
        docs[f"{crd['metadata']['name']}.yaml"] = crd
    return docs


def render(doc: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


CHART = Path("charts/mediadrive")


def generated() -> dict[Path, str]:
    """Path under the repository root → its content."""
    files = {}
    for name, doc in documents().items():
        files[Path("crds") / name] = render(doc)
        files[CHART / "crds" / name] = render(doc)
    files[CHART / "values.schema.json"] = chart.render_schema()
    return files


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else ".")
    for relative, text in generated().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
