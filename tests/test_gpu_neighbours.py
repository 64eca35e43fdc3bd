"""What our imports do on a GPU machine that cannot be had here: JAX (in
many GPU images) is stood in for by a package that records being imported.
The real effect was seen on the device machine: importing bm25s started
JAX's GPU backend, which took three quarters of an H200's memory in the
ingest process and again in a Ray worker, and the embedding actor then ran
out of GPU memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_JAX = """
import os
open(os.environ["JAX_MARK"], "a").write("imported\\n")

class lax:
    @staticmethod
    def top_k(x, k):
        open(os.environ["JAX_MARK"], "a").write("ran\\n")
        return x[:k], list(range(k))
"""

PROBE = r"""
import json, sys
import rag.lexical
import bm25s.selection
print(json.dumps({"jax_seen": bm25s.selection.JAX_IS_AVAILABLE,
                  "jax_loaded": "jax" in sys.modules}))
"""


def test_the_bm25_side_never_starts_jax(tmp_path):
    fake = tmp_path / "site" / "jax"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_JAX, encoding="utf-8")
    (fake / "lax.py").write_text("from jax import lax as _l\ntop_k = _l.top_k\n", encoding="utf-8")
    mark = tmp_path / "mark"
    env = {**os.environ, "JAX_MARK": str(mark),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}  # fmt: skip
    # The stand-in is importable, as JAX would be on a GPU image:
    check = subprocess.run([sys.executable, "-c", "import jax"], env=env)
    assert check.returncode == 0 and mark.read_text() == "imported\n"
    mark.unlink()

    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"jax_seen": False, "jax_loaded": False}
    assert not mark.exists(), mark.read_text()
