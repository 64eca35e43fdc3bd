"""The `Embedder` seam on ONNX Runtime: the same sentence-transformers model
(mean pooling, L2 normalisation), its transformer exported once to ONNX
from the installed weights, optionally quantized to int8. Torch is needed
only for that one export; embedding runs on onnxruntime and numpy."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag.embedding import Kind, _model_location, canonical_model_id
from rag.errors import ModelMissing

OPSET = 17
# Version of what we write into the cache; a change rebuilds every entry.
CACHE_FORMAT = 1
# Rows of one forward pass for texts (sentence-transformers' default), and
# padded tokens of one for pre-tokenized passages (length-sorted, so short
# passages go many to a batch).
BATCH_ROWS = 32
BATCH_TOKENS = 8192
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kbqa" / "onnx"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_file(folder: Path) -> Path:
    # safetensors only, as the torch path: a pickle is never opened.
    found = folder / "model.safetensors"
    if not found.is_file():
        raise ModelMissing(f"No model.safetensors in {folder}: the ONNX backend exports from it.")
    return found


def _check_pooling(folder: Path) -> None:
    """Only what we reproduce: no query/document prompts, mean pooling in
    numpy, then normalisation."""
    config = folder / "1_Pooling" / "config.json"
    pooling = json.loads(config.read_text()) if config.is_file() else {}
    modules = folder / "modules.json"
    types = (
        [m.get("type", "") for m in json.loads(modules.read_text())] if modules.is_file() else []
    )
    extra = folder / "config_sentence_transformers.json"
    prompts = json.loads(extra.read_text()).get("prompts") if extra.is_file() else None
    mean = pooling.get("pooling_mode_mean_tokens") and any("Normalize" in t for t in types)
    if not mean or prompts:
        raise ModelMissing(
            "The ONNX embedding backend handles mean-pooled, normalised models without "
            f"prompts only; {folder} is not one (use RAG_EMBED_BACKEND=torch)."
        )


def _atomic_write(target: Path, produce: Callable[[Path], object]) -> None:
    """`produce(temp)` writes a file beside `target`, which then replaces it
    in one rename: a reader sees the old file or the whole new one."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temp = Path(name)
    try:
        produce(temp)
        with temp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def _export(folder: Path, out: Path) -> None:
    """The transformer alone (token ids in, token vectors out), through the
    legacy TorchScript exporter, batch and sequence axes dynamic."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, dtype=torch.float32
    ).eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    sample = torch.ones((2, 8), dtype=torch.int64)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*_INPUTS, "token_embeddings")}
    # The tracer's warnings concern code paths this model's inputs never
    # take (the tests compare the graph's vectors with torch's).
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden(), (sample, sample, torch.zeros_like(sample)), str(out),
            input_names=list(_INPUTS), output_names=["token_embeddings"],
            dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )  # fmt: skip


def _quantize(source: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Matrix products only, one scale per output channel: quantizing the
    # embedding lookups too, or one scale per tensor, moved vectors several
    # times further from float32's (cosine down to 0.9 on AVX2 CPUs).
    quantize_dynamic(
        str(source), str(out), weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["MatMul"],
    )  # fmt: skip


class OnnxCache:
    """~/.cache/kbqa/onnx/<weights hash>/: model.onnx (and model-int8.onnx),
    each with a sidecar recording the hash of the weights it came from and
    its own hash, written after it. A file whose sidecar is missing or
    disagrees (torn by a crash, edited, from other weights) is rebuilt."""

    def __init__(self, folder: Path, root: Path | None = None) -> None:
        self.source = folder
        self.weights_sha = file_sha256(_weights_file(folder))
        self.dir = (root or default_cache_root()) / self.weights_sha[:16]
        self.builds = 0  # exports and quantizations done by this object

    def path(self, quantized: bool) -> Path:
        """The graph, built or rebuilt first when missing or not intact."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fp32 = self._ensure(self.dir / "model.onnx", lambda out: _export(self.source, out))
        if not quantized:
            return fp32
        return self._ensure(self.dir / "model-int8.onnx", lambda out: _quantize(fp32, out))

    def _record(self, target: Path) -> Path:
        return target.with_name(target.name + ".json")

    def intact(self, target: Path) -> bool:
        try:
            record = json.loads(self._record(target).read_text())
            return bool(
                record.get("format") == CACHE_FORMAT
                and record.get("weights_sha256") == self.weights_sha
                and record.get("sha256") == file_sha256(target)
            )
        except (OSError, ValueError, AttributeError):
            return False

    def _ensure(self, target: Path, build: Callable[[Path], object]) -> Path:
        if self.intact(target):
            return target
        self._record(target).unlink(missing_ok=True)
        _atomic_write(target, build)
        self.builds += 1
        record = {"format": CACHE_FORMAT, "weights_sha256": self.weights_sha,
                  "sha256": file_sha256(target), "opset": OPSET}  # fmt: skip
        _atomic_write(self._record(target), lambda p: p.write_text(json.dumps(record)))
        return target


