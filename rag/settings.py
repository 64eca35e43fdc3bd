"""One typed settings object, built at the entry point and passed down.

Every field can be set from the environment with the `RAG_` prefix
(`RAG_LLM_URL`, `RAG_INDEX`, ...); CLI flags override the environment.
Nothing here runs at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Effort = Literal["low", "medium", "high"]
SearchMode = Literal["hybrid", "dense", "bm25"]
SEARCH_MODES: tuple[SearchMode, ...] = get_args(SearchMode)
AuthMode = Literal["none", "oidc", "local"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", frozen=True, extra="ignore")

    # Where indexes live; `index` is the one used when none is named.
    indexes_root: Path = Field(
        Path("indexes"), description="the folder of knowledge bases (one folder each)"
    )
    index: Path = Field(
        Path("indexes/default"), description="the index folder used when none is named"
    )
    # Where a new knowledge base keeps its chunks and vectors: "local" (files
    # in the index folder), Milvus Lite in a file or a Milvus cluster. An
    # existing one uses the store its folder records; naming another here is
    # an error (see rag/store/__init__.py open_store).
    store: str = Field(
        "local",
        description="store of new knowledge bases: local (the default), "
        "milvus-lite:///path/file.db, milvus+tls://host:19530 (or https://host) "
        "or milvus://host:19530 (no TLS)",
    )
    # A secret: held in memory, never written to the index folder or shown.
    milvus_token: SecretStr | None = Field(
        None, description="token (or user:password) of a Milvus cluster; never written to disk"
    )
    # Without TLS a token crosses the network readable: refused unless the
    # cluster is on loopback or this says the network is trusted.
    milvus_insecure: bool = Field(
        False, description="send the Milvus token without TLS to a host other than loopback"
    )

    # Ingestion.
    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        description="a sentence-transformers model name (from the local cache) or folder; "
        "never downloaded at run time",
    )
    embed_precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto: float16 on a GPU; bfloat16 on CPUs that compute it natively "
        "(AVX512-BF16, AMX), else float32",
    )
    embed_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where ingestion embeds; auto: the GPU when torch sees one (searches embed "
        "queries on the CPU)",
    )
    # Off by default: on the one GPU run so far the child's scan was fast but
    # the whole ingest was not faster than the background thread (BENCHMARKS.md).
    embed_process: Literal["auto", "on", "off"] = Field(
        "off",
        description="embed in a child process of the ingest, which then never imports torch and "
        "scans and parses at full speed while the model loads; auto: on where ingestion embeds on "
        "a GPU (a device file is there, or RAG_EMBED_DEVICE=cuda), unless the process holds torch "
        "already (the app); off: the model loads in a thread of the ingest",
    )
    chunk_tokens: int = Field(200, ge=16, description="passage size in model tokens")
    chunk_overlap: int = Field(32, ge=0, description="model tokens shared by neighbouring passages")
    max_file_mb: float = Field(
        200.0,
        gt=0,
        description="larger files are refused (uploads too: keep server.maxUploadSize in "
        ".streamlit/config.toml equal)",
    )
    # Checked in the parser process, so a small file that expands to a huge
    # text (a zip bomb) never reaches the app's or the CLI's process.
    max_text_chars: int = Field(
        50_000_000,
        ge=1000,
        description="a file whose extracted text is longer is refused by name (in the parser "
        "process)",
    )
    parse_workers: int = Field(
        0, ge=0, description="parser processes (they split and tokenize too); 0: one per core"
    )
    parse_timeout: float = Field(
        300.0,
        gt=0,
        description="seconds one file (or one range of a long PDF's pages) may take to parse",
    )
    pdf_pages_per_range: int = Field(
        50,
        ge=0,
        description="a PDF with more pages is parsed in ranges of this many pages, in several "
        "parser processes at once; 0: each file in one process",
    )
    # An address-space cap: pdfium alone reserves over 512 MB, so lower caps
    # would fail every PDF.
    parse_memory_mb: int = Field(4096, ge=1024, description="memory cap of a parser process")
    checkpoint_seconds: float = Field(
        120.0, gt=0, description="publish work in progress this often during long ingests"
    )
    lock_timeout: float = Field(
        0.0, ge=0, description="seconds to wait for another ingest's lock (0: fail at once)"
    )

    # Who may use the app (ui/auth.py). none: no login, a single local user,
    # served on a loopback address only (team/exposure.py).
    auth: AuthMode = Field("none", description="none | oidc (st.login) | local (app accounts)")
    auth_groups_claim: str = Field("groups", description="the OIDC claim listing the groups")
    insecure_no_auth: bool = Field(
        False,
        description="serve another address with RAG_AUTH=none all the same "
        "(python -m serving.run --insecure-no-auth sets it)",
    )

    # The app.
    max_upload_files: int = Field(20, ge=1, description="files the app takes in one upload")
    # About 500 tokens: room left for the passages in the smallest context.
    max_question_chars: int = Field(
        2000, ge=100, description="longest question (or search) the app, the API and MCP take"
    )
    # The app's Prometheus metrics (rag/telemetry.py), on loopback only: the
    # port has no login. `rag serve` shows its own at GET /metrics.
    app_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="serve the app's Prometheus metrics at 127.0.0.1:PORT/metrics; 0: off",
    )

    # The HTTP API (rag serve, api/). Each key (or the local user) gets
    # a bucket of `api_burst` requests, refilled at `api_requests_per_minute`.
    api_requests_per_minute: float = Field(
        60.0, gt=0, description="requests one API key may make per minute, on average"
    )
    api_burst: int = Field(20, ge=1, description="requests one API key may make at once")
    api_max_body_kb: int = Field(
        256, ge=16, description="largest JSON request body (uploads: RAG_MAX_FILE_MB per file)"
    )
    api_max_messages: int = Field(64, ge=1, description="most messages in one chat request")
    # The Host names `rag serve` answers to besides the address it listens on
    # (a reverse proxy's name): any other Host is refused, so a DNS-rebound
    # web page cannot reach it (api/guard.py). Comma-separated.
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host names rag serve answers to besides its address, comma-separated "
        "(* answers every name: only behind a proxy that checks Host)",
    )

    @field_validator("api_allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    # The app's own database: users, grants, sessions, conversations, audit.
    # Empty: a SQLite file beside the indexes (<indexes_root>/.app/app.sqlite);
    # or a file path, or a postgresql:// URL shared by several app replicas.
    # A secret: the URL may hold a password.
    app_db: SecretStr = Field(
        SecretStr(""),
        description="the app database: empty for <indexes_root>/.app/app.sqlite, a SQLite "
        "file path or a postgresql://user:pass@host/db URL",
    )
    session_hours: float = Field(12.0, gt=0, description="a local login lasts this long")
    login_backoff: float = Field(
        1.0,
        gt=0,
        description="seconds a name is refused after a failed login (doubles each time)",
    )
    login_backoff_max: float = Field(900.0, gt=0, description="the longest refusal, in seconds")
    # An OIDC login's groups claim (JSON in the environment):
    # RAG_AUTH_GROUP_ROLES='{"kb-admins": "admin", "kb-editors": "editor"}',
    # RAG_AUTH_GROUP_GRANTS='{"finance-team": ["finance"]}'. See team/access.py.
    auth_group_roles: dict[str, Literal["admin", "editor", "reader"]] = Field(
        default_factory=dict,
        description='OIDC group -> role, e.g. {"kb-admins": "admin", "staff": "reader"}',
    )
    auth_group_grants: dict[str, list[str]] = Field(
        default_factory=dict,
        description='OIDC group -> knowledge bases, e.g. {"finance-team": ["finance"]}',
    )
    auth_default_role: Literal["", "editor", "reader"] = Field(
        "", description="role of a user in no mapped group ('': no entry)"
    )

    # Retrieval.
    search_mode: SearchMode = Field(
        "hybrid", description="hybrid (BM25 and dense, fused), dense or bm25 alone"
    )
    fusion: Literal["convex", "rrf"] = Field(
        "convex",
        description="how hybrid search fuses BM25 and dense: a weighted sum of normalized "
        "scores, or reciprocal rank fusion",
    )
    fusion_alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the dense side")
    fusion_depth: int = Field(400, ge=10, description="candidates read from each side")
    dense_precision: Literal["float16", "float32"] = Field(
        "float16", description="vectors searched as a float16 copy (half the memory) or exact"
    )
    k: int = Field(8, ge=1, le=100, description="passages a search returns")

    # The LLM server (any OpenAI-compatible endpoint; vLLM in production).
    llm_url: str = Field(
        "http://127.0.0.1:8000/v1", description="the OpenAI-compatible server's base URL"
    )
    llm_model: str = Field(
        "gpt-oss-20b",
        description="its served model name (rag ask: the one the server serves unless set)",
    )
    # A secret: never printed with the settings, read with .get_secret_value().
    llm_api_key: SecretStr = Field(SecretStr("EMPTY"), description="the LLM server's API key")
    llm_timeout: float = Field(
        120.0, gt=0, description="seconds to wait for the LLM server's next bytes (read timeout)"
    )
    llm_connect_timeout: float = Field(
        5.0, gt=0, description="seconds to connect to the LLM server"
    )
    llm_retries: int = Field(
        1,
        ge=0,
        description="retries of a failed LLM request (timeout, server error, dropped connection)",
    )
    llm_context_tokens: int = Field(
        32768,
        ge=512,
        description="the LLM server's context length (--max-model-len); prompts are fitted to it",
    )

    # Answering.
    screen: bool = Field(True, description="run the fast screen before the deep read")
    screen_k: int = Field(12, ge=1, le=50, description="passages retrieved for the screen")
    screen_effort: Effort = Field("low", description="reasoning effort of the screen")
    screen_max_tokens: int = Field(
        512, ge=16, description="longest verdict of the screen (reasoning included)"
    )
    rewrite_max_tokens: int = Field(
        256, ge=16, description="the follow-up rewrite (one line, plus reasoning on gpt-oss)"
    )
    followup: Literal["rewrite", "join"] = Field(
        "rewrite",
        description="how a follow-up is searched: rewritten by the model into a standalone "
        "question, or joined to the previous question's words by rule (rag/answering/followup.py)",
    )
    screen_group: int = Field(1, ge=1, description="passages judged per screen request")
    keep_max: int = Field(6, ge=1, description="passages kept for the deep read")
    screen_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="weight of the screen's verdict against the retrieval score in what is "
        "kept (1: the verdict alone decides; 0: retrieval alone; the screen is one signal, not "
        "a veto); see rag/answering/screening.py keep",
    )
    keep_min: float = Field(
        0.5, ge=0.0, le=1.0, description="the combined score a passage needs to be kept"
    )
    read_effort: Effort = Field("high", description="reasoning effort of the deep read")
    read_max_tokens: int = Field(
        4096,
        ge=64,
        description="longest answer (reasoning included); capped at half the context",
    )
    answer_style: Literal["generative", "extractive"] = Field(
        "generative",
        description="extractive: the answer only quotes sentences of the kept passages, "
        "each cited (for small models that do not cite, as make run does; "
        "see rag/answering/extractive.py)",
    )
    extract_sentences: int = Field(
        4,
        ge=1,
        le=20,
        description="quotes an extractive answer may offer (sentences, or a table's header "
        "with its matching rows)",
    )
    # The support a quote needs (rag/answering/extractive.py `Candidate.support`: the
    # embedding model's cosine, plus the share of the question's words it
    # holds, less a weight per word of the question the knowledge base lacks
    # that the quote holds no word near, and when the question asks for a
    # kind of thing, such as an amount or a time, that the quote lacks).
    # Below it, nothing is quoted and the answer is "not in the knowledge
    # base". Chosen with bench/answering.py on the tune half of its question
    # set (docs/answering.md).
    extract_min_support: float = Field(
        0.70,
        ge=-1.0,
        le=4.0,
        description="evidence a quote needs (closeness to the question, shared words, "
        "words the base lacks, the kind of thing asked); when no quote reaches it, the "
        "answer is 'not in the knowledge base' (chosen with bench/answering.py calibrate; "
        "docs/answering.md)",
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="sampling temperature")
