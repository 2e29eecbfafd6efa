"""The thin layer that makes rendered objects real: server-side apply.

Applying the same object twice changes nothing, and a child someone edited or
deleted is put back the next time its owner is reconciled. The Kubernetes
client is synchronous; calls run in a thread so kopf's event loop stays free.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

FIELD_MANAGER = "mediadrive-operator"

Object = dict[str, Any]


@functools.cache
def dynamic_client() -> DynamicClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return DynamicClient(client.ApiClient())


def _resource(api_version: str, kind: str) -> Any:
    return dynamic_client().resources.get(api_version=api_version, kind=kind)


def _apply(obj: Object) -> Object:
    resource = _resource(obj["apiVersion"], obj["kind"])
    meta = obj["metadata"]
    result = resource.server_side_apply(
        body=obj,
        name=meta["name"],
        namespace=meta.get("namespace"),
        field_manager=FIELD_MANAGER,
        force_conflicts=True,
    )
    applied: Object = result.to_dict()
    return applied


async def apply(obj: Object, owner: kopf.Body | None = None) -> Object:
    """Create or update ``obj``; a namespaced child is owned by ``owner`` (garbage
    collected with it). Cluster-scoped children cannot have a namespaced owner and
    are removed by the owner's delete handler instead."""
    if owner is not None and obj["metadata"].get("namespace"):
        kopf.append_owner_reference(obj, owner=owner)
    return await asyncio.to_thread(_apply, obj)


def _get(api_version: str, kind: str, name: str, namespace: str | None) -> Object | None:
    try:
        found = _resource(api_version, kind).get(name=name, namespace=namespace)
    except NotFoundError:
        return None
    obj: Object = found.to_dict()
    return obj


async def get(
    api_version: str, kind: str, name: str, namespace: str | None = None
) -> Object | None:
    return await asyncio.to_thread(_get, api_version, kind, name, namespace)


def _delete(api_version: str, kind: str, name: str, namespace: str | None) -> bool:
    try:
        _resource(api_version, kind).delete(name=name, namespace=namespace)
    except NotFoundError:
        return False
    return True


async def delete(api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
    """Delete an object; False if it was already gone."""
    return await asyncio.to_thread(_delete, api_version, kind, name, namespace)


def _list(api_version: str, kind: str, namespace: str | None, selector: str) -> list[Object]:
    found = _resource(api_version, kind).get(namespace=namespace, label_selector=selector)
    return [item.to_dict() for item in found.items]


async def list_objects(
    api_version: str, kind: str, namespace: str | None = None, selector: str = ""
) -> list[Object]:
    return await asyncio.to_thread(_list, api_version, kind, namespace, selector)


def _patch_status(
    resource: tuple[str, str, str], name: str, namespace: str, status: Object
) -> None:
    group, version, plural = resource
    client.CustomObjectsApi(dynamic_client().client).patch_namespaced_custom_object_status(
        group, version, namespace, plural, name, {"status": status}
    )


async def patch_status(
    resource: tuple[str, str, str], name: str, namespace: str, status: Object
) -> None:
    """Merge ``status`` into a custom resource's status (outside a kopf handler of it)."""
    await asyncio.to_thread(_patch_status, resource, name, namespace, status)


def _secret_value(namespace: str, name: str, key: str) -> str | None:
    import base64

    try:
        secret = client.CoreV1Api(dynamic_client().client).read_namespaced_secret(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    encoded = (secret.data or {}).get(key)
    return None if encoded is None else base64.b64decode(encoded).decode()


async def secret_value(namespace: str, name: str, key: str) -> str | None:
    """One key of a Secret, decoded; None if the Secret or the key is missing."""
    return await asyncio.to_thread(_secret_value, namespace, name, key)
