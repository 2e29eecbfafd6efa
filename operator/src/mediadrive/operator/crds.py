"""``python -m mediadrive.operator.crds [DIR]``: write the CRDs the models define.

``crds/`` is generated, never edited; a test fails when it drifts from the models.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

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
                    "versions": [
                        {"name": "v1", "served": True, "storage": True, "schema": schema}
                    ],
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


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in documents().items():
        path = folder / name
        path.write_text(render(doc))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else "crds")
    for path in write(folder):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
