"""The local store (the default): a knowledge base as SQLite, FAISS and BM25
files in its index folder, one published generation at a time.
"""
