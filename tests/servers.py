"""Real servers on loopback for tests and benchmarks.

Each helper is a plain context manager: it starts the server on a free
port of 127.0.0.1, waits until it answers, yields a small description of
it and stops it (and removes its files) on exit. Nothing here depends on
pytest, so benchmark scripts use the same helpers:

    from tests.servers import minio_server

    with minio_server() as s3:
        client = s3.client()
        bucket = s3.new_bucket()

Servers:
- PostgreSQL: Debian's server (``/usr/lib/postgresql/*/bin``). It refuses to
  run as root, so as root the data directory belongs to the system user
  ``mediadrive-test`` (created when missing) and the server runs as it.
- moto: moto's standalone S3 server from the current Python environment.
- MinIO: the binary built by ``scripts/build-test-binaries.sh`` into
  ``$MEDIADRIVE_CACHE/bin/minio`` (default ``~/.cache/mediadrive``, outside the clone).

Environment overrides: ``MEDIADRIVE_PG_BIN`` (a PostgreSQL bin directory),
``MEDIADRIVE_MINIO_BIN`` (a MinIO binary).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
PG_USER = "mediadrive-test"
TOOL_CACHE = Path(os.environ.get("MEDIADRIVE_CACHE", Path.home() / ".cache" / "mediadrive"))
DEFAULT_MINIO_BIN = TOOL_CACHE / "bin" / "minio"

# Requests to loopback servers must never go through a proxy from the
# environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerStartError(RuntimeError):
    """A server could not be started; the message says why and shows its log."""


@dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL server; ``url`` connects as superuser ``postgres``."""

    url: str
    host: str
    port: int
    user: str
    dbname: str
    data_dir: Path
    socket_dir: Path

    def new_database(self, prefix: str = "test") -> str:
        """Create an empty database and return a URL to it."""
        return create_database(self.url, prefix)


def create_database(admin_url: str, prefix: str = "test") -> str:
    """Create an empty database through ``admin_url``; returns a URL to the new one."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server (moto or MinIO)."""

    kind: str
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    extra: dict[str, str] = field(default_factory=dict)

    def client(self, **config: Any) -> S3Client:
        """A boto3 S3 client for this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 3, "mode": "standard"},
            "proxies": {},
        }
        options.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**options),
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a fresh, empty bucket with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}".lower()
        self.client().create_bucket(Bucket=name)
        return name


# --- process plumbing ---------------------------------------------------------


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=timeout)


def _wait_until(
    name: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    ready: Callable[[], bool],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise ServerStartError(
                f"{name} exited with status {code} while starting; log {log}:\n{_log_tail(log)}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"{name} did not become ready within {timeout:.0f}s; log {log}:\n{_log_tail(log)}"
            )
        time.sleep(0.05)


@contextlib.contextmanager
def _process(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` with output to ``log``; stop it with ``stop_signal`` on exit."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    with log.open("ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                **kwargs,
            )
        except OSError as exc:
            raise ServerStartError(f"cannot run {name} ({argv[0]}): {exc}") from exc
    try:
        yield proc
    finally:
        _stop(proc, stop_signal)


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with _HTTP.open(url, timeout=timeout) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _tempdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run(
    argv: Sequence[str], *, user: str | None = None, env: dict[str, str] | None = None
) -> None:
    kwargs: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    result = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        check=False,
        **kwargs,
    )
    if result.returncode != 0:
        output = result.stdout.decode(errors="replace")
        raise ServerStartError(
            f"{' '.join(argv)} failed with status {result.returncode}:\n{output}"
        )


# --- PostgreSQL ---------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The bin directory of the newest Debian PostgreSQL server installed."""
    override = os.environ.get("MEDIADRIVE_PG_BIN")
    if override:
        path = Path(override)
        if not (path / "postgres").is_file():
            raise ServerStartError(f"MEDIADRIVE_PG_BIN={override} holds no postgres binary")
        return path
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]

    def major(path: Path) -> float:
        try:
            return float(path.parent.name)
        except ValueError:
            return 0.0

    if not candidates:
        raise ServerStartError(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin; "
            "run scripts/install-system-deps.sh (or make install)"
        )
    return max(candidates, key=major)