def _length_batches(lengths: Sequence[int], budget: int, max_rows: int) -> Iterator[list[int]]:
    """Indices of `lengths`, longest first, in batches of at most `max_rows`
    rows whose padded size stays within `budget` tokens (a longer row goes
    alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]
        if batch and (len(batch) >= max_rows or (len(batch) + 1) * width > budget):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class OnnxEmbedder:
    """A mean-pooled sentence-transformers model (the default
    all-MiniLM-L6-v2) on ONNX Runtime's CPU provider; `quantized` runs the
    int8 (dynamic quantization) graph."""

    def __init__(self, name: str, quantized: bool = False, cache_root: Path | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(_model_location(name))
        _check_pooling(folder)
        found = folder / "tokenizer.json"
        if not found.is_file():
            raise ModelMissing(f"No tokenizer.json in {folder}: the ONNX backend needs it.")
        self.cache = OnnxCache(folder, cache_root)
        self.quantized = quantized
        self.model_id = canonical_model_id(name)
        config = json.loads((folder / "config.json").read_text())
        self.dimension = int(config["hidden_size"])
        st_config = folder / "sentence_bert_config.json"
        st = json.loads(st_config.read_text()) if st_config.is_file() else {}
        self.max_length = int(st.get("max_seq_length") or 512)
        # Counting: no specials, no truncation. Embedding: truncated as
        # sentence-transformers truncates, specials kept.
        self._counter = Tokenizer.from_file(str(found))
        self._counter.no_truncation()
        self._counter.no_padding()
        self.max_tokens = self.max_length - len(self._counter.encode("").ids)
        self._encoder = Tokenizer.from_file(str(found))
        self._encoder.no_padding()
        self._encoder.enable_truncation(max_length=self.max_length)
        self.pad_id = int(config.get("pad_token_id") or 0)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = self.cache.path(quantized)
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def count_tokens(self, text: str) -> int:
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids as the model reads them (stripped, truncated, specials)."""
        encodings = self._encoder.encode_batch([str(t).strip() for t in texts])
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def embed_batch(self, texts: Sequence[str], kind: Kind = "document") -> np.ndarray:
        # all-MiniLM-L6-v2 has no query or document prompt: both kinds embed
        # alike, as sentence-transformers' encode_query/encode_document do.
        return self._embed(self.encode(texts), BATCH_ROWS)

    def embed_token_ids(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        """Vectors of passages already tokenized (special tokens included,
        truncated), one row per passage, in order; the tokenizer never runs."""
        return self._embed(ids, BATCH_TOKENS)

    def _embed(self, ids: Sequence[np.ndarray], max_rows: int) -> np.ndarray:
        out = np.zeros((len(ids), self.dimension), dtype=np.float32)
        for rows in _length_batches([len(r) for r in ids], BATCH_TOKENS, max_rows):
            out[rows] = self._forward([ids[i] for i in rows])
        return out

    def _forward(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for n, row in enumerate(rows):
            input_ids[n, : len(row)] = row
            mask[n, : len(row)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask,
                "token_type_ids": np.zeros_like(input_ids)}  # fmt: skip
        (tokens,) = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})
        weights = mask[:, :, None].astype(np.float32)
        pooled = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)
