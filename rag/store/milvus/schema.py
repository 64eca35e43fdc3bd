"""What `rag.store.milvus.store` keeps in Milvus: the URI forms, the three
collections of a knowledge base, the record that names its published state,
and `Reader`, the queries of one generation that its snapshot and writer share.

Per knowledge base (`PREFIX`: the URI's `?collection=` prefix, `kbqa` unless
it names another, then `_` and the base's identity from its store.json;
a base recorded before identities existed has the URI's prefix alone):
  PREFIX_meta           one row per published generation (the commit record)
  PREFIX_chunks_EPOCH   chunk rows: vector, text, analysed BM25 terms, ...
  PREFIX_docs_EPOCH     document rows (a 2-dim dummy vector: Milvus wants one)
EPOCH is the generation whose rebuild created the pair; an incremental
ingest adds to the current pair. Chunk rows also carry their document's
kind, mtime and tags, so that a scoped search filters inside Milvus
(`filter_expression`). `SCHEMA_VERSION` names the collections' shape; the meta record
keeps it, and a pair of another shape is rebuilt, not extended. Every chunk and document row carries
`gen_from`/`gen_to`: it belongs to generation G when gen_from <= G < gen_to.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pymilvus import DataType, Function, FunctionType, MilvusClient
from pymilvus.exceptions import MilvusException

from rag import lexical
from rag.errors import IndexBusy, IndexCorrupt, IndexIncompatible, RagError
from rag.filters import MAX_TAGS, Filters
from rag.layout import IndexParams
from rag.store.milvus import lite_files

ALIVE = 2**62  # gen_to of a row no generation has removed yet
DUMMY = [1.0, 0.0]  # the vector of a document or meta row
TEXT_BYTES = 65535  # Milvus's VARCHAR limit
PAGE_SIZE = 4096  # rows per query (a cluster refuses more than 16384)
CHUNK_FIELDS = ["id", "text", "path", "start", "end", "page", "title", "ordinal"]
DOC_FIELDS = ["id", "path", "content_hash", "kind", "title", "size", "mtime", "pages",
              "ingested_at", "chunks", "ocr", "gen_from"]  # fmt: skip
# The collection pair's schema, recorded in each Meta. 1: the first shape;
# 2: chunk rows carry their document's kind, mtime and tags (scoped search)
# and a table passage's `locator` (sheet or table and rows); document rows
# carry tags. A schema-1 pair is refused for search and writes (rebuild it).
SCHEMA_VERSION = 2
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,100}$")


@dataclass(frozen=True)
class Target:
    """Where a knowledge base lives in Milvus."""

    uri: str  # as recorded and shown: no credentials
    client_uri: str  # what MilvusClient is given
    prefix: str  # the URI's; a base's own collections add its identity (`base_prefix`)
    lite_path: Path | None  # Milvus Lite's data folder, None for a cluster
    tls: bool = False  # a cluster reached over TLS (milvus+tls:// or https://)

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.client_uri).hostname or ""


# A cluster's URI schemes: (reached over TLS, default port).
CLUSTER_SCHEMES = {"milvus": (False, 19530), "milvus+tls": (True, 19530), "https": (True, 443)}


def parse_uri(uri: str) -> Target:
    """`milvus-lite:///abs/path/file.db`, or a cluster: `milvus://host:19530`
    (plain text), `milvus+tls://host:19530` or `https://host` (TLS); each
    with an optional `?collection=PREFIX`."""
    parts = urllib.parse.urlsplit(uri)
    query = urllib.parse.parse_qs(parts.query)
    prefix = query.get("collection", ["kbqa"])[0]
    if not _NAME.match(prefix):
        raise RagError(f"Bad collection prefix {prefix!r} in {uri!r}: letters, digits and _.")
    suffix = "" if prefix == "kbqa" else f"?collection={prefix}"
    if parts.scheme == "milvus-lite":
        path = Path(urllib.parse.unquote(parts.path))
        if parts.netloc or not path.is_absolute() or path.suffix != ".db":
            raise RagError(
                f"A Milvus Lite URI is milvus-lite:///absolute/path/file.db, not {uri!r}."
            )
        return Target(f"milvus-lite://{path}{suffix}", str(path), prefix, path)
    if parts.scheme in CLUSTER_SCHEMES and parts.hostname:
        if parts.username or parts.password:
            raise RagError("Put the Milvus token in RAG_MILVUS_TOKEN, not in the URI.")
        tls, port = CLUSTER_SCHEMES[parts.scheme]
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        address = f"{host}:{parts.port or port}"
        client = f"{'https' if tls else 'http'}://{address}"
        return Target(f"{parts.scheme}://{address}{suffix}", client, prefix, None, tls)
    raise RagError(
        f"Unknown Milvus URI {uri!r}: use milvus-lite:///path/file.db, milvus+tls://host:port "
        "(or https://host:port) or milvus://host:port."
    )


def base_prefix(target: Target, identity: str | None) -> str:
    """The prefix of a knowledge base's collections: its own, from its
    identity; the URI's alone for a base recorded before identities."""
    return f"{target.prefix}_{identity}" if identity else target.prefix


