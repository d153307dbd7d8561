"""Embedding providers (OpenAI-compatible, local), their answers, token counting and rate limits."""
