"""Embedding parts built from the configuration: the provider, the tokenizer, the chunk rules.

Every command that embeds (`run`, `resync`, `verify --repair`, `dead-letters retry`, `search`,
`demo`) builds its provider here, with or without metrics to report requests to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from cdc.config import Settings
from cdc.content import ChunkRule
from cdc.embedding.openai_compat import OpenAIProvider
from cdc.embedding.providers import (
    MAX_BATCH_TOKENS,
    EmbeddingProvider,
    RetryPolicy,
    plan_requests,
)
from cdc.embedding.tokens import Tokenizer
from cdc.errors import ConfigError
from cdc.metrics import Metrics

# How the streaming path, resync and the repairing commands are given a provider: they build it
# when (and in the thread) they need it, reporting to the metrics they were handed.
ProviderFactory = Callable[[Settings, Metrics | None], EmbeddingProvider]
# The `endpoint` label of the local model's requests.
LOCAL_ENDPOINT = "local"


def make_provider(settings: Settings, metrics: Metrics | None = None) -> EmbeddingProvider:
    """The configured provider; `metrics`, when given, count its requests and throttling."""
    if settings.embedding.provider == "local":
        from cdc.embedding.local import make_local_provider

        return make_local_provider(settings, _local_requests(metrics))
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
        on_endpoint=metrics.record_endpoint if metrics else None,
    )


def _local_requests(metrics: Metrics | None) -> Callable[[str, float], None] | None:
    """The local model's batches, counted as requests to an endpoint named `local`."""
    if metrics is None:
        return None
    metrics.record_endpoint(LOCAL_ENDPOINT, True)

    def record(status: str, seconds: float) -> None:
        metrics.record_request(status, seconds, LOCAL_ENDPOINT)

    return record


def request_count(settings: Settings, token_counts: Sequence[int]) -> int:
    """The requests the configured provider makes for one `embed` call of texts with these
    token counts: the OpenAI-compatible provider's request planning (inputs and tokens per
    request), the local model's batches of `embedding.batch_size`."""
    embedding = settings.embedding
    if embedding.provider == "local":
        return math.ceil(len(token_counts) / embedding.batch_size)
    return len(plan_requests(token_counts, embedding.batch_size, MAX_BATCH_TOKENS))


def tokenizer_for(settings: Settings) -> Tokenizer:
    """How the configured model counts tokens: a local model with its own tokenizer, an
    OpenAI-compatible one with tiktoken (the model's encoding, or `embedding.tokenizer`)."""
    embedding = settings.embedding
    if embedding.provider == "local":
        from cdc.embedding.model_tokens import ModelEncoder

        return Tokenizer(ModelEncoder.for_model(embedding.model))
    return Tokenizer.for_model(embedding.model, embedding.tokenizer)


def chunk_rules(settings: Settings, tokenizer: Tokenizer | None = None) -> dict[str, ChunkRule]:
    """Each configured source table's rule; the tokenizer is the embedding model's."""
    tokenizer = tokenizer or tokenizer_for(settings)
    return {
        table.table: ChunkRule(
            tokenizer,
            size=chunk_size(settings, index, tokenizer.limit),
            overlap=table.chunk_overlap,
        )
        for index, table in enumerate(settings.tables)
    }


def chunk_size(settings: Settings, index: int, limit: int | None) -> int:
    """Table `index`'s chunk size: its `chunk_tokens`, else `embedding.max_input_tokens`, else
    the model's `limit`; never over that limit, where the tokenizer knows it (a local model's
    `max_seq_length`: the model would drop the rest of a longer input unread)."""
    table, embedding = settings.tables[index], settings.embedding
    size = table.chunk_tokens or embedding.max_input_tokens or limit
    if size is None:
        raise ConfigError(
            f"embedding.model: the local model {embedding.model!r} does not say how many tokens "
            "it reads (no max_seq_length): set embedding.max_input_tokens"
        )
    key = f"tables.{index}.chunk_tokens" if table.chunk_tokens else "embedding.max_input_tokens"
    if limit is not None and size > limit:
        raise ConfigError(
            f"{key} is {size}, but the model {embedding.model!r} reads at most {limit} tokens "
            f"of an input (its max_seq_length, special tokens included) and drops the rest: "
            f"lower it to {limit} or less (or leave it out)"
        )
    if table.chunk_overlap > size // 2:
        raise ConfigError(
            f"tables.{index}.chunk_overlap is {table.chunk_overlap} tokens, more than half of "
            f"the chunk size ({size}): lower it (chunks would mostly repeat each other)"
        )
    return size
