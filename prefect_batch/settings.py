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
    node_root: Path | None = Field(
        None, description="Root directory of local nodes; default <home>/nodes."
    )

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to SQLite under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'batch.db'}"

    @property
    def effective_node_root(self) -> Path:
        """Where local nodes keep their directories."""
        return self.node_root or (self.home / "nodes")


def get_settings() -> BatchSettings:
    """Read the settings from the environment now (not cached: tests change it)."""
    return BatchSettings()
