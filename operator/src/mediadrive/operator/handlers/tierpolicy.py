"""TierPolicy handlers: a policy's changes reach every drive that follows it."""

from __future__ import annotations

from typing import Any

import kopf

from mediadrive.core.meta import connect
from mediadrive.core.policy import TierPolicy

from .. import apply
from ..conditions import set_condition
from ..resources import drivevolume, tierpolicy
from ..resources.drivevolume import DriveVolumeSpec
from ..schema import GROUP, VERSION
from .common import namespace_of, parse_spec

RESOURCE = (GROUP, VERSION, tierpolicy.KIND.plural)


async def apply_policy(drive: str, meta_url: str, policy: TierPolicy) -> None:
    """Store ``policy`` in the drive's settings, where every mount reads it."""
    meta = connect(meta_url, drive)
    try:
        settings = await meta.open_drive()
        updated = policy.apply(settings)
        if updated != settings:
            await meta.update_settings(updated)
    finally:
        await meta.close()


async def followers(namespace: str, policy: str) -> list[tuple[str, DriveVolumeSpec]]:
    """The DriveVolumes of ``namespace`` whose tierPolicyRef is ``policy``."""
    found = []
    for body in await apply.list_objects(f"{GROUP}/{VERSION}", "DriveVolume", namespace):
        spec = DriveVolumeSpec.model_validate(body.get("spec") or {})
        if spec.tier_policy_ref == policy:
            found.append((body["metadata"]["name"], spec))
    return found


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def reconcile(
    body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, **_: Any
) -> None:
    ns = namespace_of(namespace)
    policy = parse_spec(TierPolicy, body)
    names = []
    for volume, spec in await followers(ns, name):
        ref = spec.metadata.secret_ref
        meta_url = await apply.secret_value(ns, ref.name, ref.key)
        if meta_url is None:
            # The DriveVolume reports its missing Secret; it applies the policy once it
            # can reach its store.
            continue
        await apply_policy(drivevolume.drive_name(volume, spec), meta_url.strip(), policy)
        names.append(volume)
    generation = body.metadata.get("generation")
    patch.status.update(
        {
            "drives": sorted(names),
            "observedGeneration": generation,
            "conditions": set_condition(
                list(body.get("status", {}).get("conditions") or []),
                "Applied",
                True,
                "Applied",
                f"applied to {len(names)} drive(s)",
                generation,
            ),
        }
    )
