"""The ONNX Runtime embedder (RAG_EMBED_BACKEND=onnx|onnx-int8) gives the
torch path's vectors, for documents, queries and pre-tokenized passages,
from a graph exported once into a cache that survives a torn file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import EMBED_TEXTS

from rag.embedding import Embedder, load_embedder, resolve_backend
from rag.embedding_onnx import OnnxEmbedder
from rag.errors import ModelMissing

MODEL = "all-MiniLM-L6-v2"
TEXTS = EMBED_TEXTS
# int8 weights (dynamic quantization of the matrix products, per channel)
# move vectors: on these texts the lowest cosine to float32 measured 0.98.
INT8_MIN_COSINE = 0.97


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Where the factory puts it when XDG_CACHE_HOME is the temporary folder.
    return tmp_path_factory.mktemp("xdg") / "kbqa" / "onnx"


@pytest.fixture(scope="module")
def torch_embedder() -> Embedder:
    return load_embedder(MODEL, backend="torch")


@pytest.fixture(scope="module")
def onnx_embedder(cache_root: Path) -> OnnxEmbedder:
    return OnnxEmbedder(MODEL, cache_root=cache_root)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


@pytest.mark.parametrize("kind", ["document", "query"])
def test_fp32_vectors_match_the_torch_path(
    kind: str, torch_embedder: Embedder, onnx_embedder: OnnxEmbedder
) -> None:
    expected = torch_embedder.embed_batch(TEXTS, kind=kind)  # type: ignore[arg-type]
    got = onnx_embedder.embed_batch(TEXTS, kind=kind)  # type: ignore[arg-type]
    assert got.shape == expected.shape == (len(TEXTS), 384)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    worst = cosines(got, expected).min()
    assert worst > 1 - 1e-3, f"lowest cosine to torch: {worst:.6f}"


def test_a_single_query_and_an_empty_batch(
    torch_embedder: Embedder, onnx_embedder: OnnxEmbedder
) -> None:
    one = onnx_embedder.embed_batch(["aspirin and heart attacks"], kind="query")
    ref = torch_embedder.embed_batch(["aspirin and heart attacks"], kind="query")
    assert cosines(one, ref)[0] > 1 - 1e-3
    assert onnx_embedder.embed_batch([]).shape == (0, 384)


def test_token_ids_give_the_same_vectors_in_order(onnx_embedder: OnnxEmbedder) -> None:
    ids = onnx_embedder.encode(TEXTS)
    assert all(ids_row[0] == 101 and ids_row[-1] == 102 for ids_row in ids)  # [CLS] ... [SEP]
    assert max(len(r) for r in ids) == onnx_embedder.max_length  # truncated to the window
    np.testing.assert_allclose(
        onnx_embedder.embed_token_ids(ids), onnx_embedder.embed_batch(TEXTS), atol=1e-5
    )
    assert onnx_embedder.embed_token_ids([]).shape == (0, 384)


def test_counts_and_limits_agree_with_the_torch_path(
    torch_embedder: Embedder, onnx_embedder: OnnxEmbedder
) -> None:
    assert onnx_embedder.max_tokens == torch_embedder.max_tokens
    assert onnx_embedder.dimension == torch_embedder.dimension
    assert onnx_embedder.model_id == torch_embedder.model_id
    for text in TEXTS:
        assert onnx_embedder.count_tokens(text) == torch_embedder.count_tokens(text)


def test_int8_vectors_stay_close_to_the_torch_path(
    cache_root: Path, torch_embedder: Embedder, onnx_embedder: OnnxEmbedder
) -> None:
    int8 = OnnxEmbedder(MODEL, quantized=True, cache_root=cache_root)
    worst = cosines(int8.embed_batch(TEXTS), torch_embedder.embed_batch(TEXTS)).min()
    assert worst > INT8_MIN_COSINE, f"lowest cosine of int8 to torch: {worst:.4f}"


def test_the_cache_is_reused_not_exported_twice(
    cache_root: Path, onnx_embedder: OnnxEmbedder
) -> None:
    graph = onnx_embedder.cache.path(quantized=False)
    stamp = graph.stat().st_mtime_ns
    again = OnnxEmbedder(MODEL, cache_root=cache_root)
    assert again.cache.builds == 0
    assert graph.stat().st_mtime_ns == stamp
    assert [p.name for p in graph.parent.glob("*.tmp")] == []


def test_a_torn_cached_graph_is_detected_and_rebuilt(
    cache_root: Path, torch_embedder: Embedder, onnx_embedder: OnnxEmbedder
) -> None:
    int8_graph = OnnxEmbedder(MODEL, quantized=True, cache_root=cache_root).cache.path(True)
    data = int8_graph.read_bytes()
    int8_graph.write_bytes(data[: len(data) // 2])  # as a crash mid-write would leave it
    rebuilt = OnnxEmbedder(MODEL, quantized=True, cache_root=cache_root)
    assert rebuilt.cache.builds == 1
    assert int8_graph.read_bytes() == data
    worst = cosines(rebuilt.embed_batch(TEXTS), torch_embedder.embed_batch(TEXTS)).min()
    assert worst > INT8_MIN_COSINE


def test_a_corrupt_fp32_graph_or_a_missing_record_is_not_trusted(
    onnx_embedder: OnnxEmbedder,
) -> None:
    cache = onnx_embedder.cache
    graph = cache.path(quantized=False)
    assert cache.intact(graph)
    record = graph.with_name(graph.name + ".json")
    saved = record.read_text()
    record.write_text(saved.replace(cache.weights_sha, "0" * 64))  # from other weights
    assert not cache.intact(graph)
    record.unlink()
    assert not cache.intact(graph)
    record.write_text(saved)
    assert cache.intact(graph)


def test_the_backend_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAG_EMBED_BACKEND", raising=False)
    assert resolve_backend() == "torch"
    monkeypatch.setenv("RAG_EMBED_BACKEND", "ONNX-int8")
    assert resolve_backend() == "onnx-int8"
    assert resolve_backend("onnx") == "onnx"
    monkeypatch.setenv("RAG_EMBED_BACKEND", "tensorrt")
    with pytest.raises(ModelMissing, match="RAG_EMBED_BACKEND='tensorrt'"):
        resolve_backend()


def test_the_factory_picks_the_backend_from_the_setting(
    monkeypatch: pytest.MonkeyPatch, cache_root: Path, onnx_embedder: OnnxEmbedder
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_root.parent.parent))
    monkeypatch.setenv("RAG_EMBED_BACKEND", "onnx")
    chosen = load_embedder(MODEL, "auto", "cpu")
    assert isinstance(chosen, OnnxEmbedder) and not chosen.quantized
    assert chosen.cache.builds == 0  # the graph exported above
    monkeypatch.setenv("RAG_EMBED_BACKEND", "torch")
    assert not isinstance(load_embedder(MODEL, "auto", "cpu"), OnnxEmbedder)