def own_collection(name: str, prefix: str) -> bool:
    """Whether `name` is one of the collections of the base with `prefix`."""
    return re.fullmatch(rf"{prefix}_(meta|chunks_\d+|docs_\d+)", name) is not None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(target: Target, token: str | None, insecure: bool) -> None:
    """Refuse to send a token in plain text to another machine: a cluster
    with a token is reached over TLS, or on loopback, or with
    RAG_MILVUS_INSECURE=1 (a network the operator trusts)."""
    if not token or target.lite_path is not None or target.tls or insecure:
        return
    if _loopback(target.host):
        return
    tls_uri = target.uri.replace("milvus://", "milvus+tls://", 1)
    raise RagError(
        f"Refusing to send RAG_MILVUS_TOKEN in plain text to {target.uri}: use {tls_uri} "
        "(or https://), or set RAG_MILVUS_INSECURE=1 on a network you trust."
    )


def connect(target: Target, token: str | None, insecure: bool = False) -> MilvusClient:
    """A client, with the errors a user meets turned into messages."""
    lite = target.lite_path
    check_transport(target, token, insecure)
    try:
        if lite is None:
            return MilvusClient(target.client_uri, token=token or "", timeout=30)
        lite.parent.mkdir(parents=True, exist_ok=True)
        lite_files.mend(lite)
        lite_files.quiet_about_the_lock()
        return MilvusClient(target.client_uri)
    except MilvusException as exc:
        if lite is None:
            raise RagError(f"Milvus at {target.uri} is unreachable ({exc.message}).") from exc
        if lite_files.locked(lite):
            raise IndexBusy(
                f"Milvus Lite could not open {lite}: another process has it open, and "
                "Milvus Lite allows one process per file. Stop the app or the ingest using "
                f"{lite}, then try again."
            ) from exc
        raise RagError(f"Milvus Lite could not open {lite} ({exc.message}).") from exc


def release(target: Target) -> None:
    """Stop this process's Milvus Lite server, so another process can open the file."""
    if target.lite_path is not None:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(target.client_uri)


