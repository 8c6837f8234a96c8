"""Node access through the official SDK: remote login settings and node users on an SSH node.

A batch server (uvicorn on 127.0.0.1) drives a pool of one SSH host: a private sshd on
127.0.0.8 that, besides the service's own login, lets users named ``pbt*`` in with their
``~/.ssh/authorized_keys`` — so a node user the agent makes really logs in with its key. The
agent runs as root here, so the users are real users of this machine: every name starts with a
prefix of this run, and a finalizer removes whatever is left with that prefix.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import pwd
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from azure.batch import models as sdk_models
from azure.core.exceptions import HttpResponseError

from prefect_batch import BatchClient
from prefect_batch.testing import wait_for_task
from prefect_batch.testing.sshd import SSHServers, sshd_available
from tests.api.conftest import running_server, wait_for

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="node users are made by an agent running as root"),
]

PREFIX = f"pbt{secrets.token_hex(3)}"


def _remove_test_users() -> None:
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(PREFIX):
            subprocess.run(
                ["pkill", "-KILL", "-u", entry.pw_name], capture_output=True, check=False
            )
            subprocess.run(["userdel", "-f", "-r", entry.pw_name], capture_output=True, check=False)
            Path(f"/etc/sudoers.d/prefect-batch-{entry.pw_name}").unlink(missing_ok=True)


@pytest.fixture(scope="module", autouse=True)
def _cleanup_users() -> Iterator[None]:
    _remove_test_users()
    try:
        yield
    finally:
        _remove_test_users()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not sshd_available():
        pytest.skip("needs openssh-server (/usr/sbin/sshd); .ci/run installs it")
    base = tmp_path_factory.mktemp("access")
    ssh_dir = base / "ssh"
    servers = SSHServers(
        ssh_dir / "acct",
        count=1,
        first_address="127.0.0.8",
        extra_config=(
            "AllowUsers pbt*",
            "Match User pbt*",
            "    AuthorizedKeysFile .ssh/authorized_keys",
        ),
    )
    servers.start()
    try:
        with running_server(
            f"sqlite:///{base / 'batch.db'}",
            base / "home",
            settings={"heartbeat_interval_seconds": 0.5},
            ssh_files_dir=ssh_dir,
        ) as server:
            account = server.account
            with BatchClient(account.name, url=server.url, account_key=account.primary) as client:
                host = servers[0].host_config(root=str(base / "host"))
                client.create_node_source(servers.group_config(name="access", hosts=[host]))
                client.create_pool(
                    {
                        "id": "sshpool",
                        "vmSize": "ssh",
                        "targetDedicatedNodes": 1,
                        "virtualMachineConfiguration": {
                            "imageReference": {
                                "publisher": "prefect-batch",
                                "offer": "ssh",
                                "sku": "access",
                            },
                            "nodeAgentSKUId": "batch.node.ssh.access",
                        },
                    }
                )
                client.create_pool(
                    {"id": "localpool", "vmSize": "local", "targetDedicatedNodes": 1}
                )
                sdk = server.sdk()
                try:
                    yield {
                        "ssh_dir": ssh_dir,
                        "servers": servers,
                        "server": server,
                        "client": client,
                        "sdk": sdk,
                        "sshd": servers[0],
                        "ssh_node": _idle_node(sdk, "sshpool"),
                        "local_node": _idle_node(sdk, "localpool"),
                    }
                finally:
                    sdk.close()
    finally:
        servers.close()


def _idle_node(sdk: Any, pool_id: str) -> str:
    def probe() -> str | None:
        for node in sdk.list_nodes(pool_id):
            if node.state == "idle":
                return node.id
        return None

    return str(wait_for(probe, timeout=90))


def _key() -> tuple[paramiko.Ed25519Key, str]:
    """A new ed25519 key and its OpenSSH public line."""
    key, public, _ = _key_files()
    return key, public


def _key_files() -> tuple[paramiko.Ed25519Key, str, str]:
    """A new ed25519 key, its OpenSSH public line and its private key file's text."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
    return key, public + " someone@laptop", pem


