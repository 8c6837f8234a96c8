"""The agent's node users: refused by an agent that is not root, hostile values refused by the
agent itself (not only by the service), and only users the agent made are ever touched."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_batch.agent import AGENT_PATH

from .driver import AgentDriver

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKyzPT4LP9jZP9quaIxhS/hlKii9nXoijEGaKBnxWcIH"

# Managing users (useradd, userdel) and starting an agent as another user (nobody) both need
# root. CI runs as root, so these tests always run there; only a developer's unprivileged run
# skips them, where no agent can manage users at all.
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start an agent as nobody")


def _add(**extra: Any) -> dict[str, Any]:
    return {"name": "pbtagent", "ssh_public_key": KEY, "expiry": time.time() + 60, **extra}


@root_only
def test_an_agent_that_is_not_root_refuses_to_manage_users() -> None:
    # Not under tmp_path: pytest's base directory is 0700, out of nobody's reach.
    with tempfile.TemporaryDirectory(prefix="pb-nobody-") as top:
        os.chmod(top, 0o755)
        root = Path(top) / "node"
        root.mkdir()
        os.chown(root, 65534, 65534)
        answer = _add_as_nobody(root)
    assert answer["ev"] == "error"
    assert answer["code"] == "OperationNotValidOnNode"
    assert "not root" in answer["message"]
    with pytest.raises(KeyError):
        pwd.getpwnam("pbtagent")


def _add_as_nobody(root: Path) -> dict[str, Any]:
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-I", str(AGENT_PATH), "--root", str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        user=65534,
        group=65534,
        extra_groups=[],
        cwd="/",
    )
    try:
        out, _ = proc.communicate(
            (json.dumps({"op": "add_user", "req": "c1", **_add()}) + "\n").encode(), timeout=30
        )
    finally:
        proc.kill()
    answers = [json.loads(line) for line in out.splitlines() if line.strip()]
    return next(a for a in answers if a.get("req") == "c1")


@root_only
@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"name": "root"}, "NodeUserExists"),
        ({"name": "a;id"}, "InvalidPropertyValue"),
        ({"name": "-r"}, "InvalidPropertyValue"),
        ({"ssh_public_key": f'command="id" {KEY}'}, "InvalidPropertyValue"),
        ({"ssh_public_key": f"{KEY}\n{KEY}"}, "InvalidPropertyValue"),
        ({"password": "x\nroot:y"}, "InvalidPropertyValue"),
        ({"expiry": "tomorrow"}, "InvalidPropertyValue"),
    ],
)
def test_the_agent_checks_every_value_itself(
    agent: AgentDriver, fields: dict[str, Any], code: str
) -> None:
    answer = agent.request("add_user", **_add(**fields))
    assert (answer["ev"], answer["code"]) == ("error", code)
    with pytest.raises(KeyError):
        pwd.getpwnam("pbtagent")


@root_only
def test_the_agent_never_deletes_a_user_it_did_not_make(agent: AgentDriver) -> None:
    for op in ("delete_user", "update_user"):
        answer = agent.request(op, **_add(name="nobody"))
        assert (answer["ev"], answer["code"]) == ("error", "NodeUserNotFound")
    assert pwd.getpwnam("nobody")
    assert agent.request("remove_users")["removed"] == []
