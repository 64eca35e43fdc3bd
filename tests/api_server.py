"""`rag serve` for tests: the API app under uvicorn on a free port, the
sample knowledge base as `default` and `secret`, and three accounts with
their keys (used by test_api.py and the /mcp tests in test_mcp.py)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import uvicorn

from api import create_app
from rag.settings import Settings
from serving.launch import free_port
from team.access import Role
from team.appdb import open_app_db

QUESTION = "How are broken files reported during ingestion?"
PASSWORD = "correct horse battery"


@dataclass
class Server:
    url: str
    settings: Settings
    keys: dict[str, str]  # user name -> API key

    def client(self, user: str | None = None, key: str | None = None) -> openai.OpenAI:
        key = key or (self.keys[user] if user else "EMPTY")
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=300)

    def http(self, user: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[user]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=300)


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def indexes(tmp: Path, docs_index: Path) -> Path:
    """The sample knowledge base as `default`, and a copy as `secret`."""
    root = tmp / "indexes"
    shutil.copytree(docs_index, root / "default")
    shutil.copytree(docs_index, root / "secret")
    return root


def accounts(settings: Settings) -> dict[str, str]:
    """An admin (ada), an editor of `default` (eve), a reader of `default` (rex)."""
    db = open_app_db(settings)
    db.accounts.add_user("ada", Role.ADMIN, PASSWORD, by="test")
    db.accounts.add_user("eve", Role.EDITOR, PASSWORD, ["default"], by="test")
    db.accounts.add_user("rex", Role.READER, PASSWORD, ["default"], by="test")
    return {name: db.keys.create(name, by="test")[1] for name in ("ada", "eve", "rex")}


def offline_settings(tmp: Path, docs_index: Path) -> Settings:
    """Settings for a server that never asks an LLM (no LLM at this URL)."""
    return Settings(
        indexes_root=indexes(tmp, docs_index),
        auth="local",
        app_db=str(tmp / "app.sqlite"),
        llm_url=f"http://127.0.0.1:{free_port()}/v1",
        llm_retries=0,
    )
