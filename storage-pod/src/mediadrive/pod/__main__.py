"""``python -m mediadrive.pod --settings FILE``: a pod from its rendered settings.

What a container runs: ``FILE`` is ``PodSettings`` as JSON (what the operator
renders), and ``MEDIADRIVE_POD_*`` variables fill the fields it leaves out. The
same server as ``mediadrive storage-pod serve``, without the CLI's distribution.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from mediadrive.core.credentials import redact_url
from mediadrive.core.errors import MediadriveError

from .service import serve, setup_logging
from .settings import PodSettings, settings_error


def _fail(message: str) -> int:
    sys.stderr.write(f"mediadrive-pod: error: {redact_url(message)}\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mediadrive.pod")
    parser.add_argument("--settings", type=Path, help="PodSettings as JSON")
    args = parser.parse_args(argv)
    try:
        values = json.loads(args.settings.read_text()) if args.settings else {}
        settings = PodSettings(**values)
    except ValidationError as exc:
        return _fail(settings_error(exc))
    except OSError as exc:
        return _fail(f"--settings {args.settings}: cannot read it ({exc.strerror})")
    except ValueError as exc:
        return _fail(f"--settings {args.settings}: not JSON ({exc})")
    setup_logging()
    try:
        asyncio.run(serve(settings))
    except MediadriveError as exc:
        return _fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