def _login(lab: dict[str, Any], name: str, key: paramiko.PKey) -> str:
    """Log in as ``name`` at the node's remote login settings; the output of ``id -un``."""
    settings = lab["sdk"].get_node_remote_login_settings("sshpool", lab["ssh_node"])
    sshd = lab["sshd"]
    client = paramiko.SSHClient()
    client.get_host_keys().add(
        sshd.known_hosts_name, "ssh-ed25519", paramiko.Ed25519Key(data=_host_key_blob(sshd))
    )
    try:
        client.connect(
            settings.remote_login_ip_address,
            settings.remote_login_port,
            username=name,
            pkey=key,
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
            auth_timeout=10,
        )
        _, stdout, _ = client.exec_command("id -un", timeout=10)
        return stdout.read().decode().strip()
    finally:
        client.close()


def _host_key_blob(sshd: Any) -> bytes:
    import base64

    return base64.b64decode(sshd.host_public_key.split()[1])


def _code(info: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int, str]:
    return info.value.status_code, info.value.error.code


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _user(name: str, public: str | None, **extra: Any) -> sdk_models.BatchNodeUserCreateOptions:
    return sdk_models.BatchNodeUserCreateOptions(name=name, ssh_public_key=public, **extra)


# -- remote login settings ---------------------------------------------------------------------


def test_an_ssh_node_logs_in_at_its_hosts_address_and_port(lab: dict[str, Any]) -> None:
    settings = lab["sdk"].get_node_remote_login_settings("sshpool", lab["ssh_node"])
    assert settings.remote_login_ip_address == "127.0.0.8"
    assert settings.remote_login_port == lab["sshd"].port


def test_a_local_node_has_no_remote_login_and_no_users(lab: dict[str, Any]) -> None:
    sdk = lab["sdk"]
    with pytest.raises(HttpResponseError) as login:
        sdk.get_node_remote_login_settings("localpool", lab["local_node"])
    assert _code(login) == (409, "OperationNotValidOnNode")
    assert "own machine" in login.value.error.message
    name = f"{PREFIX}loc"
    with pytest.raises(HttpResponseError) as add:
        sdk.create_node_user("localpool", lab["local_node"], _user(name, _key()[1]))
    assert _code(add) == (409, "OperationNotValidOnNode")
    assert not _exists(name)
    with pytest.raises(HttpResponseError) as missing:
        sdk.get_node_remote_login_settings("sshpool", "no-such-node")
    assert _code(missing) == (404, "NodeNotFound")


# -- node users ----------------------------------------------------------------------------------


def test_a_node_user_logs_in_with_its_key_until_it_is_replaced_and_deleted(
    lab: dict[str, Any],
) -> None:
    sdk, node = lab["sdk"], lab["ssh_node"]
    name = f"{PREFIX}a"
    key, public = _key()
    sdk.create_node_user("sshpool", node, _user(name, public))
    entry = pwd.getpwnam(name)
    assert entry.pw_uid != 0
    ssh = Path(entry.pw_dir) / ".ssh"
    keys = ssh / "authorized_keys"
    assert stat.S_IMODE(ssh.stat().st_mode) == 0o700
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert (keys.stat().st_uid, ssh.stat().st_uid) == (entry.pw_uid, entry.pw_uid)
    # Re-encoded: the comment (free text) never reaches the file.
    assert keys.read_text() == " ".join(public.split()[:2]) + "\n"
    assert _login(lab, name, key) == name

    with pytest.raises(HttpResponseError) as again:
        sdk.create_node_user("sshpool", node, _user(name, public))
    assert _code(again) == (409, "NodeUserExists")

    new_key, new_public = _key()
    sdk.replace_node_user(
        "sshpool", node, name, sdk_models.BatchNodeUserReplaceOptions(ssh_public_key=new_public)
    )
    assert _login(lab, name, new_key) == name
    with pytest.raises(paramiko.AuthenticationException):
        _login(lab, name, key)

    sdk.delete_node_user("sshpool", node, name)
    assert not _exists(name)
    assert not Path(entry.pw_dir).exists()
    with pytest.raises(HttpResponseError) as gone:
        sdk.delete_node_user("sshpool", node, name)
    assert _code(gone) == (404, "NodeUserNotFound")
    with pytest.raises(HttpResponseError) as replace_gone:
        sdk.replace_node_user(
            "sshpool", node, name, sdk_models.BatchNodeUserReplaceOptions(ssh_public_key=public)
        )
    assert _code(replace_gone) == (404, "NodeUserNotFound")