@dataclass(frozen=True)
class Meta:
    """The commit record of one published generation."""

    generation: int
    epoch: int  # names the collection pair
    next_id: int  # ids below it are taken (chunks and documents share them)
    documents: int
    chunks: int
    params: IndexParams
    created_at: float
    updated_at: float
    schema: int = 1  # SCHEMA_VERSION of the pair; records written before it had none

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def check_schema(self, root: Path, uri: str) -> None:
        """Refuse to read or extend a pair of another shape than this code's."""
        if self.schema != SCHEMA_VERSION:
            raise IndexIncompatible(
                f"The knowledge base at {root} (in {uri}) has Milvus schema version "
                f"{self.schema}; this version of kbqa reads version {SCHEMA_VERSION}. "
                f"Rebuild it: ingest DOCS --index {root} --rebuild"
            )

    @classmethod
    def from_json(cls, text: str) -> Meta:
        try:
            raw = json.loads(text)
            raw["params"] = IndexParams(**raw["params"])
            return cls(**raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexCorrupt(f"A Milvus meta record is unreadable ({exc}).") from exc


def names(prefix: str, epoch: int) -> tuple[str, str]:
    return f"{prefix}_chunks_{epoch}", f"{prefix}_docs_{epoch}"


def visible(generation: int) -> str:
    return f"gen_from <= {generation} and gen_to > {generation}"


def path_key(path: str) -> str:
    """Paths are filtered by their digest: no document text ever enters a filter expression."""
    return hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()


def literal(text: str) -> str:
    """`text` as a filter string literal (escapes both Lite and a cluster read)."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(escapes.get(ch, ch) for ch in text) + '"'


def id_list(ids: list[int]) -> str:
    return "[" + ",".join(str(int(i)) for i in ids) + "]"


def filter_expression(filters: Filters) -> str:
    """`filters` as a filter expression over chunk rows (schema 2). A path
    prefix holding a backslash has no LIKE pattern Milvus Lite reads: the
    caller matches such prefixes by document id instead."""
    parts = []
    if filters.path_prefix:
        escaped = "".join("\\" + ch if ch in "%_" else ch for ch in filters.path_prefix)
        parts.append(f"path like {literal(escaped + '%')}")
    if filters.types:
        parts.append(f"kind in [{','.join(literal(t) for t in filters.types)}]")
    if filters.tags:
        parts.append(f"array_contains_any(tags, [{','.join(literal(t) for t in filters.tags)}])")
    if filters.after is not None:
        parts.append(f"mtime >= {float(filters.after)!r}")
    if filters.before is not None:
        parts.append(f"mtime < {float(filters.before)!r}")
    return " and ".join(parts)


def query_all(
    client: MilvusClient, name: str, where: str, fields: list[str], upper: int | None
) -> list[dict[str, Any]]:
    """Every row matching `where`. A cluster caps the rows of one query, so
    there it asks window by window of ids below `upper`; Milvus Lite (None)
    scans every row per query, so there it asks once."""
    if upper is None:
        return list(client.query(name, filter=where, output_fields=fields))
    rows: list[dict[str, Any]] = []
    for low in range(0, upper, PAGE_SIZE):
        window = f"id >= {low} and id < {low + PAGE_SIZE} and ({where})"
        rows.extend(client.query(name, filter=window, output_fields=fields, limit=PAGE_SIZE))
    return rows


def count(client: MilvusClient, name: str, where: str) -> int:
    return int(client.query(name, filter=where, output_fields=["count(*)"])[0]["count(*)"])


def create_meta(client: MilvusClient, prefix: str) -> None:
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=len(DUMMY))
    schema.add_field("record", DataType.VARCHAR, max_length=TEXT_BYTES)
    _create(client, f"{prefix}_meta", schema, bm25=False)


def create_pair(client: MilvusClient, prefix: str, epoch: int, dimension: int) -> None:
    """The chunk and document collections of a new epoch."""
    chunks_name, docs_name = names(prefix, epoch)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
    # The terms our analyser made (rag.lexical), space-separated: Milvus's
    # "standard" tokenizer (\w+, lower-case) splits them back unchanged, so
    # both BM25 paths see the same terms.
    schema.add_field("terms", DataType.VARCHAR, max_length=TEXT_BYTES, enable_analyzer=True,
                     analyzer_params={"tokenizer": "standard"})  # fmt: skip
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    for name in ("text", "path", "title"):
        schema.add_field(name, DataType.VARCHAR, max_length=TEXT_BYTES)
    schema.add_field("path_key", DataType.VARCHAR, max_length=64)
    for name in ("doc_id", "page", "start", "end", "ordinal", "gen_from", "gen_to"):
        schema.add_field(name, DataType.INT64)
    # The document's, on each chunk, for scoped search (schema 2).
    schema.add_field("kind", DataType.VARCHAR, max_length=64)
    schema.add_field("mtime", DataType.DOUBLE)
    _add_tags(schema)
    schema.add_field("locator", DataType.VARCHAR, max_length=TEXT_BYTES)  # schema 2
    bm25 = Function(
        name="bm25", function_type=FunctionType.BM25,
        input_field_names=["terms"], output_field_names=["sparse"],
    )  # fmt: skip
    schema.add_function(bm25)
    _create(client, chunks_name, schema, bm25=True)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=len(DUMMY))
    for name in ("path", "content_hash", "kind", "title"):
        schema.add_field(name, DataType.VARCHAR, max_length=TEXT_BYTES)
    schema.add_field("path_key", DataType.VARCHAR, max_length=64)
    for name in ("size", "pages", "chunks", "gen_from", "gen_to"):
        schema.add_field(name, DataType.INT64)
    for name in ("mtime", "ingested_at"):
        schema.add_field(name, DataType.DOUBLE)
    schema.add_field("ocr", DataType.BOOL)
    _add_tags(schema)  # schema 2
    _create(client, docs_name, schema, bm25=False)


def _add_tags(schema: Any) -> None:
    schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR,
                     max_capacity=MAX_TAGS, max_length=64)  # fmt: skip


# A new collection's indexes are empty: built at once on a live server.
INDEX_BUILD_SECONDS = 120


def _create(client: MilvusClient, name: str, schema: Any, bm25: bool) -> None:
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    if bm25:
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                        params={"bm25_k1": lexical.K1, "bm25_b": lexical.B})  # fmt: skip
    # Created, indexed and loaded in steps: given the indexes, pymilvus
    # sleeps 0.5 s before it first asks whether each is built, and the
    # indexes of a new, empty collection are built at once (a new base
    # creates four: 2 s of sleep). Loaded once they are, as before.
    client.create_collection(name, schema=schema, consistency_level="Strong")
    client.create_index(name, index, sync=False)
    for param in index:  # each named after its field
        _wait_built(client, name, param.field_name)
    client.load_collection(name)


def _wait_built(client: MilvusClient, name: str, field: str) -> None:
    """Until the index of `field` (named after it) is built; a server that
    reports no state is taken at its word that the index exists."""
    pause, deadline = 0.01, time.monotonic() + INDEX_BUILD_SECONDS
    while (state := client.describe_index(name, field).get("state")) not in ("Finished", None):
        if state == "Failed" or time.monotonic() > deadline:
            raise MilvusException(
                message=f"building the index of {name}.{field} "
                + ("failed" if state == "Failed" else f"took over {INDEX_BUILD_SECONDS} s")
            )
        time.sleep(pause)
        pause = min(2 * pause, 0.5)
