"""An in-process `ChatModel` whose replies a test scripts, for the tests whose
subject is our answering logic (screening, reading, citations, retries,
follow-ups), not the server: `make test-fast` runs them without an LLM.

It streams as `OpenAIChat` does (rag/llm.py): reasoning deltas, then
content deltas, a word at a time, then one `Completion`. Like gpt-oss on
vLLM, a reply whose reasoning uses up `max_tokens` ends with
`finish_reason="length"` and `content=None`. Tokens are counted as words.
The same behaviour on the real server is tested in tests/test_gpt_oss_path.py.

    chat = ScriptedChat(lambda request: Reply("Think.", "Paris [1]."))
    answer(question, kb, chat, settings)
    chat.requests  # every request, in order
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rag.llm import Completion, Delta, Request
from rag.types import Usage


@dataclass(frozen=True)
class Reply:
    reasoning: str = ""
    content: str = ""


Script = Callable[[Request], Reply]


class ScriptedChat:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []

    def stream(self, request: Request) -> Iterator[Delta | Completion]:
        self.requests.append(request)
        reply = self.script(request)
        started = time.time()
        budget = request.max_tokens
        reasoning = _words(reply.reasoning)[:budget]
        content = _words(reply.content)[: budget - len(reasoning)]
        for word in reasoning:
            yield Delta("reasoning", word)
        first_token = time.time() if content else None
        for word in content:
            yield Delta("content", word)
        spent = len(reasoning) + len(content)
        whole = len(_words(reply.reasoning)) + len(_words(reply.content))
        prompt = sum(len(_words(m["content"])) for m in request.messages)
        yield Completion(
            content="".join(content) or None,
            reasoning="".join(reasoning),
            finish_reason="length" if spent < whole else "stop",
            usage=Usage(prompt_tokens=prompt, completion_tokens=spent),
            started=started,
            finished=time.time(),
            first_token=first_token,
        )


def _words(text: str) -> list[str]:
    """`text` in pieces that join back to it, one word (and its spaces) each."""
    return re.findall(r"\s*\S+\s*", text) if text.strip() else ([text] if text else [])


def is_screen(request: Request) -> bool:
    """A screen request asks for structured verdicts."""
    return request.response_format is not None


def passage_ids(request: Request) -> list[int]:
    """The passage ids a screen request's schema allows."""
    schema = request.response_format["json_schema"]["schema"]  # type: ignore[index]
    return schema["properties"]["verdicts"]["items"]["properties"]["id"]["enum"]


def verdicts(request: Request, relevant: bool, reason: str = "scripted") -> Reply:
    """One verdict per passage of a screen request, all alike."""
    body = {"verdicts": [{"id": i, "score": 3 if relevant else 0, "relevant": relevant,
                          "reason": reason} for i in passage_ids(request)]}  # fmt: skip
    return Reply("Check the passage.", json.dumps(body))
