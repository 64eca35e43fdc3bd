"""The app reaches knowledge bases through the one core service
(core/service.py), as the HTTP API and MCP do (issue 32): the same rules,
the same audit trail, the same messages. AppTest on the real page with
RAG_AUTH=local, the real embedding model and FAISS; no LLM (answers off)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from test_app import app
from test_app_access import PASSWORD, log_in

from rag.settings import Settings
from team.appdb import AppDB, open_app_db

ROOT = Path(__file__).resolve().parent.parent
NOTE = b"# Larch Creek pump station\n\nThe Larch Creek pump was installed in 1987."


@pytest.fixture
def admin(app_env: pytest.MonkeyPatch, kb_root: Path, tmp_path: Path) -> AppDB:
    """An admin, ada, and no knowledge base at all yet."""
    from serving.launch import free_port

    shutil.rmtree(kb_root / "default")
    app_env.setenv("RAG_AUTH", "local")
    app_env.setenv("RAG_APP_DB", str(tmp_path / "app.sqlite"))
    app_env.setenv("RAG_LOGIN_BACKOFF", "0.001")
    app_env.setenv("RAG_LLM_URL", f"http://127.0.0.1:{free_port()}/v1")
    db = open_app_db(Settings())
    db.accounts.add_user("ada", "admin", PASSWORD, by="test")
    return db


def changes(db: AppDB, kb: str) -> list[tuple[str, str]]:
    """What the audit trail kept of the changes to `kb`: (user, action),
    the logins left out, sorted (one second may hold several)."""
    return sorted(
        (e.user, e.action) for e in db.audit.entries() if e.target == kb and e.action != "login"
    )


def test_the_first_upload_in_the_app_creates_the_base_as_the_api_does(admin, kb_root):
    from core.service import KnowledgeService
    from team.access import Access, AccessPolicy

    at = log_in(app().run(), "ada")
    at.file_uploader[0].set_value([("larch.md", NOTE, "text/markdown")]).run()
    next(b for b in at.button if b.label == "Ingest").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Added 1" in s.value for s in at.success), [e.value for e in at.error]
    # The API's upload is KnowledgeService.upload: the same call into another base.
    ada = admin.accounts.user("ada")
    assert ada is not None
    svc = KnowledgeService(Settings())
    svc.upload(Access(ada, AccessPolicy(admin)), "other", [("larch.md", lambda: NOTE)])
    assert changes(admin, "other") == [("ada", "create"), ("ada", "upload")]
    assert changes(admin, "default") == changes(admin, "other")


def test_the_app_reaches_knowledge_bases_only_through_the_core_service():
    """No page module calls team.library (list, open, create, upload,
    delete, rebuild, stats) beside the service: each would be a second home
    for a rule."""
    sources = [ROOT / "streamlit_app.py", *sorted((ROOT / "ui").glob("*.py"))]
    bypassing = sorted(
        source.name
        for source in sources
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
        if "team.library" in imported(node)
    )
    assert not bypassing, f"these call team.library directly: {sorted(set(bypassing))}"


def imported(node: ast.AST) -> list[str]:
    """The modules (and `module.name`s) an import statement brings in."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return []