def ensure_test_user(name: str = PG_USER) -> str:
    """Create the unprivileged system user the PostgreSQL server runs as."""
    try:
        pwd.getpwnam(name)
        return name
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    try:
        pwd.getpwnam(name)  # another process may have created it meanwhile
    except KeyError:
        output = result.stdout.decode(errors="replace")
        raise ServerStartError(f"cannot create user {name}: {output}") from None
    return name


def _pg_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


@contextlib.contextmanager
def postgres_server(timeout: float = 60.0, host: str = LOOPBACK) -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL server on loopback (trust auth, fsync off).

    ``host``: listen there instead (e.g. the address pods of the test cluster reach
    this machine at); clients on that address's subnet are trusted too.
    """
    bin_dir = postgres_bin_dir()
    run_as: str | None = None
    if os.geteuid() == 0:
        run_as = ensure_test_user()
    with _tempdir("mediadrive-pg-") as base:
        data_dir = base / "data"
        socket_dir = base / "socket"
        socket_dir.mkdir()
        log = base / "postgres.log"
        log.touch()
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            for path in (base, socket_dir, log):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        env = _pg_env()
        _run(
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(data_dir),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            user=run_as,
            env=env,
        )
        if host != LOOPBACK:
            with (data_dir / "pg_hba.conf").open("a") as hba:
                hba.write("host all all samenet trust\n")
        port = free_port()
        argv = [
            str(bin_dir / "postgres"),
            "-D",
            str(data_dir),
            "-k",
            str(socket_dir),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={host}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]

        def ready() -> bool:
            probe = subprocess.run(
                [
                    str(bin_dir / "pg_isready"),
                    "-q",
                    "-h",
                    host,
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                check=False,
            )
            return probe.returncode == 0

        # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients
        # instead of waiting for them.
        with _process(
            "postgres", argv, log, env=env, user=run_as, stop_signal=signal.SIGINT
        ) as proc:
            _wait_until("postgres", proc, log, ready, timeout)
            yield PostgresServer(
                url=f"postgresql://postgres@{host}:{port}/postgres",
                host=host,
                port=port,
                user="postgres",
                dbname="postgres",
                data_dir=data_dir,
                socket_dir=socket_dir,
            )


# --- moto ---------------------------------------------------------------------


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(key, None)
    env["NO_PROXY"] = env["no_proxy"] = LOOPBACK
    return env


@contextlib.contextmanager
def moto_server(timeout: float = 60.0) -> Iterator[S3Server]:
    """Start moto's standalone server (all AWS services, S3 included)."""
    with _tempdir("mediadrive-moto-") as base:
        log = base / "moto.log"
        port = free_port()
        endpoint = f"http://{LOOPBACK}:{port}"
        argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]
        env = _server_env()
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")

        def ready() -> bool:
            return _http_status(f"{endpoint}/moto-api/") is not None

        with _process("moto_server", argv, log, env=env) as proc:
            _wait_until("moto_server", proc, log, ready, timeout)
            yield S3Server(
                kind="moto",
                endpoint_url=endpoint,
                access_key="testing",
                secret_key="testing",
            )


# --- MinIO --------------------------------------------------------------------


def minio_binary() -> Path:
    """The MinIO binary built by ``scripts/build-test-binaries.sh``."""
    path = Path(os.environ.get("MEDIADRIVE_MINIO_BIN", DEFAULT_MINIO_BIN))
    if not os.access(path, os.X_OK):
        raise ServerStartError(
            f"no MinIO binary at {path}; run scripts/build-test-binaries.sh (or make test-deps)"
        )
    return path


