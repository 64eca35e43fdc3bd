"""Embedding models load from disk only, and loading one changes nothing
outside it (no process-wide environment variables)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, os
before = dict(os.environ)
from rag.embedding import load_embedder
from rag.errors import ModelMissing
load_embedder("all-MiniLM-L6-v2")
try:
    load_embedder("sentence-transformers/not-on-this-disk-L3-v2")
    outcome = "loaded"
except ModelMissing as exc:
    outcome = str(exc)
# Hugging Face's switches, which the loader once set for the whole process
# (libraries' own import-time variables, e.g. OpenMP's, are not ours).
changed = sorted(k for k in set(before) | set(os.environ)
                 if k.startswith("HF_") and before.get(k) != os.environ.get(k))
print(json.dumps({"outcome": outcome, "changed": changed}))
"""


def test_a_missing_model_is_named_and_the_environment_is_left_alone():
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert "not-on-this-disk-L3-v2" in result["outcome"] and "offline" in result["outcome"]
    assert result["changed"] == []


@pytest.mark.parametrize(
    "which", ["SentenceTransformerEmbedder", "TransformersEmbedder", "BertEmbedder"]
)
def test_models_loaded_at_once_in_several_threads_each_keep_one_dtype(which):
    # The app's sessions run in threads of one process: two sessions opening
    # knowledge bases at once load two models at once. Loading in bfloat16
    # must not switch torch's process-wide default dtype under the other
    # load (which then built some layers in the wrong dtype and failed its
    # first embedding with "must have the same dtype").
    import threading

    import torch

    from rag import embedding, embedding_bert, embedding_hf

    make = next(
        getattr(m, which) for m in (embedding, embedding_hf, embedding_bert) if hasattr(m, which)
    )
    loaded: list[embedding.TorchEmbedder] = []

    def load() -> None:
        loaded.append(make("all-MiniLM-L6-v2", "bfloat16"))

    for _ in range(2):
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(loaded) == 8
    mixed = [
        sorted(str(d) for d in {p.dtype for p in e._model.parameters()})
        for e in loaded
        if {p.dtype for p in e._model.parameters()} != {torch.bfloat16}
    ]
    assert not mixed, mixed
    for embedder in loaded:
        assert embedder.embed_batch(["warm up"], kind="query").shape == (1, embedder.dimension)
    assert torch.get_default_dtype() == torch.float32


def test_auto_precision_is_float16_on_a_gpu_and_the_cpus_choice_elsewhere():
    from rag.embedding import resolve_device, resolve_precision

    assert resolve_precision("auto", "cuda") == "float16"
    assert resolve_precision("auto", "cpu") in {"float32", "bfloat16"}
    assert resolve_precision("float32", "cuda") == "float32"
    assert resolve_device("cpu") == "cpu"
