"""Prompts are data: text files in `rag/prompts/`, filled in here.

Passages are wrapped in <passage> delimiters with their metadata as
attributes; a document cannot close the delimiter early, so text inside a
passage always stays data.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from rag.types import Hit


@lru_cache(maxsize=32)
def text(name: str) -> str:
    return (resources.files("rag") / "prompts" / name).read_text(encoding="utf-8").strip()


@lru_cache(maxsize=4)
def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(text(name))
    return loaded


def screen_schema(ids: Sequence[int]) -> dict[str, Any]:
    """The verdict schema for one screen request: exactly one verdict per
    passage, ids limited to the passages sent. (Without these bounds a small
    model under constrained decoding can loop, adding verdicts forever.)"""
    base = copy.deepcopy(schema("screen_schema.json"))
    verdicts = base["properties"]["verdicts"]
    verdicts["minItems"] = verdicts["maxItems"] = len(ids)
    verdicts["items"]["properties"]["id"] = {"type": "integer", "enum": list(ids)}
    return base


def _attribute(value: object) -> str:
    return str(value).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def passage(n: int, hit: Hit) -> str:
    body = hit.text.replace("</passage", "</ passage").replace("<passage", "< passage")
    return text("passage.txt").format(
        n=n,
        source=_attribute(Path(hit.source).name),
        page="" if hit.page is None else hit.page,
        text=body,
    )


def passages(hits: Sequence[Hit]) -> str:
    return "\n\n".join(passage(n, hit) for n, hit in enumerate(hits, start=1))


def screen_messages(question: str, hits: Sequence[Hit], first_id: int = 1) -> list[dict[str, str]]:
    body = "\n\n".join(passage(first_id + i, hit) for i, hit in enumerate(hits))
    return [
        {"role": "system", "content": text("screen_system.txt")},
        {
            "role": "user",
            "content": text("screen_user.txt").format(question=question, passages=body),
        },
    ]


def read_messages(question: str, hits: Sequence[Hit]) -> list[dict[str, str]]:
    # Instructions first, passages after: the shared prefix stays identical
    # across questions, so the server's prefix cache reuses it.
    return [
        {"role": "system", "content": text("read_system.txt")},
        {
            "role": "user",
            "content": text("read_user.txt").format(question=question, passages=passages(hits)),
        },
    ]


def condense_messages(history: Sequence[tuple[str, str]], question: str) -> list[dict[str, str]]:
    lines = "\n".join(f"{role}: {content}" for role, content in history)
    return [
        {"role": "system", "content": text("condense_system.txt")},
        {
            "role": "user",
            "content": text("condense_user.txt").format(history=lines, question=question),
        },
    ]