@contextlib.contextmanager
def minio_server(timeout: float = 60.0, host: str = LOOPBACK) -> Iterator[S3Server]:
    """Start a single-drive MinIO server on a temporary directory (listening on
    ``host``, loopback unless given)."""
    binary = minio_binary()
    access_key = "mediadrive"
    secret_key = "mediadrive-secret"
    with _tempdir("mediadrive-minio-") as base:
        data_dir = base / "data"
        data_dir.mkdir()
        log = base / "minio.log"
        port = free_port()
        console_port = free_port()
        while console_port == port:
            console_port = free_port()
        endpoint = f"http://{host}:{port}"
        argv = [
            str(binary),
            "server",
            str(data_dir),
            "--address",
            f"{host}:{port}",
            "--console-address",
            f"{LOOPBACK}:{console_port}",
            "--certs-dir",
            str(base / "certs"),
            "--quiet",
        ]
        env = _server_env()
        env.update(
            MINIO_ROOT_USER=access_key,
            MINIO_ROOT_PASSWORD=secret_key,
            MINIO_UPDATE="off",
            MINIO_CI_CD="1",
            # Its scanner's passes over the buckets took up to half a CPU second at a
            # time, a burst in whatever a test or a benchmark was timing; slowest: a
            # pass every 30 minutes, pausing between objects.
            MINIO_SCANNER_SPEED="slowest",
            HOME=str(base),
        )

        def ready() -> bool:
            return (
                _http_status(f"{endpoint}/minio/health/live") == 200
                and _http_status(f"{endpoint}/minio/health/ready") == 200
            )

        with _process("minio", argv, log, env=env) as proc:
            _wait_until("minio", proc, log, ready, timeout)
            yield S3Server(
                kind="minio",
                endpoint_url=endpoint,
                access_key=access_key,
                secret_key=secret_key,
                extra={"console_url": f"http://{LOOPBACK}:{console_port}"},
            )


# --- storage pods -------------------------------------------------------------


@dataclass(frozen=True)
class PodServer:
    """A running ``mediadrive storage-pod serve`` process on loopback."""

    url: str
    port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def store_url(self, drive: str, token_file: Path | None = None) -> str:
        """A ``pod://`` store URL for ``drive`` on this pod."""
        query = f"?token_file={token_file}" if token_file is not None else ""
        return f"pod://{LOOPBACK}:{self.port}/{drive}{query}"

    def log_text(self) -> str:
        return _log_tail(self.log, 200)


def mediadrive_command() -> list[str]:
    """How to run the ``mediadrive`` command of the current Python environment."""
    script = Path(sys.executable).parent / "mediadrive"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from mediadrive.cli.main import main; main()"]


@contextlib.contextmanager
def pod_server(
    data_dir: Path | None = None,
    *args: str,
    port: int | None = None,
    timeout: float = 30.0,
) -> Iterator[PodServer]:
    """Start a storage pod on ``127.0.0.1:PORT`` keeping its chunks in ``data_dir``
    (a temporary folder, removed afterwards, when None); ``args`` are more
    ``serve`` flags. Stopped with SIGTERM (it drains) on exit if still running."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(_tempdir("mediadrive-pod-")) / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        log = data_dir.parent / f"{data_dir.name}.log"
        port = port or free_port()
        url = f"http://{LOOPBACK}:{port}"
        argv = [
            *mediadrive_command(),
            "storage-pod",
            "serve",
            "--data",
            str(data_dir),
            "--listen",
            f"{LOOPBACK}:{port}",
            *args,
        ]

        def ready() -> bool:
            return _http_status(f"{url}/healthz") == 200

        proc = stack.enter_context(_process("storage pod", argv, log, env=_server_env()))
        _wait_until("storage pod", proc, log, ready, timeout)
        yield PodServer(url=url, port=port, data_dir=data_dir, log=log, proc=proc)


def _main(argv: Sequence[str]) -> int:
    """Start one server and print how to reach it: ``python -m tests.servers minio``."""
    factories: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
        "postgres": postgres_server,
        "moto": moto_server,
        "minio": minio_server,
    }
    if len(argv) != 1 or argv[0] not in factories:
        print(f"usage: python -m tests.servers {{{','.join(factories)}}}", file=sys.stderr)
        return 2
    out: IO[str] = sys.stdout

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    start = time.monotonic()
    with factories[argv[0]]() as server:
        print(f"started in {time.monotonic() - start:.2f}s: {server}", file=out, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
