#!/usr/bin/python
"""One deploy at a time per host: a lock file taken atomically (O_EXCL) that names its holder."""

DOCUMENTATION = r"""
module: deploy_lock
short_description: Take or release a host's deploy lock
options:
  path: {description: The lock file., type: path, required: true}
  state: {description: present takes the lock, absent releases it., type: str, choices: [present, absent], default: present}
  holder: {description: Who takes it (controller user and host, playbook, start time)., type: dict, default: {}}
  token: {description: The token present returned; absent removes the lock only if it still holds it., type: str}
  expire_after: {description: Seconds after which a held lock counts as abandoned and is taken over., type: int, default: 3600}
  break_lock: {description: Take the lock even if another run holds it (after a killed controller)., type: bool, default: false}
"""

RETURN = r"""
token: {description: Identifies this run's lock (for state=absent)., type: str, returned: state=present}
"""

import json
import os
import time
import uuid

from ansible.module_utils.basic import AnsibleModule


def describe(record):
    holder = record.get("holder", {})
    return (f"{holder.get('user', '?')}@{holder.get('controller', '?')} running {holder.get('playbook', '?')}"
            f" since {holder.get('started', '?')}")


def read(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError:
        return {"taken": 0}


def write_new(path, record):
    """Creates the lock file only if it does not exist (atomic); False if someone else has it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)
    return True


def main():
    module = AnsibleModule(
        argument_spec={"path": {"type": "path", "required": True},
                       "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
                       "holder": {"type": "dict", "default": {}},
                       "token": {"type": "str", "no_log": False},
                       "expire_after": {"type": "int", "default": 3600},
                       "break_lock": {"type": "bool", "default": False}},
        supports_check_mode=False)
    path, params = module.params["path"], module.params
    if params["state"] == "absent":
        record = read(path)
        if record is None:
            module.exit_json(changed=False)
        if record.get("token") != params["token"]:
            module.warn(f"The deploy lock {path} is no longer this run's (now: {describe(record)}); left alone.")
            module.exit_json(changed=False)
        os.unlink(path)
        module.exit_json(changed=True)

    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {"token": uuid.uuid4().hex, "holder": params["holder"], "taken": time.time()}
    if write_new(path, record):
        module.exit_json(changed=True, token=record["token"])
    held = read(path) or {"taken": 0}
    age = time.time() - held.get("taken", 0)
    if params["break_lock"] or age > params["expire_after"]:
        why = "deploy_lock_break is set" if params["break_lock"] else f"it is older than deploy_lock_expire_after ({params['expire_after']} s)"
        module.warn(f"Breaking the deploy lock on this host held by {describe(held)}, {int(age)} s ago, because {why}. "
                    "If that run is still going, two deploys now run at once.")
        os.unlink(path)
        if write_new(path, record):
            module.exit_json(changed=True, token=record["token"], broken=held)
        held = read(path) or held
    module.fail_json(msg=(f"Another deploy holds this host: {describe(held)} ({int(age)} s ago). Nothing was changed. "
                          "Wait for it to finish; a lock left by a killed run expires after deploy_lock_expire_after "
                          "seconds or can be broken with -e deploy_lock_break=true."), holder=held.get("holder"))


if __name__ == "__main__":
    main()
