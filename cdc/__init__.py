"""wal2vec: keep pgvector embeddings in step with PostgreSQL through logical replication."""

__version__ = "0.1.0"
