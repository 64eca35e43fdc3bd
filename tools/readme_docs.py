"""The README's generated parts, called from its cog blocks (`make docs`;
tests/test_docs_drift.py checks that README.md is what they give).

- `settings_table()`: every `Settings` field as `RAG_...`, type, default and
  its description;
- `type_list()`: what `--type` takes, from the loaders' own table;
- `cli_help(name)`: a command's `--help`, then one synopsis per subcommand.

Help is rendered 100 columns wide (as with COLUMNS=100), whatever the
terminal, so the output is the same on every machine.
"""

from __future__ import annotations

import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import click
from pydantic import SecretStr
from pydantic.fields import FieldInfo

WIDTH = 100


# One function per command: the only lines to change when the CLI moves.
def rag_command() -> click.Command:
    from cli.rag_main import main

    return main


def ingest_command() -> click.Command:
    from cli.ingest_main import main

    return main


COMMANDS = {"rag": rag_command, "ingest": ingest_command}


def settings_table() -> str:
    """A Markdown table of every setting, in the order `Settings` declares them."""
    from rag.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    rows = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        cells = [
            f"`{(prefix + name).upper()}`",
            _type_of(field),
            _default_of(field),
            field.description or "",
        ]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_of(field: FieldInfo) -> str:
    kind = _kind_name(field.annotation)
    bounds = _bounds(field.metadata)
    return f"{kind}, {bounds}" if bounds else kind


def _kind_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" if a else "`''`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind_name(a) for a in args if a is not type(None))
    if origin is typing.Annotated:
        return _kind_name(args[0])
    if origin is list:
        return "comma-separated list"
    if origin is dict:
        return "JSON object"
    names = {bool: "bool", int: "int", float: "number", str: "text", Path: "path"}
    return "secret" if annotation is SecretStr else names.get(annotation, str(annotation))


def _bounds(metadata: list[Any]) -> str:
    """`≥ 16`, `0 to 1`, `> 0` from the field's constraints."""
    low = high = ""
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"{_number(item.ge)}"
        elif isinstance(item, annotated_types.Gt):
            low = f"> {_number(item.gt)}"
        elif isinstance(item, annotated_types.Le):
            high = _number(item.le)
    if low and high and not low.startswith(">"):
        return f"{low} to {high}"
    if high:
        return f"{low + ', ' if low else ''}≤ {high}"
    return low if low.startswith(">") or not low else f"≥ {low}"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default_of(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "" or value == [] or value == {}:
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{_number(value) if isinstance(value, float) else value}`"


def type_names() -> dict[str, list[str]]:
    """Each stored document type and the other names `--type` takes for it
    (its files' extensions), from the loaders' table and the filter's own
    normalization."""
    from ingest.loaders import KINDS
    from rag.filters import Filters

    names: dict[str, set[str]] = {kind: {kind} for kind in KINDS.values()}
    for extension in KINDS:
        name = extension.lstrip(".")
        (kind,) = Filters.parse(types=[name]).types
        names[kind].add(name)
    return {kind: sorted(names[kind], key=lambda n: (n != kind, n)) for kind in sorted(names)}


def type_list() -> str:
    """One line: `pdf`; `markdown` (or `md`); ..."""
    parts = []
    for kind, names in type_names().items():
        others = ", ".join(f"`{n}`" for n in names[1:])
        parts.append(f"`{kind}`" + (f" (or {others})" if others else ""))
    return "Types for `--type`: " + "; ".join(parts) + ".\n"


def cli_help(name: str) -> str:
    """`NAME --help` as a fenced block; for a group, then one synopsis per
    subcommand (usage line and first sentence), however deep."""
    command = COMMANDS[name]()
    context = _context(command, name, None)
    out = [f"$ {name} --help", command.get_help(context).rstrip()]
    synopses = list(_synopses(command, context))
    if synopses:
        out += ["", f"$ {name} COMMAND --help  # each command, in short", *synopses]
    return "```text\n" + "\n".join(out) + "\n```\n"


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    # The command's own context settings (`-h` beside `--help`), as when run.
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def _synopses(group: click.Command, parent: click.Context) -> typing.Iterator[str]:
    if not isinstance(group, click.Group):
        return
    for name in group.list_commands(parent):
        command = group.get_command(parent, name)
        if command is None or command.hidden:
            continue
        context = _context(command, name, parent)
        usage = " ".join([context.command_path, *command.collect_usage_pieces(context)])
        summary = command.get_short_help_str(limit=1000)
        yield usage
        yield from textwrap.wrap(summary, WIDTH, initial_indent="    ", subsequent_indent="    ")
        yield from _synopses(command, context)
