"""The command-line entry points: `rag` (search, ask, eval, serve, users,
backups) and `ingest`; each translates argv into calls on the core and the
library.
"""
