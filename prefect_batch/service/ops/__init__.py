"""The account's operations: what the REST API and the embedded client call, one transaction
each (``BatchService`` in :mod:`prefect_batch.service` is their union). They import the row
helpers below them, never the engine.
"""
