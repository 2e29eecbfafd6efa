"""The few Kubernetes value types the custom resources embed, as pydantic models.

Only what the resources use is modelled; a field Kubernetes defines more
loosely (resources, tolerations) keeps its shape but is checked by the
apiserver when the child object is applied.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# A Kubernetes resource quantity: 100Gi, 500M, 2, 250m.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]
# A DNS-1123 label: object names of Secrets, Services, storage classes.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ObjectName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]


class Spec(BaseModel):
    """Base of every spec model: camelCase in YAML, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class SecretKeyRef(Spec):
    """One key of a Secret in the resource's namespace."""

    name: ObjectName
    key: str = Field(min_length=1)


class S3Credentials(Spec):
    """A Secret holding an access key pair."""

    name: ObjectName
    access_key_id_key: str = Field("accessKeyId", alias="accessKeyId", min_length=1)
    secret_access_key_key: str = Field("secretAccessKey", alias="secretAccessKey", min_length=1)


class ObjectStore(Spec):
    """An S3 bucket (and optional prefix) and how to reach it."""

    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")
    prefix: str = Field("", pattern=r"^[A-Za-z0-9._/-]*$")
    endpoint: str | None = Field(None, pattern=r"^https?://[^\s/]+(/.*)?$")
    region: str | None = None
    credentials_secret: S3Credentials | None = Field(None, alias="credentialsSecret")

    def store_url(self) -> str:
        """The blob store URL (without credentials: they come from the environment)."""
        url = f"s3://{self.bucket}"
        if self.prefix:
            url += "/" + self.prefix.strip("/")
        options = []
        if self.endpoint:
            options.append(f"endpoint={self.endpoint}")
        if self.region:
            options.append(f"region={self.region}")
        return url + ("?" + "&".join(options) if options else "")


class Resources(Spec):
    """Container resources, as in a Pod spec."""

    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}

    def render(self) -> dict[str, Any]:
        return {k: dict(v) for k, v in (("requests", self.requests), ("limits", self.limits)) if v}


class Toleration(Spec):
    key: str | None = None
    operator: str | None = Field(None, pattern=r"^(Exists|Equal)$")
    value: str | None = None
    effect: str | None = Field(None, pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$")
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds")

    def render(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class Condition(BaseModel):
    """A status condition, as Kubernetes objects report them."""

    model_config = ConfigDict(populate_by_name=True)

    type: str
    status: str = Field(pattern=r"^(True|False|Unknown)$")
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = Field(None, alias="lastTransitionTime")
    observed_generation: int | None = Field(None, alias="observedGeneration")
