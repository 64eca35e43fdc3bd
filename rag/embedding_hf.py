"""The `Embedder` on `transformers` alone: the model folder's transformer
(AutoModel) and the pooling its sentence-transformers files declare, for the
folders whose every module we reproduce (`plan_of`). sentence-transformers
is never imported here: importing it costs seconds at every start, for
machinery (prompts, modalities, training) these models do not use.
`load_embedder` runs the BERT folders `rag.embedding_bert` reproduces on
plain PyTorch instead, without transformers' own seconds of import."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rag.embedding import (
    Kind,
    Precision,
    TorchEmbedder,
    _model_location,
    _quiet_transformers,
    _unavailable,
    canonical_model_id,
)

Pooling = Literal["mean", "cls"]
# sentence-transformers' rows a batch when it embeds texts (its default).
TEXT_BATCH = 32
# The legacy spelling of the pooling modes (1_Pooling/config.json).
_LEGACY_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_MODULE_SETTINGS = {
    "max_seq_length",
    "do_lower_case",
    "model_args",
    "tokenizer_args",
    "config_args",
}
_MODEL_SETTINGS = {
    "__version__",
    "prompts",
    "default_prompt_name",
    "similarity_fn_name",
    "model_type",
}


@dataclass(frozen=True)
class Plan:
    """How to embed with a folder: its transformer, then `pooling`, then L2
    normalisation (which the seam applies to every model)."""

    folder: Path
    pooling: Pooling
    max_length: int | None  # sentence_bert_config.json's; None: the tokenizer's
    dimension: int


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _pooling_modes(config: dict[str, Any]) -> list[str]:
    mode = config.get("pooling_mode")
    if mode is None:
        return [m for key, m in _LEGACY_MODES.items() if config.get(key)]
    return [mode] if isinstance(mode, str) else list(mode)


def _module_problem(modules: list[dict[str, Any]]) -> str:
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return (
            f"its modules are {', '.join(kinds) or 'none'}, not Transformer, Pooling[, Normalize]"
        )
    if modules[0].get("path", "") not in ("", "."):
        return "its transformer lies in a subfolder"
    return ""


def plan_of(folder: Path) -> Plan | str:
    """The `Plan` for a sentence-transformers model folder, or why it needs
    sentence-transformers itself (a module, prompt or setting not reproduced
    here: a Dense layer, max pooling, a query prompt, lower-casing)."""
    modules = _json(folder / "modules.json")
    if not modules:
        return "it has no modules.json"
    problem = _module_problem(modules)
    if problem:
        return problem
    pooling = _json(folder / modules[1].get("path", "") / "config.json")
    modes = _pooling_modes(pooling)
    if modes not in (["mean"], ["cls"]):
        return f"its pooling is {'+'.join(modes) or 'none'}, not mean or cls"
    if pooling.get("include_prompt") is False:
        return "its pooling leaves out prompt tokens"
    module = _json(folder / "sentence_bert_config.json")
    odd = sorted(
        k for k, v in module.items() if k not in _MODULE_SETTINGS or (v and k.endswith("args"))
    )
    if odd or module.get("do_lower_case"):
        return f"its sentence_bert_config.json sets {', '.join(odd) or 'do_lower_case'}"
    model = _json(folder / "config_sentence_transformers.json")
    prompts = {k: v for k, v in (model.get("prompts") or {}).items() if v}
    extra = sorted(k for k in model if k not in _MODEL_SETTINGS)
    if prompts or model.get("default_prompt_name"):
        return f"its config_sentence_transformers.json sets a prompt ({', '.join(prompts)})"
    if extra:
        return f"its config_sentence_transformers.json sets {', '.join(extra)}"
    config = _json(folder / "config.json")
    dimension = config.get("hidden_size")
    declared = pooling.get(
        "word_embedding_dimension", pooling.get("embedding_dimension", dimension)
    )
    if not isinstance(dimension, int) or declared != dimension or config.get("is_encoder_decoder"):
        return "its config.json declares no encoder with the pooled dimension"
    length = module.get("max_seq_length")
    return Plan(folder, modes[0], int(length) if length else None, dimension)  # type: ignore[arg-type]


def pool(hidden: Any, attention_mask: Any, pooling: Pooling) -> Any:
    """One vector per row of token vectors `hidden` (torch tensors), as
    sentence-transformers' Pooling module gives it."""
    import torch

    if pooling == "cls":  # the first token: inputs are padded on the right
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp_min(1e-9)


def model_folder(name: str) -> Path | None:
    """The folder holding model `name` (a folder, the bundled package, or a
    snapshot in the local Hugging Face cache), or None when none is on disk
    (sentence-transformers then says why, by name)."""
    location = Path(_model_location(name)).expanduser()
    if location.is_dir():
        return location
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name), local_files_only=True))
    except Exception:  # not cached, or not a repository name at all
        return None


class TransformersEmbedder(TorchEmbedder):
    """A model folder that `plan_of` reads, on `transformers` (AutoModel,
    safetensors only, offline): the same device, precision and batching
    rules as `SentenceTransformerEmbedder`, and its vectors."""

    def __init__(
        self,
        name: str,
        precision: Precision = "auto",
        device: str = "cpu",
        plan: Plan | None = None,
    ) -> None:
        _quiet_transformers()
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._place(precision, device)
        try:
            folder = model_folder(name)
            if plan is None and folder is None:
                raise FileNotFoundError(f"{name} is not on disk")
            found = plan or plan_of(folder)  # type: ignore[arg-type]
            if isinstance(found, str):
                raise FileNotFoundError(found)
            # As `SentenceTransformerEmbedder`: safetensors only (a pickle is
            # never opened), loaded in float32 then cast (loading in another
            # dtype switches torch's process-wide default while building).
            model = AutoModel.from_pretrained(
                str(found.folder), local_files_only=True, use_safetensors=True, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(str(found.folder), local_files_only=True)
        except Exception as exc:  # the library raises many kinds here
            raise _unavailable(name, exc) from exc
        self._model = model.to(self.device).to(getattr(torch, self.precision)).eval()
        self.plan = found
        self.pooling: Pooling = found.pooling
        self.model_id = canonical_model_id(name)
        self.dimension = found.dimension
        # sentence-transformers' window: its config's, else the smaller of
        # the positions the model has and the tokenizer's own limit.
        positions = int(getattr(model.config, "max_position_embeddings", 512) or 512)
        self.max_length = found.max_length or min(positions, int(tokenizer.model_max_length))
        self._use_tokenizer(tokenizer, self.max_length)

    def _pooled(self, features: dict[str, Any]) -> Any:
        hidden = self._model(**features).last_hidden_state
        return pool(hidden, features["attention_mask"], self.pooling)

    def embed_batch(self, texts: Sequence[str], kind: Kind = "document") -> np.ndarray:
        """Texts tokenized by the model's tokenizer as sentence-transformers
        tokenizes them (truncated to the window, specials added), embedded
        as `embed_token_ids` embeds. Queries and documents alike: `plan_of`
        admits no model with a prompt for either."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encoded = self._tokenizer(
            [str(t) for t in texts], truncation="longest_first", max_length=self.max_length
        )["input_ids"]
        ids = [np.asarray(row, dtype=np.int64) for row in encoded]
        return self.embed_token_ids(ids, max_rows=TEXT_BATCH)
