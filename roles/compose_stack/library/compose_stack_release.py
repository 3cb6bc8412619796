#!/usr/bin/python
"""Writes the files of a release into a project folder in one round trip, and returns what was
there before (the live release, to keep as the previous one or to put back)."""

DOCUMENTATION = r"""
module: compose_stack_release
short_description: Write a release's files and folders at once; return the files they replace
description:
  - Creates the folders and writes the files of a compose_stack release (compose.yaml, .env, the
    proxy config) under O(path), each atomically and only where its content or mode differs.
  - Returns the content the release files had before, so that the caller can keep it as the
    previous release or put it back after a failed deploy.
  - One module run replaces a file/slurp/copy task per folder and file: a no-op deploy costs one
    round trip here instead of a dozen.
  - Removes the paths named in O(absent), and returns the files named in O(read), in the same run.
  - Supports check mode and diff mode (a diff per changed file).
options:
  path:
    description: The project folder.
    type: path
    required: true
  directories:
    description: Folders under O(path) to create, as relative name -> octal mode (V("") is O(path)).
    type: dict
    default: {}
  files:
    description: Files under O(path), as relative name -> base64 content (a release record).
    type: dict
    required: true
  modes:
    description: Octal mode of each file, by relative name; files not named here get V(0600).
    type: dict
    default: {}
  absent:
    description: Files or folders under O(path) to remove (a folder with everything in it).
    type: list
    elements: str
    default: []
  read:
    description: Files under O(path) to return as they are (not written), in the same round trip.
    type: list
    elements: str
    default: []
author: compose_stack role
"""

RETURN = r"""
changed_files:
  description: Relative names of the files whose content or mode was (or in check mode would be) changed.
  type: list
  returned: always
before:
  description: Relative name -> base64 content of each file in O(files) as it was before this run (absent files left out).
  type: dict
  returned: always
removed:
  description: Relative names of the O(absent) paths that were (or in check mode would be) removed.
  type: list
  returned: always
read:
  description: Relative name -> base64 content of each file in O(read) that exists.
  type: dict
  returned: always
"""

import base64
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule


def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def mode_of(path):
    return os.stat(path).st_mode & 0o7777


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "directories": {"type": "dict", "default": {}},
            "files": {"type": "dict", "required": True},
            "modes": {"type": "dict", "default": {}},
            "absent": {"type": "list", "elements": "str", "default": []},
            "read": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    root = module.params["path"]
    changed_dirs, changed_files, before, diffs = [], [], {}, []

    # Parents first.
    for name, mode in sorted(module.params["directories"].items(), key=lambda item: item[0].count("/") + bool(item[0])):
        path = os.path.join(root, name)
        wanted = int(str(mode), 8)
        if os.path.isdir(path) and mode_of(path) == wanted:
            continue
        changed_dirs.append(name or ".")
        if not module.check_mode:
            os.makedirs(path, exist_ok=True)
            os.chmod(path, wanted)

    for name, encoded in sorted(module.params["files"].items()):
        path = os.path.join(root, name)
        if not os.path.isdir(os.path.dirname(path)) and not (module.check_mode and changed_dirs):
            module.fail_json(msg=f"{os.path.dirname(path)} does not exist: name it in directories (or deploy first)")
        content = base64.b64decode(encoded)
        wanted = int(str(module.params["modes"].get(name, "0600")), 8)
        old = read(path)
        if old is not None:
            before[name] = base64.b64encode(old).decode()
        if old == content and mode_of(path) == wanted:
            continue
        changed_files.append(name)
        if module._diff:
            diffs.append({"before_header": path, "after_header": path,
                          "before": "" if old is None else old.decode(errors="replace"),
                          "after": content.decode(errors="replace")})
        if module.check_mode:
            continue
        if old == content:
            os.chmod(path, wanted)
            continue
        # Atomic: a rename in the same folder (bind mounts of the folder see the new file).
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".release-")
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        os.chmod(temporary, wanted)
        os.replace(temporary, path)

    removed = [name for name in module.params["absent"] if os.path.lexists(os.path.join(root, name))]
    if not module.check_mode:
        for name in removed:
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)

    read_back = {name: base64.b64encode(content).decode() for name in module.params["read"]
                 if (content := read(os.path.join(root, name))) is not None}

    result = {"changed": bool(changed_dirs or changed_files or removed), "changed_files": changed_files,
              "changed_directories": changed_dirs, "before": before, "removed": removed, "read": read_back}
    if diffs:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
