"""The sink database: DDL, the transactional writer, the checkpoint and state, read queries."""
