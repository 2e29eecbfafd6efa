"""Commands for storage pods and tier policies: ``drive set``, ``drive show``, ``publish``.

Heavy imports stay inside the commands: ``mediadrive --help`` loads none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from mediadrive.core.errors import ConfigError, MediadriveError

from .output import JsonFlag, err, failure, out, print_json, run_async
from .targets import parse_target

if TYPE_CHECKING:
    from mediadrive.core.config import DriveRef
    from mediadrive.core.drive import PublishResult
    from mediadrive.core.policy import TierPolicy

T = TypeVar("T")

# `--pod off` takes a machine's pods away (writes and reads go to the cloud alone).
NO_POD = ("off", "none", "")


def load_policy(path: Path) -> TierPolicy:
    """A tier policy from a YAML file (the policy itself, or a ``TierPolicy`` resource's
    ``spec``); ConfigError in one line naming the file and the field."""
    import yaml
    from pydantic import ValidationError

    from mediadrive.core.policy import TierPolicy, policy_error

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if isinstance(document, dict) and document.get("kind") == "TierPolicy":
        document = document.get("spec")
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: a tier policy is a mapping of fields, not a list or a value")
    try:
        return TierPolicy.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {policy_error(exc)}") from None


def merge_pod_urls(text: str) -> str:
    """``pod://a:1/show,pod://b:1/show`` -> ``pod://a:1,b:1/show``: several URLs of the
    same pods (same scheme, drive and options) as the one URL listing their members."""
    import re
    from urllib.parse import urlsplit, urlunsplit

    urls = re.split(r",(?=[A-Za-z][A-Za-z0-9+.-]*://)", text.strip())
    if len(urls) == 1:
        return urls[0]
    parts = [urlsplit(u) for u in urls]
    first = parts[0]
    if any((p.scheme, p.path, p.query) != (first.scheme, first.path, first.query) for p in parts):
        raise ConfigError(
            "--pod: several URLs must be members of the same pods "
            "(same scheme, drive and options); or write pod://HOST:PORT,HOST:PORT/DRIVE"
        )
    return urlunsplit(first._replace(netloc=",".join(p.netloc for p in parts)))


def _pod_url(value: str | None, current: str | None) -> str | None:
    from mediadrive.core.blob import check_store_url

    if value is None:
        return current
    if value.strip().lower() in NO_POD:
        return None
    return check_store_url(merge_pod_urls(value))


def drive_set(
    name: str,
    pod: Annotated[
        str | None,
        typer.Option(
            "--pod",
            help="This machine's storage pods: a pod:// URL (pod://HOST:PORT[,HOST:PORT]/DRIVE); "
            "'off' for none.",
        ),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(help="The pods' region (default: as the pods say); 'off' to forget it."),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="A tier policy YAML file, applied to the whole drive."),
    ] = None,
) -> None:
    """Set this machine's storage pods for a drive, and the drive's tier policy."""
    from .drive_registry import load_ref, open_drive, save_ref

    if pod is None and region is None and policy is None:
        raise failure("nothing to set: give --pod, --region or --policy")
    try:
        tier_policy = load_policy(policy) if policy is not None else None
        ref = load_ref(name)
        new_region = ref.region if region is None else (region.strip() or None)
        if region is not None and region.strip().lower() in NO_POD:
            new_region = None
        new_ref = ref.model_copy(
            update={"pod_url": _pod_url(pod, ref.pod_url), "region": new_region}
        )
    except MediadriveError as exc:
        raise failure(str(exc)) from None

    async def apply() -> None:
        if tier_policy is None:
            return
        drive = await open_drive(name)
        try:
            settings = tier_policy.apply(drive.settings)
            await drive.meta.update_settings(settings)
        finally:
            await drive.close()

    run_async(apply())
    save_ref(new_ref)
    shown = _shown(new_ref)
    out.print(
        f"drive [bold]{name}[/]: pods {shown['pod_url'] or 'none'}"
        + (f" (region {new_ref.region})" if new_ref.region else "")
        + (f"; policy from {policy} applied" if policy is not None else "")
    )


def _shown(ref: DriveRef) -> dict[str, Any]:
    from mediadrive.core.credentials import redact_url

    return {
        "name": ref.name,
        "meta_url": redact_url(ref.meta_url),
        "store_url": redact_url(ref.store_url),
        "pod_url": redact_url(ref.pod_url) if ref.pod_url else None,
        "region": ref.region,
    }


def drive_show(name: str, json_out: JsonFlag = False) -> None:
    """A drive's stores, this machine's storage pods and the drive's tier policy."""
    from mediadrive.core.policy import TierPolicy

    from .drive_registry import load_ref, open_drive

    async def body() -> dict[str, Any]:
        ref = load_ref(name)
        drive = await open_drive(name)
        try:
            policy = TierPolicy.of(drive.settings)
        finally:
            await drive.close()
        return {
            **_shown(ref),
            "write_target": policy.target(has_pod=ref.pod_url is not None),
            "policy": policy.model_dump(mode="json", by_alias=True),
        }

    shown = run_async(body())
    if json_out:
        print_json(shown)
        return
    import yaml

    out.print(f"[bold]{name}[/]", highlight=False)
    for key in ("meta_url", "store_url", "pod_url", "region", "write_target"):
        label = key.removesuffix("_url").replace("_", " ")
        out.print(f"  {label:<13}{shown[key] or '-'}", highlight=False, markup=False)
    out.print("  policy:", highlight=False)
    text = yaml.safe_dump(shown["policy"], sort_keys=False, default_flow_style=False)
    for line in text.splitlines():
        out.print(f"    {line}", highlight=False, markup=False)


