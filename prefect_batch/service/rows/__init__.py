"""Row-level helpers: each runs inside its caller's transaction, and imports only the store,
core, providers and its own folder.

State writes checked against the core tables (:mod:`.statewrites`), the transitions that follow
from them (:mod:`.lifecycle`), the wire views of rows (:mod:`.views`), autoscale samples, auto
pool specs, sealed settings, node directories on this machine, and the directory of built
providers (:mod:`.providers`) that operations and the engine both use.
"""
