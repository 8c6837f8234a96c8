"""Durable state: the SQL schema and the database connection (SQLite or PostgreSQL).

The store holds every resource; nothing the service accepted lives only in memory. It knows
tables and transactions, not Azure Batch rules: those are in ``service/``.
"""

from prefect_batch.store.database import Store, store_unreachable
from prefect_batch.store.schema import metadata

__all__ = ["Store", "metadata", "store_unreachable"]
