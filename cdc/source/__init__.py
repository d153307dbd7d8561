"""Reads from the source tables: current rows, the initial snapshot, watermarks, resync."""
