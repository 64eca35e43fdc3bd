"""The plain-PyTorch BERT embedder (rag/embedding_bert.py): the default
model's vectors and token ids without importing transformers or
sentence-transformers; any folder it does not reproduce keeps the old route."""

from __future__ import annotations

import json
import subprocess
import sys

MODEL = "all-MiniLM-L6-v2"

PROBE = r"""
import json, sys
from rag.embedding import load_embedder
embedder = load_embedder("all-MiniLM-L6-v2", "float32", "cpu")
embedder.embed_batch(["warm up"], kind="query")
import numpy
embedder.embed_token_ids([numpy.array([101, 2023, 102])])
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