def test_an_expired_user_is_removed_from_the_node(lab: dict[str, Any]) -> None:
    name = f"{PREFIX}exp"
    key, public = _key()
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=4)
    lab["sdk"].create_node_user("sshpool", lab["ssh_node"], _user(name, public, expiry_time=expiry))
    assert _exists(name)
    assert _login(lab, name, key) == name
    wait_for(lambda: not _exists(name), timeout=60)
    with pytest.raises(paramiko.AuthenticationException):
        _login(lab, name, key)


@pytest.mark.parametrize(
    "name",
    [
        "root",  # exists on the host, not made by an agent
        "nobody",
        "a;id",
        "$(id)",
        "`id`",
        "-oProxyCommand=id",
        "../etc",
        "UPPER",
        "x" * 40,
        "",
        "a b",
        "a\nb",
    ],
)
def test_hostile_user_names_are_refused(lab: dict[str, Any], name: str) -> None:
    root_keys = Path("/root/.ssh/authorized_keys")
    before = root_keys.read_bytes() if root_keys.exists() else None
    with pytest.raises(HttpResponseError) as info:
        lab["sdk"].create_node_user("sshpool", lab["ssh_node"], _user(name, _key()[1]))
    status, code = _code(info)
    if name in ("root", "nobody"):
        assert (status, code) == (409, "NodeUserExists")
    else:
        assert (status, code) == (400, "InvalidPropertyValue")
        assert not _exists(name)
    assert (root_keys.read_bytes() if root_keys.exists() else None) == before


@pytest.mark.parametrize(
    "key",
    [
        'command="touch /tmp/pwned" {key}',
        "{key}\n{key}",
        "{key}\nssh-rsa AAAA",
        "ssh-ed25519 not-base64!",
        "ssh-ed25519 AAAA; touch /tmp/pwned",
        "-----BEGIN PUBLIC KEY-----",
        "",
    ],
)
def test_hostile_keys_are_refused_and_change_nothing(lab: dict[str, Any], key: str) -> None:
    name = f"{PREFIX}k"
    real = " ".join(_key()[1].split()[:2])
    with pytest.raises(HttpResponseError) as info:
        lab["sdk"].create_node_user("sshpool", lab["ssh_node"], _user(name, key.format(key=real)))
    assert _code(info) == (400, "InvalidPropertyValue")
    assert "sshPublicKey" in info.value.error.message
    assert not _exists(name)


def test_hostile_passwords_and_past_expiry_are_refused(lab: dict[str, Any]) -> None:
    sdk, node = lab["sdk"], lab["ssh_node"]
    name = f"{PREFIX}p"
    with pytest.raises(HttpResponseError) as line:
        sdk.create_node_user("sshpool", node, _user(name, None, password="pw\nroot:x"))
    assert _code(line) == (400, "InvalidPropertyValue")
    assert "pw" not in str(line.value.error.message)  # the password is never echoed
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    with pytest.raises(HttpResponseError) as expired:
        sdk.create_node_user("sshpool", node, _user(name, _key()[1], expiry_time=past))
    assert _code(expired) == (400, "InvalidPropertyValue")
    assert not _exists(name)


def test_a_password_is_set_through_chpasswd_not_a_shell(lab: dict[str, Any]) -> None:
    name = f"{PREFIX}pw"
    lab["sdk"].create_node_user("sshpool", lab["ssh_node"], _user(name, None, password="p'a$s\"w"))
    shadow = next(
        line for line in Path("/etc/shadow").read_text().splitlines() if line.startswith(f"{name}:")
    )
    assert shadow.split(":")[1] not in ("", "*", "!")
    lab["sdk"].delete_node_user("sshpool", lab["ssh_node"], name)
    assert not _exists(name)


