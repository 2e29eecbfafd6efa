"""Store and metadata URLs, checked by the engine registered for their scheme."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mediadrive.core.blob import check_store_url, store_schemes
from mediadrive.core.blob.local import local_root
from mediadrive.core.blob.s3 import S3Location
from mediadrive.core.errors import ConfigError
from mediadrive.core.meta import check_meta_url, connect, meta_schemes


def test_importing_the_store_packages_loads_no_engine() -> None:
    probe = (
        "import sys, mediadrive.core.blob, mediadrive.core.meta\n"
        "engines = ('boto3', 'psycopg', 'mediadrive.core.blob.s3', 'mediadrive.core.blob.local',"
        " 'mediadrive.core.meta.sqlite', 'mediadrive.core.meta.postgres')\n"
        "print([name for name in engines if name in sys.modules])\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert loaded == "[]"


def test_builtin_schemes_are_known_before_their_engines_load() -> None:
    assert store_schemes()[:2] == ["file", "s3"]
    assert meta_schemes()[:4] == ["sqlite", "postgresql", "postgres", "cockroachdb"]


# -- blob store URLs ----------------------------------------------------------------------


def test_file_url() -> None:
    url = "file:///var/lib/mediadrive/store"
    assert check_store_url(url) == url
    assert local_root(url) == "/var/lib/mediadrive/store"


def test_s3_url() -> None:
    url = "s3://media-bucket/drives/show?endpoint=http://127.0.0.1:9000"
    assert check_store_url(url) == url
    assert S3Location.parse(url) == S3Location(
        bucket="media-bucket", prefix="drives/show", endpoint="http://127.0.0.1:9000"
    )
    plain = S3Location.parse("s3://media-bucket?region=eu-west-1")
    assert (plain.prefix, plain.endpoint, plain.region) == ("", None, "eu-west-1")


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://host/dir", "must start with file://"),
        ("/plain/path", "must start with file://"),
        ("file://relative/dir", "file:///ABSOLUTE/PATH"),
        ("file:relative", "file:///ABSOLUTE/PATH"),
        ("file:///abs/dir?endpoint=x", "unknown option"),
        ("s3:///prefix-only", "names no bucket"),
        ("s3://bucket/p?endpoint=ftp://127.0.0.1:9000", "endpoint must be an http"),
        ("s3://bucket/p?endpoint=127.0.0.1:9000", "endpoint must be an http"),
        ("s3://bucket/p?secret=x", "unknown option"),
    ],
)
def test_store_url_refused(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as refused:
        check_store_url(url)
    assert repr(url) in str(refused.value)
    assert "\n" not in str(refused.value)


# -- metadata URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////tmp/x/meta.db",
        "postgresql://user@db.example:5432/media",
        "postgres://db/media",
        "cockroachdb://root@127.0.0.1:26257/defaultdb",
    ],
)
def test_meta_url_accepted(url: str) -> None:
    assert check_meta_url(url) == url


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("sqlite://relative.db", "sqlite:///ABSOLUTE/PATH"),
        ("sqlite:relative.db", "sqlite:///ABSOLUTE/PATH"),
        ("postgresql:///media", "names no host"),
        ("mysql://db/media", "must start with sqlite://, postgresql://, postgres:// or cockroach"),
        ("meta.db", "must start with sqlite://"),
    ],
)
def test_meta_url_refused(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as refused:
        check_meta_url(url)
    assert repr(url) in str(refused.value)
    with pytest.raises(ConfigError, match=complaint):
        connect(url, "show")
