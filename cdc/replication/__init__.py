"""The replication stage: the slot, its frames, the decoder, and committed transactions out."""