def test_an_admin_user_needs_sudo_on_the_node(lab: dict[str, Any]) -> None:
    name = f"{PREFIX}adm"
    sudoers = Path(f"/etc/sudoers.d/prefect-batch-{name}")
    user = _user(name, _key()[1], is_admin=True)
    if not Path("/etc/sudoers.d").is_dir():
        with pytest.raises(HttpResponseError) as info:
            lab["sdk"].create_node_user("sshpool", lab["ssh_node"], user)
        assert _code(info) == (409, "OperationNotValidOnNode")
        assert "sudo" in info.value.error.message
        assert not _exists(name)
        return
    lab["sdk"].create_node_user("sshpool", lab["ssh_node"], user)
    assert sudoers.read_text() == f"{name} ALL=(ALL) NOPASSWD:ALL\n"
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    lab["sdk"].delete_node_user("sshpool", lab["ssh_node"], name)
    assert not sudoers.exists() and not _exists(name)


def test_admin_elevation_is_refused_where_the_agent_is_not_root(lab: dict[str, Any]) -> None:
    """A node user is an unprivileged login: a host group logging in as it has a non-root
    agent, which cannot run a task as an administrator: the task fails at dispatch."""
    client: BatchClient = lab["client"]
    name = f"{PREFIX}u"
    _, public, pem = _key_files()
    lab["sdk"].create_node_user("sshpool", lab["ssh_node"], _user(name, public))
    key_path = lab["ssh_dir"] / "acct" / f"{name}_key"
    key_path.write_text(pem)
    key_path.chmod(0o600)
    host = lab["servers"][0].host_config(user=name)
    client.create_node_source(
        {
            **lab["servers"].group_config(name="unpriv", hosts=[host]),
            "private_key_path": str(key_path),
        }
    )
    client.create_pool({**_ssh_pool("unprivpool", "unpriv")})
    _idle_node(lab["sdk"], "unprivpool")
    client.create_job({"id": "elevation", "poolInfo": {"poolId": "unprivpool"}})
    client.create_task(
        "elevation",
        {
            "id": "admin",
            "commandLine": "/bin/true",
            "userIdentity": {"autoUser": {"elevationLevel": "admin"}},
        },
    )
    client.create_task(
        "elevation",
        {
            "id": "nonadmin",
            "commandLine": "/usr/bin/id -u",
            "userIdentity": {"autoUser": {"elevationLevel": "nonadmin"}},
        },
    )
    admin = wait_for_task(client, "elevation", "admin", timeout=90)
    info = admin.execution_info.failure_info
    assert info is not None and info.code == "ElevationNotAvailable"
    assert str(getattr(info.category, "value", info.category)) == "usererror"
    assert f"uid {pwd.getpwnam(name).pw_uid}" in info.message
    nonadmin = wait_for_task(client, "elevation", "nonadmin", timeout=90)
    assert nonadmin.execution_info.exit_code == 0
    out = client.get_task_file("elevation", "nonadmin", "stdout.txt").decode()
    assert out.strip() == str(pwd.getpwnam(name).pw_uid)
    client.delete_pool("unprivpool")
    wait_for(lambda: not client.pool_exists("unprivpool"), timeout=90)


def _ssh_pool(pool_id: str, group: str) -> dict[str, Any]:
    return {
        "id": pool_id,
        "vmSize": "ssh",
        "targetDedicatedNodes": 1,
        "virtualMachineConfiguration": {
            "imageReference": {"publisher": "prefect-batch", "offer": "ssh", "sku": group},
            "nodeAgentSKUId": f"batch.node.ssh.{group}",
        },
    }


def test_users_go_with_the_node(lab: dict[str, Any]) -> None:
    """Last: it removes the pool's node."""
    sdk, node = lab["sdk"], lab["ssh_node"]
    names = [f"{PREFIX}n1", f"{PREFIX}n2"]
    for name in names:
        sdk.create_node_user("sshpool", node, _user(name, _key()[1]))
    assert all(_exists(n) for n in names)
    sdk.begin_remove_nodes(
        "sshpool", sdk_models.BatchNodeRemoveOptions(node_ids=[node]), polling_interval=0.2
    )
    wait_for(lambda: not any(_exists(n) for n in names), timeout=90)