def _publish_in_mount(path: str, message: str) -> dict[str, Any] | None:
    """Publish through the mount's agent; None when ``path`` is in no mount (or the
    node agent is not installed)."""
    import importlib

    try:
        mounts = importlib.import_module("mediadrive.cli.mount_commands")
    except ImportError:
        return None
    found: dict[str, Any] | None = mounts.local_publish(path, message)
    return found


def _publish_on_drive(text: str, message: str, show_progress: bool) -> dict[str, Any]:
    from .drive_registry import open_drive
    from .progress import count_progress

    target = parse_target(text)
    assert target is not None

    async def body() -> PublishResult:
        drive = await open_drive(target.drive)
        try:
            with count_progress(err.console if show_progress else None, "publishing") as tick:
                return await drive.publish(target.path, message, tick)
        finally:
            await drive.close()

    result = run_async(body())
    return {"path": str(target), **result.as_dict()}


def publish(
    paths: Annotated[
        list[str], typer.Argument(help="NAME:/path (a file or folder), or paths inside a mount.")
    ],
    message: Annotated[str, typer.Option("-m", "--message", help="Say what is published.")] = "",
    json_out: JsonFlag = False,
) -> None:
    """Send what is held in the storage pods (a file, or everything under a folder) to the
    cloud. Inside a mount, what is pending is saved first."""
    from mediadrive.core.units import format_size

    results = []
    for text in paths:
        if parse_target(text) is not None:
            results.append(_publish_on_drive(text, message, not json_out))
            continue
        try:
            found = _publish_in_mount(text, message)
        except MediadriveError as exc:
            raise failure(str(exc)) from None
        if found is None:
            raise failure(f"{text!r} is neither a drive path (NAME:/path) nor inside a mount")
        results.append({"path": text, **found})
    if json_out:
        print_json(results[0] if len(results) == 1 else results)
        return
    for r in results:
        skipped = (
            f"; {r['temporary_skipped']} temporary file(s) stay in the pods"
            if r["temporary_skipped"]
            else ""
        )
        if r.get("held_elsewhere"):
            skipped += (
                f"; {len(r['held_elsewhere'])} file(s) held in another region's pods "
                f"(publish them there), e.g. {r['held_elsewhere'][0]}"
            )
        out.print(
            f"{r['path']}: published {r['files']} file(s), sent {r['chunks_sent']} chunk(s) "
            f"({format_size(r['bytes_sent'])}), {r['chunks_present']} already in the cloud"
            f"{skipped}",
            highlight=False,
        )


def register(app: typer.Typer, drive_app: typer.Typer) -> None:
    drive_app.command("set")(drive_set)
    drive_app.command("show")(drive_show)
    app.command("publish")(publish)
