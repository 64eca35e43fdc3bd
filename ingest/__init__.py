"""Ingestion: files -> chunks -> vectors -> an index generation.

from ingest import IngestOptions, ingest_paths
from rag import Settings
report = ingest_paths(["docs/"], Settings(index="indexes/default"), IngestOptions(sync=True))
"""

from ingest.pipeline import IngestOptions, IngestReport, ingest_paths

__all__ = ["IngestOptions", "IngestReport", "ingest_paths"]
