"""The Helm chart, checked by the real helm: lint, render, and values refused by schema."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "mediadrive"


def helm_binary() -> Path:
    cache = Path(os.environ.get("MEDIADRIVE_CACHE", Path.home() / ".cache" / "mediadrive"))
    helm = cache / "cluster" / "bin" / "helm"
    if not helm.exists():
        pytest.fail(f"{helm} is missing: scripts/build-cluster-binaries.sh builds it")
    return helm


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, timeout=120, check=False
    )


def rendered(*sets: str) -> list[dict[str, Any]]:
    args = ["template", "md", str(CHART), "--namespace", "mediadrive"]
    for value in sets:
        args += ["--set", value]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_helm_lint_passes() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_operator_watches_all_namespaces_or_the_ones_given() -> None:
    docs = rendered()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["operator", "run"]
    assert "--all-namespaces" in args
    docs = rendered("operator.watchNamespaces={studio,render}")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=studio" in args and "--namespace=render" in args
    assert "--all-namespaces" not in args


def test_the_operator_runs_unprivileged_with_least_privilege() -> None:
    docs = rendered()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        if "secrets" in rule["resources"]:
            # It reads the Secrets it is told about; it never lists or watches them all.
            assert not {"list", "watch", "delete"} & set(rule["verbs"])


def test_the_operator_has_a_home_and_a_resync_interval_when_given() -> None:
    def env(*sets: str) -> dict[str, str]:
        deployment = next(d for d in rendered(*sets) if d["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        return {e["name"]: e["value"] for e in container["env"]}

    assert env()["HOME"] == "/tmp"
    assert "MEDIADRIVE_OPERATOR_RESYNC" not in env()
    assert env("operator.resyncSeconds=3")["MEDIADRIVE_OPERATOR_RESYNC"] == "3"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("operator.replicas=0", "replicas"),
        ("operator.image.pullPolicy=Sometimes", "pullPolicy"),
        ("operator.logLevel=loud", "logLevel"),
        ("operator.replica=2", "replica"),
        ("operator.resyncSeconds=0", "resyncSeconds"),
    ],
)
def test_bad_values_are_refused_naming_the_field(value: str, field: str) -> None:
    result = helm("template", "md", str(CHART), "--set", value)
    assert result.returncode != 0
    assert field in result.stderr


def test_replicas_share_one_peering_object_where_the_operator_watches() -> None:
    cluster_wide = [d for d in rendered() if d["kind"].endswith("KopfPeering")]
    assert [(d["kind"], d["metadata"]["name"]) for d in cluster_wide] == [
        ("ClusterKopfPeering", "mediadrive")
    ]
    scoped = [
        d for d in rendered("operator.watchNamespaces={studio,render}") if "Peering" in d["kind"]
    ]
    assert sorted((d["kind"], d["metadata"]["namespace"]) for d in scoped) == [
        ("KopfPeering", "render"),
        ("KopfPeering", "studio"),
    ]


def test_the_operator_may_provision_volumes_for_claims() -> None:
    role = next(d for d in rendered() if d["kind"] == "ClusterRole")

    def allowed(group: str, resource: str) -> set[str]:
        verbs: set[str] = set()
        for rule in role["rules"]:
            if group in rule["apiGroups"] and resource in rule["resources"]:
                verbs |= set(rule["verbs"])
        return verbs

    assert {"get", "list", "watch"} <= allowed("storage.k8s.io", "storageclasses")
    assert {"get", "list", "watch", "patch"} <= allowed("", "persistentvolumeclaims")
    assert {"get", "list", "watch", "create", "delete", "patch"} <= allowed("", "persistentvolumes")
    assert {"get", "create", "delete"} <= allowed("mediadrive.io", "drivevolumes")
    assert "create" in allowed("", "events")
