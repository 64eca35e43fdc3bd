"""Ingestion: files -> chunks -> vectors -> an index generation.

from ingest import ingest_paths
from rag import Settings
report = ingest_paths(["docs/"], Settings(index="indexes/default"))
"""

from ingest.pipeline import IngestReport, ingest_paths

__all__ = ["IngestReport", "ingest_paths"]
