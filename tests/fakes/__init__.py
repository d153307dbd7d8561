"""Test doubles that speak real protocols over loopback: only tests and benchmarks use them."""
