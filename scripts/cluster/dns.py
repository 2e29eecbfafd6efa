"""A minimal cluster DNS for the one-node cluster (standard library only).

Answers A queries under the cluster domain from the apiserver's Services and
EndpointSlices, refreshed every second:

- ``SERVICE.NAMESPACE.svc.DOMAIN``: the ClusterIP; for a headless Service the
  addresses of its ready endpoints;
- ``HOSTNAME.SERVICE.NAMESPACE.svc.DOMAIN``: an endpoint with a hostname (the
  pods of a StatefulSet whose serviceName is that headless Service).

Other names under the domain get NXDOMAIN (or an empty answer for other types);
names outside it are forwarded to the host's resolver. Started and stopped by
scripts/cluster/up.sh and down.sh.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from typing import Any

_TYPE_A = 1
_CLASS_IN = 1
_TTL = 5
_RCODE_NXDOMAIN = 3
_RCODE_SERVFAIL = 2


class Records:
    """Name -> IPv4 addresses, replaced whole on each refresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, list[str]] = {}

    def replace(self, records: dict[str, list[str]]) -> None:
        with self._lock:
            self._records = records

    def lookup(self, name: str) -> list[str] | None:
        with self._lock:
            return self._records.get(name)


def _service_records(services: Iterable[dict[str, Any]], domain: str) -> dict[str, list[str]]:
    records: dict[str, list[str]] = {}
    for service in services:
        meta, spec = service["metadata"], service.get("spec", {})
        name = f"{meta['name']}.{meta['namespace']}.svc.{domain}"
        cluster_ip = spec.get("clusterIP")
        records[name] = [cluster_ip] if cluster_ip and cluster_ip != "None" else []
    return records


def _endpoint_records(
    slices: Iterable[dict[str, Any]], headless: set[str], domain: str
) -> dict[str, list[str]]:
    records: dict[str, list[str]] = {}
    for endpoint_slice in slices:
        if endpoint_slice.get("addressType") != "IPv4":
            continue
        meta = endpoint_slice["metadata"]
        service = meta.get("labels", {}).get("kubernetes.io/service-name")
        if not service:
            continue
        base = f"{service}.{meta['namespace']}.svc.{domain}"
        for endpoint in endpoint_slice.get("endpoints") or []:
            addresses = endpoint.get("addresses") or []
            if endpoint.get("hostname"):
                records.setdefault(f"{endpoint['hostname']}.{base}", []).extend(addresses)
            if base in headless and endpoint.get("conditions", {}).get("ready", True):
                records.setdefault(base, []).extend(addresses)
    return records


def build_records(
    services: list[dict[str, Any]], slices: list[dict[str, Any]], domain: str
) -> dict[str, list[str]]:
    records = _service_records(services, domain)
    headless = {name for name, addresses in records.items() if not addresses}
    for name, addresses in _endpoint_records(slices, headless, domain).items():
        records.setdefault(name, []).extend(addresses)
    return records


class ApiClient:
    def __init__(self, server: str, ca: str, cert: str, key: str) -> None:
        self._server = server.rstrip("/")
        self._context = ssl.create_default_context(cafile=ca)
        self._context.load_cert_chain(cert, key)

    def items(self, path: str) -> list[dict[str, Any]]:
        url = self._server + path
        with urllib.request.urlopen(url, context=self._context, timeout=10) as response:
            body = json.load(response)
        items: list[dict[str, Any]] = body.get("items", [])
        return items


def refresh_forever(api: ApiClient, records: Records, domain: str, interval: float) -> None:
    while True:
        try:
            services = api.items("/api/v1/services")
            slices = api.items("/apis/discovery.k8s.io/v1/endpointslices")
            records.replace(build_records(services, slices, domain))
        except (OSError, ValueError, KeyError) as exc:
            print(f"dns: refresh failed: {exc}", file=sys.stderr, flush=True)
        time.sleep(interval)


def parse_question(packet: bytes) -> tuple[str, int, int]:
    """The query's name (lower case, no trailing dot), type, and where the question ends."""
    offset = 12
    labels = []
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(packet[offset : offset + length].decode("ascii").lower())
        offset += length
    qtype, _qclass = struct.unpack("!HH", packet[offset : offset + 4])
    return ".".join(labels), qtype, offset + 4


def answer(packet: bytes, end: int, addresses: list[str] | None, qtype: int) -> bytes:
    """A response to ``packet``: the addresses for an A query, NXDOMAIN for None."""
    query_id, flags = struct.unpack("!HH", packet[:4])
    rcode = _RCODE_NXDOMAIN if addresses is None else 0
    found = addresses if addresses is not None and qtype == _TYPE_A else []
    # QR, opcode and RD from the query, AA, RA.
    out_flags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080 | rcode
    header = struct.pack("!HHHHHH", query_id, out_flags, 1, len(found), 0, 0)
    body = b"".join(
        struct.pack("!HHHIH", 0xC00C, _TYPE_A, _CLASS_IN, _TTL, 4) + socket.inet_aton(address)
        for address in found
    )
    return header + packet[12:end] + body


def _servfail(packet: bytes) -> bytes:
    query_id, flags = struct.unpack("!HH", packet[:4])
    return struct.pack("!HH", query_id, 0x8000 | (flags & 0x7900) | 0x0080 | _RCODE_SERVFAIL)


def forward(packet: bytes, upstream: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as relay:
        relay.settimeout(3)
        relay.sendto(packet, (upstream, 53))
        reply, _ = relay.recvfrom(65535)
        return reply


class Server:
    def __init__(self, records: Records, domain: str, upstream: str | None) -> None:
        self.records = records
        self.suffix = "." + domain
        self.upstream = upstream

    def handle(self, sock: socket.socket, packet: bytes, client: tuple[str, int]) -> None:
        try:
            name, qtype, end = parse_question(packet)
        except (IndexError, ValueError, struct.error, UnicodeDecodeError):
            return
        if name.endswith(self.suffix):
            reply = answer(packet, end, self.records.lookup(name), qtype)
        elif self.upstream is None:
            reply = answer(packet, end, None, qtype)
        else:
            try:
                reply = forward(packet, self.upstream)
            except OSError:
                reply = _servfail(packet)
        sock.sendto(reply, client)

    def serve(self, listen: str, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((listen, port))
            print(f"dns: serving on {listen}:{port}", file=sys.stderr, flush=True)
            while True:
                packet, client = sock.recvfrom(4096)
                threading.Thread(
                    target=self.handle, args=(sock, packet, client), daemon=True
                ).start()


def host_upstream(resolv_conf: str) -> str | None:
    """The host's first nameserver that is not on loopback."""
    try:
        with open(resolv_conf) as lines:
            for line in lines:
                words = [*line.split(), "", ""]
                address = words[1]
                if (
                    words[0] == "nameserver"
                    and not address.startswith("127.")
                    and ":" not in address
                ):
                    return address
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Minimal cluster DNS.")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--apiserver", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--domain", default="cluster.local")
    parser.add_argument("--resolv-conf", default="/etc/resolv.conf")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    records = Records()
    api = ApiClient(args.apiserver, args.ca, args.cert, args.key)
    threading.Thread(
        target=refresh_forever, args=(api, records, args.domain, args.interval), daemon=True
    ).start()
    Server(records, args.domain, host_upstream(args.resolv_conf)).serve(args.listen, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
