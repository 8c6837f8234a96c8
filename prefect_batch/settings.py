"""Settings read from the environment (prefix ``PREFECT_BATCH_``).

Only process-wide knobs live here; credentials and endpoints of a particular account belong in
blocks. Units are in the names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["BatchSettings", "get_settings"]


class BatchSettings(BaseSettings):
    """Process-wide settings of prefect-batch."""

    model_config = SettingsConfigDict(env_prefix="PREFECT_BATCH_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".prefect-batch",
        description="State directory of the embedded service: database and local node roots.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the store; default SQLite (WAL) at <home>/batch.db.",
    )
    account_name: str = Field("local", description="Account name of the embedded service.")
    account_key: SecretStr | None = Field(None, description="Account key (base64) for a server.")
    service_url: str | None = Field(
        None, description="URL of a prefect-batch server; empty means the embedded service."
    )
    engine: bool = Field(
        True,
        description="Whether an embedded client runs an engine (nodes and tasks) in its process; "
        "job manager tasks get PREFECT_BATCH_ENGINE=false so they only talk to the store.",
    )
    engine_tick_seconds: float = Field(
        0.25, gt=0, description="How often an idle engine looks for work added by other processes."
    )
    lease_seconds: float = Field(
        15.0, gt=0, description="How long a pool lease lasts before another engine may take it."
    )
    heartbeat_interval_seconds: float = Field(
        30.0, gt=0, description="How often agents report liveness and metrics."
    )
    autoscale_sample_interval_seconds: float = Field(
        30.0,
        ge=1.0,
        description="How often the engine samples each pool's task and node metrics for "
        "autoscale formulas (Azure: 30 s); at least 1 s.",
    )
    node_root: Path | None = Field(
        None, description="Root directory of local nodes; default <home>/nodes."
    )
    node_unreachable_grace_seconds: float = Field(
        120.0,
        ge=0,
        description="How long an SSH node may stay unreachable (reconnects retried with "
        "backoff) before its running tasks are requeued on other nodes; until then its agent "
        "keeps running them and a reconnect collects their results.",
    )
    ssh_files_dir: Path | None = Field(
        None,
        description="Where a server lets registered SSH host groups name key and known_hosts "
        "files: <dir>/<account>/ only; default <home>/ssh.",
    )
    storage_endpoint_url: str | None = Field(
        None,
        description="Endpoint of S3-compatible storage for resource and output files "
        "(e.g. http://127.0.0.1:9000); empty for AWS S3. Credentials: boto3's chain.",
    )
    storage_region: str | None = Field(None, description="Region of the storage.")
    storage_block: str | None = Field(
        None,
        description="A prefect-aws S3Bucket or AwsCredentials block ('s3-bucket/name') whose "
        "credentials and endpoint the service signs file URLs with; overrides the two above.",
    )
    storage_url_expiry_seconds: int = Field(
        6 * 3600, ge=60, description="How long the URLs given to nodes for their files last."
    )
    storage_bucket_access: dict[str, list[str]] | None = Field(
        None,
        description="Which buckets each account's tasks may read and write, as JSON "
        '(\'{"acct": ["acct-*", "shared-data"]}\', fnmatch patterns). Unset: every bucket the '
        "storage credentials reach, for every account; set it on a server with several accounts.",
    )
    local_node_limit: int | None = Field(
        None,
        ge=0,
        description="Most local nodes (agent processes) on this machine, over every account's "
        "pools; default 8 per CPU. A resize past it stops there with a resize error.",
    )
    agent_starts_per_second: float = Field(
        10.0, gt=0, description="How many new nodes' agents the engine starts per second."
    )
    confine_tasks: bool | None = Field(
        None,
        description="Confine tasks on local nodes (Linux Landlock, no capabilities): a task "
        "reaches its own directories, the system's read-only trees and task_paths, never the "
        "service's home, other nodes or /proc. Default: on for `prefect-batch server start` "
        "wherever this kernel can confine (its accounts are kept apart), off for an embedded "
        "client (the machine's own user running its own tasks). A server with unconfined "
        "tasks refuses several accounts unless --allow-unconfined-tasks.",
    )
    task_paths: list[Path] = Field(
        default_factory=list,
        description="Extra directories confined tasks may read and write (JSON list), e.g. a "
        "shared data directory; the service's home stays out of reach even inside one.",
    )
    transfer_timeout_seconds: float = Field(
        60.0, gt=0, description="Timeout of each download or upload request a node makes."
    )
    cloud_accounts: list[str] = Field(
        default_factory=list,
        description="Accounts that may register, through a server, node sources that launch "
        "machines with the server's own cloud credentials and reach the endpoint they name "
        "(EC2 templates), as a JSON list. Unset: none may; an embedded client always may.",
    )

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to SQLite under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'batch.db'}"

    @property
    def effective_ssh_files_dir(self) -> Path:
        """The directory a server's SSH host groups may take key and known_hosts files from."""
        return self.ssh_files_dir or (self.home / "ssh")

    @property
    def effective_node_root(self) -> Path:
        """Where local nodes keep their directories."""
        return self.node_root or (self.home / "nodes")


def get_settings() -> BatchSettings:
    """Read the settings from the environment now (not cached: tests change it)."""
    return BatchSettings()
