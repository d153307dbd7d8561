"""Embedding parts built from the configuration: the provider, the tokenizer, the chunk rules.

Every command that embeds (`run`, `resync`, `verify --repair`, `dead-letters retry`, `search`,
`demo`) builds its provider here, with or without metrics to report requests to.
"""

from __future__ import annotations

from collections.abc import Callable

from cdc.config import Settings
from cdc.content import ChunkRule
from cdc.embedding.openai_compat import OpenAIProvider
from cdc.embedding.providers import EmbeddingProvider, RetryPolicy
from cdc.embedding.tokens import Tokenizer
from cdc.metrics import Metrics

# How the streaming path, resync and the repairing commands are given a provider: they build it
# when (and in the thread) they need it, reporting to the metrics they were handed.
ProviderFactory = Callable[[Settings, Metrics | None], EmbeddingProvider]


def make_provider(settings: Settings, metrics: Metrics | None = None) -> EmbeddingProvider:
    """The configured provider; `metrics`, when given, count its requests and throttling."""
    if settings.embedding.provider == "local":
        from cdc.embedding.local import make_local_provider

        return make_local_provider(settings, metrics.record_request if metrics else None)
    embedding = settings.embedding
    return OpenAIProvider(
        model=embedding.model,
        dimensions=embedding.dimensions,
        api_key=embedding.api_key.get_secret_value() if embedding.api_key else None,
        base_url=embedding.base_url,
        max_batch_inputs=embedding.batch_size,
        timeout=embedding.timeout,
        retry=RetryPolicy(max_attempts=embedding.max_attempts),
        on_request=metrics.record_request if metrics else None,
        tokenizer=tokenizer_for(settings),
        concurrency=embedding.concurrency,
        tokens_per_minute=embedding.tokens_per_minute,
        api_version=embedding.api_version,
        send_dimensions=embedding.send_dimensions,
        on_throttle=metrics.embedding_throttled_seconds.inc if metrics else None,
    )


def tokenizer_for(settings: Settings) -> Tokenizer:
    """The tokenizer of the configured model (or of `embedding.tokenizer`)."""
    return Tokenizer.for_model(settings.embedding.model, settings.embedding.tokenizer)


def chunk_rules(settings: Settings, tokenizer: Tokenizer | None = None) -> dict[str, ChunkRule]:
    """Each configured source table's rule; the tokenizer is the embedding model's."""
    embedding = settings.embedding
    tokenizer = tokenizer or tokenizer_for(settings)
    return {
        table.table: ChunkRule(
            tokenizer,
            size=table.chunk_tokens or embedding.max_input_tokens,
            overlap=table.chunk_overlap,
        )
        for table in settings.tables
    }
