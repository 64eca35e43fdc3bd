"""Prompts are data: text files in `rag/answering/prompts/`, filled in here.

Passages are wrapped in <passage> delimiters with their metadata as
attributes. Document text stays data:
- a passage has no `<` of its own (written `&lt;`), so it cannot close or
  open a delimiter in any case or spacing, nor form any other tag;
- chat-template control tokens (`<|im_end|>`, harmony's `<|start|>`, ...)
  are stripped from passages, file names, the question and the conversation,
  so the server's tokenizer never turns text into a turn boundary.
The conversation's earlier turns and the question are escaped like passage
text: an earlier answer may echo a document, an API client may supply the
assistant's turns, and the deep read's question may be a rewrite of them.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from rag.types import Hit


@lru_cache(maxsize=32)
def text(name: str) -> str:
    return (resources.files("rag.answering") / "prompts" / name).read_text(encoding="utf-8").strip()


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


# A control token: a name between bars, ASCII or full-width (DeepSeek's
# `<｜begin▁of▁sentence｜>`), spaces allowed. This covers the families we serve
# (ChatML `<|im_start|>` `<|im_end|>` `<|endoftext|>`; harmony `<|start|>`
# `<|channel|>` `<|message|>` `<|constrain|>` `<|end|>` `<|return|>` `<|call|>`)
# and Llama 3's `<|begin_of_text|>` `<|eot_id|>` `<|start_header_id|>`. The
# name is bounded and excludes `<`, `>` and bars, so one pass is linear time.
_CONTROL_TOKEN = re.compile(r"<[|\uff5c][^<>|\uff5c\n]{0,64}[|\uff5c]>")


def strip_control_tokens(value: str) -> str:
    """`value` without chat-template control tokens. Each becomes a space,
    so removing an inner one cannot join its neighbours into a new token
    (`<|im_<|x|>end|>` becomes `<|im_ end|>`, which no tokenizer matches)."""
    return _CONTROL_TOKEN.sub(" ", value)


def _attribute(value: object) -> str:
    cleaned = strip_control_tokens(str(value))
    escaped = cleaned.replace("&", "&amp;").replace('"', "&quot;")
    return escaped.replace("<", "&lt;").replace(">", "&gt;")


def _body(value: str) -> str:
    # Every `<`, not only those of `</passage`: then no spelling of the
    # delimiter (`</PASSAGE>`, `< / passage >`, ...) nor any other tag or
    # `<...>` token can be formed. Models read `&lt;` as `<`.
    return strip_control_tokens(value).replace("<", "&lt;")


def passage(n: int, hit: Hit) -> str:
    body = _body(hit.text)
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
            "content": text("screen_user.txt").format(question=_body(question), passages=body),
        },
    ]


# The deep read sees the end of the conversation, clipped: enough to answer
# "and its rings?" in context, little enough to leave room for passages.
READ_HISTORY_TURNS = 4
READ_HISTORY_CHARS = 600


def read_messages(
    question: str, hits: Sequence[Hit], conversation: Sequence[tuple[str, str]] = ()
) -> list[dict[str, str]]:
    """The deep read's prompt. `question` is standalone (a follow-up is
    rewritten first); `conversation` holds the earlier (role, text) turns."""
    # Instructions first, passages after: the shared prefix stays identical
    # across questions, so the server's prefix cache reuses it.
    earlier = ""
    if conversation:
        lines = "\n".join(
            f"{role}: {_clip(content, READ_HISTORY_CHARS)}"
            for role, content in conversation[-READ_HISTORY_TURNS:]
        )
        history = text("read_conversation.txt").format(history=_body(lines))
        earlier = f"\n{history}\n"
    return [
        {"role": "system", "content": text("read_system.txt")},
        {
            "role": "user",
            "content": text("read_user.txt").format(
                question=_body(question),
                passages=passages(hits),
                conversation=earlier,
            ),
        },
    ]


def _clip(value: str, limit: int) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def condense_messages(history: Sequence[tuple[str, str]], question: str) -> list[dict[str, str]]:
    # Earlier answers are model text, which may echo a document.
    lines = "\n".join(f"{role}: {content}" for role, content in history)
    return [
        {"role": "system", "content": text("condense_system.txt")},
        {
            "role": "user",
            "content": text("condense_user.txt").format(
                history=_body(lines), question=_body(question)
            ),
        },
    ]
