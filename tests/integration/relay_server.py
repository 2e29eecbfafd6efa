"""A pod with only the event relay on it, for tests that kill or freeze the process.

    python -m tests.integration.relay_server PORT DRIVE=META_URL [...]

Prints ``ready`` once it listens.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from mediadrive.pod.relay import setup


async def serve(port: int, drives: dict[str, str]) -> None:
    app = web.Application()
    setup(app, drives, poll=0.05, keepalive=0.3)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    drives = dict(arg.split("=", 1) for arg in argv[1:])
    asyncio.run(serve(int(argv[0]), drives))


if __name__ == "__main__":
    main(sys.argv[1:])
