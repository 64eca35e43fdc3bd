"""The plain-PyTorch BERT embedder (rag/embedding_bert.py): the default
model's vectors and token ids as sentence-transformers and transformers give
them, without importing either library; a folder it does not reproduce keeps
the transformers route."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import EMBED_TEXTS
from test_embedding_hf import _bundled, _copy_model, _least_cosine

from rag.embedding import SentenceTransformerEmbedder, load_embedder, load_token_counter
from rag.embedding_bert import BertEmbedder, bert_problem
from rag.embedding_hf import TransformersEmbedder
from rag.errors import ModelMissing

MODEL = "all-MiniLM-L6-v2"
# Lengths mixed in one batch: empty, a word, sentences, one past the window.
TEXTS = [*EMBED_TEXTS, "", "word " * 600, "x" * 3000]
VARIED = [
    "", "   ", "a", "Hello, World!", "naïve café résumé Ærøskøbing", "東京タワーと北京大学",
    "Ünïcode 数字 — emoji 🙂 and tabs\tand\nnewlines", "[CLS] literal [SEP] and [MASK] tokens",
    "don't stop-believing 3.14159 e=mc^2", "ǅemal İstanbul ß ﬁ", "word " * 600, "x" * 3000,
    "\u200b\u00ad zero width and soft hyphen", "Ελληνικά Русский العربية हिन्दी",
]  # fmt: skip


@pytest.fixture(scope="module")
def reference() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(MODEL, "float32", "cpu")


@pytest.fixture(scope="module")
def bert() -> BertEmbedder:
    return BertEmbedder(MODEL, "float32", "cpu")


@pytest.mark.parametrize("kind", ["document", "query"])
def test_vectors_are_sentence_transformers_own(kind, reference, bert) -> None:
    expected = reference.embed_batch(TEXTS, kind=kind)
    got = bert.embed_batch(TEXTS, kind=kind)
    assert got.shape == expected.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _least_cosine(got, expected) > 1 - 1e-3
    # One text at a time (no padding) gives the batch's vectors.
    alone = np.vstack([bert.embed_batch([t], kind=kind) for t in TEXTS])
    assert _least_cosine(alone, got) > 1 - 1e-5


def test_token_ids_from_the_chunker_give_the_same_vectors(reference, bert) -> None:
    ids = load_token_counter(MODEL).encode(TEXTS)
    got = bert.embed_token_ids(ids)
    assert _least_cosine(got, reference.embed_token_ids(ids)) > 1 - 1e-3
    assert _least_cosine(got, reference.embed_batch(TEXTS)) > 1 - 1e-3
    assert bert.embed_token_ids([]).shape == bert.embed_batch([]).shape == (0, 384)


def test_long_texts_are_cut_at_the_window(reference, bert) -> None:
    long = "The mitochondria is the powerhouse of the cell. " * 60
    assert [len(ids) for ids in bert.encode([long, "word " * 600])] == [256, 256]
    cut = reference.tokenizer.decode(bert.encode([long])[0][1:-1])
    assert _least_cosine(bert.embed_batch([long]), reference.embed_batch([cut])) > 1 - 1e-3


def test_ids_and_masks_are_autotokenizers(reference, bert) -> None:
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(_bundled()), local_files_only=True)
    expected = auto(VARIED, padding=True, truncation="longest_first", max_length=256)
    features = bert._features(bert.encode(VARIED), pin=False)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert features[name].tolist() == expected[name], name
    assert [bert.count_tokens(t) for t in VARIED] == [reference.count_tokens(t) for t in VARIED]
    assert (bert.max_tokens, bert.max_length, bert.dimension, bert.model_id) == (
        reference.max_tokens, 256, reference.dimension, reference.model_id,
    )  # fmt: skip


def test_bfloat16_casts_every_weight_and_stays_close(bert) -> None:
    import torch

    half = BertEmbedder(MODEL, "bfloat16", "cpu")
    assert {p.dtype for p in half._model.parameters()} == {torch.bfloat16}
    assert _least_cosine(half.embed_batch(TEXTS), bert.embed_batch(TEXTS)) > 0.99


PROBE = r"""
import json, sys
import numpy
from rag.embedding import load_embedder
embedder = load_embedder("all-MiniLM-L6-v2", "float32", "cpu")
embedder.embed_batch(["warm up"], kind="query")
embedder.embed_token_ids([numpy.array([101, 2023, 102])])
embedder.count_tokens("a few words")
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"transformers", "sentence_transformers"})
print(json.dumps({"kind": type(embedder).__name__, "loaded": loaded}))
"""


def test_the_default_model_embeds_without_transformers_or_sentence_transformers() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result == {"kind": "BertEmbedder", "loaded": []}


def _edited(tmp_path: Path, name: str, change: dict[str, object]) -> Path:
    folder = _copy_model(_bundled(), tmp_path / "m")
    config = json.loads((folder / name).read_text())
    config.update(change)
    (folder / name).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "name, change, words",
    [
        ("config.json", {"model_type": "roberta", "architectures": ["RobertaModel"]}, "roberta"),
        ("config.json", {"hidden_act": "gelu_new"}, "gelu_new"),
    ],
)
def test_another_architecture_keeps_the_transformers_route(tmp_path, name, change, words) -> None:
    folder = _edited(tmp_path, name, change)
    assert words in bert_problem(folder)
    chosen = load_embedder(str(folder), "float32", "cpu")
    assert type(chosen) is TransformersEmbedder
    expected = SentenceTransformerEmbedder(str(folder), "float32", "cpu").embed_batch(TEXTS)
    assert _least_cosine(chosen.embed_batch(TEXTS), expected) > 1 - 1e-3
    with pytest.raises(ModelMissing, match="plain BERT encoder: .*" + words):
        BertEmbedder(str(folder), "float32", "cpu")


def test_a_tokenizer_transformers_would_rebuild_keeps_its_route(tmp_path) -> None:
    folder = _edited(tmp_path, "tokenizer_config.json", {"tokenize_chinese_chars": False})
    assert "tokenizer" in bert_problem(folder)
    assert type(load_embedder(str(folder), "float32", "cpu")) is TransformersEmbedder


def _rewrite_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    tensors = edit(load_file(str(weights.resolve())))
    weights.unlink()  # a link to the installed file: replaced, never written through
    save_file(tensors, str(weights))


def test_a_checkpoint_saved_with_a_prefix_loads_alike(tmp_path, bert) -> None:
    folder = _copy_model(_bundled(), tmp_path / "prefixed")
    _rewrite_weights(folder, lambda t: {f"bert.{k}": v for k, v in t.items()})
    assert bert_problem(folder) == ""
    chosen = load_embedder(str(folder), "float32", "cpu")
    assert type(chosen) is BertEmbedder
    assert _least_cosine(chosen.embed_batch(TEXTS), bert.embed_batch(TEXTS)) > 1 - 1e-6


def test_tensors_missing_or_left_over_are_named_and_keep_the_transformers_route(tmp_path) -> None:
    folder = _copy_model(_bundled(), tmp_path / "odd")

    def edit(tensors):
        tensors["encoder.layer.6.output.dense.weight"] = tensors.pop(
            "encoder.layer.5.output.dense.weight"
        )
        return tensors

    _rewrite_weights(folder, edit)
    problem = bert_problem(folder)
    assert "missing ['encoder.layer.5.output.dense.weight']" in problem
    assert "unexpected ['encoder.layer.6.output.dense.weight']" in problem
    with pytest.raises(ModelMissing, match=r"odd.*plain BERT encoder"):
        BertEmbedder(str(folder), "float32", "cpu")
    assert type(load_embedder(str(folder), "float32", "cpu")) is TransformersEmbedder


def test_auto_and_the_device_it_means_are_one_loaded_model() -> None:
    # Settings() asks for "auto"; a caller that resolved it already asks for
    # "cpu": one process, one copy of the model (it was loaded twice).
    from rag.embedding import resolve_device

    assert load_embedder(MODEL, device="auto") is load_embedder(
        MODEL, device=resolve_device("auto")
    )
