"""Register prefect-batch's block types and save the block documents of this directory.

Usage (against the Prefect API of ``PREFECT_API_URL``)::

    python blocks/register.py                 # every *.yaml here
    python blocks/register.py --dry-run       # validate the documents, save nothing
    python blocks/register.py --dir other/    # another directory

Idempotent: block types are (re-)registered, a document equal to the saved one is left alone,
a changed one is overwritten. Each document is a YAML file::

    block_type: batch-pool            # the block type slug
    name: local-pool                  # the block document name
    data: {...}                       # the block's fields; a nested block is a reference:
                                      #   node_source: {$ref: batch-local-node-source/local-nodes}

Documents hold no secrets. A secret field may name an environment variable instead
(``secrets_from_env: {account_key: PREFECT_BATCH_ACCOUNT_KEY}``), read when registering.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REF = "$ref"


@dataclass
class Document:
    """One block document read from a YAML file."""

    path: Path
    block_type: str
    name: str
    data: dict[str, Any]
    secrets_from_env: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``<block type slug>/<name>``, as references spell it."""
        return f"{self.block_type}/{self.name}"

    def references(self) -> list[str]:
        """The keys of the documents this one refers to."""
        return [v[REF] for v in self.data.values() if isinstance(v, dict) and REF in v]


def load_documents(directory: Path = HERE) -> list[Document]:
    """Every document of ``directory``, ordered so that references come first.

    Raises:
        ValueError: A malformed document, a duplicate, an unknown or circular reference.
    """
    docs: dict[str, Document] = {}
    for path in sorted(directory.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        missing = {"block_type", "name"} - set(raw)
        if missing:
            raise ValueError(f"{path.name}: missing {', '.join(sorted(missing))}")
        doc = Document(
            path=path,
            block_type=str(raw["block_type"]),
            name=str(raw["name"]),
            data=dict(raw.get("data") or {}),
            secrets_from_env=dict(raw.get("secrets_from_env") or {}),
        )
        if doc.key in docs:
            raise ValueError(f"{path.name}: {doc.key} is also in {docs[doc.key].path.name}")
        docs[doc.key] = doc
    ordered: list[Document] = []
    state: dict[str, str] = {}

    def visit(key: str, via: str) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            raise ValueError(f"circular reference through {key}")
        if key not in docs:
            raise ValueError(f"{via}: refers to {key}, which no document here defines")
        state[key] = "visiting"
        for ref in docs[key].references():
            visit(ref, docs[key].path.name)
        state[key] = "done"
        ordered.append(docs[key])

    for key in docs:
        visit(key, key)
    return ordered


def block_classes() -> dict[str, type]:
    """prefect-batch's block classes by slug (interfaces excluded)."""
    from prefect.blocks.core import Block

    import prefect_batch.blocks as blocks

    classes = {}
    for value in vars(blocks).values():
        if isinstance(value, type) and issubclass(value, Block) and not inspect.isabstract(value):
            slug = getattr(value, "_block_type_slug", None)
            if slug:
                classes[slug] = value
    return classes


def build_block(doc: Document, resolve: Callable[[str], Any]) -> Any:
    """The block a document stands for; ``resolve(key)`` gives a referenced block."""
    from prefect.blocks.core import Block

    classes = block_classes()
    cls = classes.get(doc.block_type) or Block.get_block_class_from_key(doc.block_type)
    data = {
        k: resolve(v[REF]) if isinstance(v, dict) and REF in v else v for k, v in doc.data.items()
    }
    for field_name, variable in doc.secrets_from_env.items():
        if variable in os.environ:
            data[field_name] = os.environ[variable]
    return cls.model_validate(data)


def validate_documents(directory: Path = HERE) -> dict[str, Any]:
    """Build every document through its class, offline; returns the blocks by key."""
    built: dict[str, Any] = {}
    for doc in load_documents(directory):
        built[doc.key] = build_block(doc, built.__getitem__)
    return built


def register(directory: Path = HERE, *, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Register the block types and save the documents; returns ``{key: action}``."""
    for cls in block_classes().values():
        cls.register_type_and_schema(_sync=True)
    actions: dict[str, str] = {}
    saved: dict[str, Any] = {}
    for doc in load_documents(directory):
        block = build_block(doc, saved.__getitem__)
        cls = type(block)
        try:
            current = cls.load(doc.name, _sync=True)
        except ValueError:
            current = None
        if current is not None and _same(current, block):
            action = "unchanged"
            block = current
        else:
            block.save(doc.name, overwrite=True, _sync=True)
            action = "created" if current is None else "updated"
        saved[doc.key] = cls.load(doc.name, _sync=True) if action != "unchanged" else block
        actions[doc.key] = action
        echo(f"{action:9} {doc.key}")
    return actions


def _same(a: Any, b: Any) -> bool:
    """Equal field values (secrets compared by value, nested blocks by their fields)."""
    return _plain(a) == _plain(b)


def _plain(value: Any) -> Any:
    from prefect.blocks.core import Block
    from pydantic import SecretStr

    if isinstance(value, Block):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=HERE, help="directory of the *.yaml documents")
    parser.add_argument("--dry-run", action="store_true", help="validate only; save nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        for key in validate_documents(args.dir):
            print(f"valid     {key}")
        return 0
    register(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
