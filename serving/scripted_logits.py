"""A test-only vLLM logits processor: the request says which tokens come out.

Loaded by the tiny gpt-oss server (`python -m serving.launch --tiny-gpt-oss`
passes `--logits-processors serving.scripted_logits:ScriptedHarmonyLogitsProcessor`).
A request activates it through `vllm_xargs`; requests without these keys
are left alone (and get the random model's gibberish):

    client.chat.completions.create(..., extra_body={"vllm_xargs": {
        "reasoning": "The user wants a fact.",   # analysis channel (optional)
        "final": '{"answer": "Paris"}',           # final channel
        "constrain": "json",                      # optional: <|constrain|>json
    }})
    # or {"script": "<|channel|>final<|message|>Hi<|return|>"}: raw harmony

With KBQA_SCRIPT_DEFAULT=1 in the server's environment, requests without
these keys follow a default script instead, so an unmodified client (the
app, in the browser test) gets deterministic gpt-oss output: a structured
request for screen verdicts gets every passage judged relevant, any other
request a short reasoning and an answer citing passage [1].

The text is tokenized with harmony's own encoding and forced one token per
step (every other logit -inf), so vLLM's real harmony parsing, streaming,
`finish_reason`, `max_tokens` and structured-output checks all run on it.
After the script the processor forces `<|return|>`, which ends the turn.
Runs inside `.venv-llm` (vLLM's engine process), never in the app.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams

RETURN = "<|return|>"
KEYS = ("script", "reasoning", "final", "constrain")


def harmony_script(xargs: dict[str, Any] | None) -> str | None:
    """The harmony text a request scripted, or None when it scripted nothing.

    Raises ValueError (HTTP 400 at the API) for keys of the wrong type.
    """
    xargs = xargs or {}
    for key in KEYS:
        if key in xargs and not isinstance(xargs[key], str):
            raise ValueError(f"vllm_xargs[{key!r}] must be a string")
    if "script" in xargs:
        return str(xargs["script"])
    if "final" not in xargs and "reasoning" not in xargs:
        return None
    text = ""
    if "reasoning" in xargs:
        # What gpt-oss writes first: its chain of thought, then a new turn.
        text += f"<|channel|>analysis<|message|>{xargs['reasoning']}<|end|><|start|>assistant"
    constrain = f" <|constrain|>{xargs['constrain']}" if "constrain" in xargs else ""
    return text + f"<|channel|>final{constrain}<|message|>{xargs.get('final', '')}{RETURN}"


DEFAULT_REASONING = "The first passage answers the question."
DEFAULT_ANSWER = "The knowledge base answers this in the first passage [1]."


def default_script(params: SamplingParams) -> str | None:
    """What a request without a script gets when KBQA_SCRIPT_DEFAULT is set."""
    if not os.environ.get("KBQA_SCRIPT_DEFAULT"):
        return None
    structured = params.structured_outputs
    if structured is not None and structured.json is not None:
        schema = (
            json.loads(structured.json) if isinstance(structured.json, str) else structured.json
        )
        try:
            ids = schema["properties"]["verdicts"]["items"]["properties"]["id"]["enum"]
        except (KeyError, TypeError):
            return None
        verdicts = [
            {"id": i, "score": 3, "relevant": True, "reason": "default script"} for i in ids
        ]
        return harmony_script(
            {"reasoning": "Judge each passage.", "final": json.dumps({"verdicts": verdicts}),
             "constrain": "json"}
        )  # fmt: skip
    return harmony_script({"reasoning": DEFAULT_REASONING, "final": DEFAULT_ANSWER})


class ForcedTokens:
    """Per-request: make token `ids[n]` the only possible n-th output token."""

    def __init__(self, ids: list[int], end_id: int):
        self.ids = ids
        self.end_id = end_id

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        step = len(output_ids)
        target = self.ids[step] if step < len(self.ids) else self.end_id
        # In place on this request's row: -inf everywhere but the target, so
        # greedy, temperature and top-p sampling all pick it.
        logits.fill_(float("-inf"))
        logits[target] = 0.0
        return logits


class ScriptedHarmonyLogitsProcessor(AdapterLogitsProcessor):
    """Forces the harmony token sequence named by a request's `vllm_xargs`."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)

    @cached_property
    def _encoding(self) -> Any:
        from openai_harmony import HarmonyEncodingName, load_harmony_encoding

        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        harmony_script(sampling_params.extra_args)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token wins, greedy or not

    def new_req_logits_processor(self, params: SamplingParams) -> ForcedTokens | None:
        script = harmony_script(params.extra_args) or default_script(params)
        if script is None:
            return None
        ids = self._encoding.encode(script, allowed_special="all")
        (end_id,) = self._encoding.encode(RETURN, allowed_special="all")
        return ForcedTokens(ids, end_id)
