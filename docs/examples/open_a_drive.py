"""Open an existing drive from its store URLs alone, read a file, commit a new version.

No home folder, no environment variables, no registry: this is how the operator
and the CSI node service use a drive.

    python open_a_drive.py META_URL STORE_URL DRIVE PATH
"""

import asyncio
import io
import sys

from mediadrive.core.drive import Drive
from mediadrive.core.identity import Identity


async def main(meta_url: str, store_url: str, name: str, path: str) -> None:
    identity = Identity(author="render-job-42@farm", host="farm-node-7")
    async with await Drive.open(name, meta_url, store_url, identity=identity) as drive:
        reader = await drive.reader(path)
        first = await reader.read(0, 16)  # fetches one verified block, not the file
        print(f"{path} v{reader.info.version}: {reader.size} bytes, starts {first!r}")

        result = await drive.write_file(path, io.BytesIO(b"graded " + first), message="grade")
        print(f"committed v{result.version}, {result.bytes_uploaded} bytes uploaded")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
