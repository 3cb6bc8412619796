#!/usr/bin/env python3
"""Packs a docker build context into one reproducible tar (sorted names, fixed mtime and
owners), so its checksum names the image and one file copy ships it. Writes OUT only when the
content differs; prints {"changed": bool, "sha256": hex}.

Usage: build-context.py OUT ARCNAME=DIR [ARCNAME=DIR ...]
"""

import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile


def pack(sources):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, directory in sources:
            for root, dirs, files in os.walk(directory):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    path = os.path.join(root, name)
                    info = tar.gettarinfo(path, os.path.join(arcname, os.path.relpath(path, directory)))
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    info.mode = 0o755 if info.mode & 0o111 else 0o644
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
    return buffer.getvalue()


def main():
    out, sources = sys.argv[1], [arg.split("=", 1) for arg in sys.argv[2:]]
    data = pack(sources)
    try:
        with open(out, "rb") as handle:
            changed = handle.read() != data
    except FileNotFoundError:
        changed = True
    if changed:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        # A temporary file of its own: another run on this controller may pack the same context
        # at once, and a reader sees the old file or the new one, whole.
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(out), prefix=os.path.basename(out) + ".", delete=False) as handle:
            handle.write(data)
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, out)
    print(json.dumps({"changed": changed, "sha256": hashlib.sha256(data).hexdigest()}))


if __name__ == "__main__":
    main()
