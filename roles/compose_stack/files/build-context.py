#!/usr/bin/env python3
"""Packs a docker build context into one reproducible tar (sorted names, fixed mtime and
owners), so its checksum names the image and one file copy ships it. Writes OUT only when the
content differs; prints {"changed": bool, "sha256": hex}. OUT.sources records the sources' names,
sizes, modes and mtimes with the checksum: while they are the same, the sources are not read again
(a no-op deploy packs nothing).

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


def listing(sources):
    """What packing reads, as names, sizes, modes and mtimes: a changed file changes it."""
    entries = []
    for arcname, directory in sources:
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                stat = os.stat(os.path.join(root, name))
                entries.append([arcname, os.path.relpath(os.path.join(root, name), directory),
                                stat.st_size, stat.st_mode, stat.st_mtime_ns])
    return entries


def write_atomically(path, data):
    # A temporary file of its own: another run on this controller may pack the same context
    # at once, and a reader sees the old file or the new one, whole.
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".", delete=False) as handle:
        handle.write(data)
    os.chmod(handle.name, 0o644)
    os.replace(handle.name, path)


def main():
    out, sources = sys.argv[1], [arg.split("=", 1) for arg in sys.argv[2:]]
    read = listing(sources)
    try:
        with open(out + ".sources") as handle:
            stamp = json.load(handle)
        if stamp["sources"] == read and os.path.exists(out):
            print(json.dumps({"changed": False, "sha256": stamp["sha256"]}))
            return
    except (FileNotFoundError, ValueError, KeyError):
        pass
    data = pack(sources)
    try:
        with open(out, "rb") as handle:
            changed = handle.read() != data
    except FileNotFoundError:
        changed = True
    checksum = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if changed:
        write_atomically(out, data)
    write_atomically(out + ".sources", json.dumps({"sources": read, "sha256": checksum}).encode())
    print(json.dumps({"changed": changed, "sha256": checksum}))


if __name__ == "__main__":
    main()
