"""The README's configuration reference, generated from the schema: ``python -m tacore.config
--markdown`` prints it, and ``tests/test_config.py`` fails when the README's table differs."""

from __future__ import annotations

import dataclasses
import json
import sys

from tacore.config.checks import table
from tacore.config.schema import COMPUTED, TABLES, Key, ServiceConfig


def reference_table() -> str:
    """The table of README.md's "Configuration reference": one row per key, in schema order."""
    rows = ["| section / key | default | on reload | meaning |", "| --- | --- | --- | --- |"]
    for section, cls in (*TABLES.items(), ("services.NAME", ServiceConfig)):
        for f in dataclasses.fields(cls):
            k = f.metadata.get("key")
            if k is None:
                continue  # not read from the file (a service's name is its table's)
            name = f"[{section}.{f.name}]" if k.check is table else f"[{section}] {f.name}"
            rows.append(f"| `{name}` | {_documented_default(f, k)} | "
                        f"{'restart' if k.restart else 'applied'} | {k.doc} |")
    return "\n".join(rows) + "\n"


def _documented_default(f: dataclasses.Field, k: Key) -> str:
    if k.shown is not None:
        return k.shown
    if f.default is COMPUTED and f.default_factory is dataclasses.MISSING:
        raise ValueError(f"{f.name}: a computed default needs shown=, how it is computed")
    value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    text = "none" if value is None else f"`{_as_toml(value)}`"
    return text + (f" ({k.note})" if k.note else "")


def _as_toml(value) -> str:
    """A default as it would be written in the file: 30 for 30.0, true, "info", []."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def main(argv: list[str] | None = None) -> int:
    """``python -m tacore.config --markdown`` prints the reference table for README.md."""
    if (sys.argv[1:] if argv is None else argv) != ["--markdown"]:
        print("usage: python -m tacore.config --markdown", file=sys.stderr)
        return 2
    print(reference_table(), end="")
    return 0
