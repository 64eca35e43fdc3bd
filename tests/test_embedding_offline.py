"""Embedding models load from disk only, and loading one changes nothing
outside it (no process-wide environment variables)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
