"""The servers the test setup starts are real and answer like the real thing."""

from __future__ import annotations

import psycopg
import pytest

from tests.servers import S3Server


@pytest.mark.postgres
def test_postgres_create_insert_select(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS server_check")
        conn.execute("CREATE TABLE server_check (id integer PRIMARY KEY, name text NOT NULL)")
        conn.execute(
            "INSERT INTO server_check (id, name) VALUES (%s, %s), (%s, %s)",
            (1, "one", 2, "two"),
        )
        rows = conn.execute("SELECT id, name FROM server_check ORDER BY id").fetchall()
        conn.execute("DROP TABLE server_check")
    assert rows == [(1, "one"), (2, "two")]


def _check_put_get_range(server: S3Server) -> None:
    client = server.client()
    bucket = server.new_bucket("server-check")
    body = bytes(range(256)) * 64  # 16 KiB, every byte value
    client.put_object(Bucket=bucket, Key="dir/object.bin", Body=body)

    got = client.get_object(Bucket=bucket, Key="dir/object.bin")
    assert got["Body"].read() == body
    assert got["ContentLength"] == len(body)

    ranged = client.get_object(Bucket=bucket, Key="dir/object.bin", Range="bytes=1000-1999")
    assert ranged["Body"].read() == body[1000:2000]
    assert ranged["ContentRange"] == f"bytes 1000-1999/{len(body)}"

    listed = client.list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listed.get("Contents", [])] == ["dir/object.bin"]
    assert server.new_bucket("server-check") != bucket


@pytest.mark.s3
def test_moto_put_get_range(moto_s3: S3Server) -> None:
    assert moto_s3.kind == "moto"
    _check_put_get_range(moto_s3)


@pytest.mark.s3
def test_minio_put_get_range(minio_s3: S3Server) -> None:
    assert minio_s3.kind == "minio"
    _check_put_get_range(minio_s3)
