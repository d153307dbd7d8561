"""Operator commands apart from the streaming path: status, verify, dead letters, search, demo."""
