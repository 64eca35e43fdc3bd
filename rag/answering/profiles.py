"""Settings profiles for the models `make llm` serves, defined once.

The small CPU model (SmolLM2-135M, 2,048-token context) gets fewer,
shorter requests, and its answers quote sentences of the passages
(rag/answering/extractive.py): asked to write, it ignores the instruction to cite and
mixes passages into wrong claims, or repeats "1.1.1." to the token limit.

`make run` passes the profile to the app as environment variables
(`as_env`); `rag ask` applies it after asking the server what it serves
(`discover`); tests and benches build their settings with `small_model`.
Whatever the user set (environment, flags) always wins over a profile.
"""

from __future__ import annotations

from typing import Any

from rag.settings import Settings

# The name `make llm` serves SmolLM2 under (serving/config.py CPU_SERVED_NAME).
SMALL_MODEL = "smollm2-135m"
SMALL_MODEL_CONTEXT = 2048

# Chosen with `rag eval --stages --half tune` on SciFact (BENCHMARKS.md has
# the comparison on the other half): this model's screen kept fewer relevant
# passages than retrieval's own top 3 and tripled the time, so it is off.
SMALL_MODEL_PROFILE: dict[str, Any] = {
    "screen": False,
    "answer_style": "extractive",
    # Its rewrites answer the follow-up or drop its subject; joined by rule,
    # the follow-up finds what it refers to (bench/answering.py compares).
    "followup": "join",
    "llm_context_tokens": SMALL_MODEL_CONTEXT,
    "screen_k": 6,
    "keep_max": 3,
    "screen_max_tokens": 128,
    "rewrite_max_tokens": 128,
    "read_max_tokens": 384,
}


def small_model(**overrides: Any) -> Settings:
    """Settings with the small-model profile; `overrides` win."""
    return Settings(**{**SMALL_MODEL_PROFILE, **overrides})


def as_env(profile: dict[str, Any]) -> dict[str, str]:
    """The profile as the `RAG_` environment variables Settings reads."""
    return {f"RAG_{name.upper()}": _env_value(value) for name, value in profile.items()}


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def discover(settings: Settings) -> Settings:
    """`settings` with what the user left unset filled in from the LLM
    server's `/v1/models`: the model name (when the configured one is not
    served), its context length (`max_model_len`), and, when the served model
    is the small CPU one, the small-model profile. An unreachable server
    changes nothing (the request that follows reports it)."""
    from rag.llm import served_models

    chosen = set(settings.model_fields_set)
    served = served_models(settings)
    if not served:
        return settings
    update: dict[str, Any] = {}
    model = settings.llm_model
    if "llm_model" not in chosen and model not in served:
        model = update["llm_model"] = next(iter(served))
    if model == SMALL_MODEL:
        update.update({k: v for k, v in SMALL_MODEL_PROFILE.items() if k not in chosen})
    context = served.get(model)
    if "llm_context_tokens" not in chosen and context:
        update["llm_context_tokens"] = context
    if not update:
        return settings
    # Validated like any other settings; fields the user set stay as set.
    return Settings(**{**settings.model_dump(include=chosen), **update})
