"""The README's Python MCP client, run as the README prints it (issue 31)
against a real `rag serve` with an API key: it lists the key's knowledge
bases and finds the ingestion page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from api_server import accounts, offline_settings, serve

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- mcp-python-client -->\n```python\n(.*?)\n```", text, re.DOTALL)
    assert found, "the README's Python MCP client block is marked <!-- mcp-python-client -->"
    return found[1]


def test_the_readme_mcp_client_runs_against_rag_serve(tmp_path, docs_index):
    script = tmp_path / "client.py"
    script.write_text(readme_snippet(), encoding="utf-8")
    settings = offline_settings(tmp_path, docs_index)
    keys = accounts(settings)
    with serve(settings) as url:
        env = {**os.environ, "KBQA_MCP_URL": url + "/mcp", "KBQA_API_KEY": keys["rex"]}
        run = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
        )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "knowledge bases: ['default']" in run.stdout, run.stdout
    assert "how-ingestion-works.md" in run.stdout, run.stdout
