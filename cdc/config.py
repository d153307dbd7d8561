"""Configuration: one YAML file, every key overridable from `CDC_`-prefixed environment variables.

Loaded once by the CLI and passed down; nothing reads configuration at import time. Every problem
is reported as a `ConfigError` that names the key and says what to do.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdc.content import ContentRule
from cdc.dsn import check_dsn, dsn_password
from cdc.errors import ConfigError

ENV_PREFIX = "CDC_"
ENV_CONFIG_PATH = "CDC_CONFIG"
# pgvector's HNSW index accepts at most this many dimensions per element type.
HNSW_MAX_DIMENSIONS = {"vector": 2000, "halfvec": 4000}
_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
# The most tokens OpenAI's embedding models take in one input.
OPENAI_MAX_INPUT_TOKENS = 8191
# OpenAI's list prices, US dollars per million input tokens: `embedding.price_per_million_tokens`
# for these models unless given.
OPENAI_PRICES = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    dsn: str
    slot: str = "wal2vec"
    publication: str = "wal2vec"
    plugin: Literal["pgoutput", "wal2json"] = "pgoutput"
    # Create the slot as a failover slot (PostgreSQL 17+), synchronised to a physical standby
    # so that it survives the standby's promotion.
    failover: bool = False

    @field_validator("slot")
    @classmethod
    def _slot_name(cls, value: str) -> str:
        if not _SLOT_NAME.match(value):
            raise ValueError("slot names are 1-63 characters of lower-case letters, digits and _")
        return value


class SinkConfig(_Strict):
    dsn: str | None = None
    schema_: str = Field("public", alias="schema")
    table: str = "cdc_embeddings"
    vector_type: Literal["vector", "halfvec"] = "vector"
    # Rows whose last committed state this process remembers, so unchanged rows skip the
    # sink lookup (about 240 bytes each, shared by the snapshot's writers).
    known_rows: int = Field(200_000, ge=0)
    # Sink sessions applying each streamed batch at once, its rows split between them by key
    # (a row always goes to the same one, in order), each committing with a position of its
    # own. More than one pays when the sink's HNSW inserts, one CPU per session, are the limit.
    writers: int = Field(1, ge=1, le=16)


class EmbeddingConfig(_Strict):
    provider: Literal["openai", "local"] = "openai"
    model: str = "text-embedding-3-small"
    dimensions: int = Field(1536, ge=1, le=16000)
    # An OpenAI-compatible endpoint (Azure, vLLM, TEI, Ollama...), or a list of endpoints
    # serving the same model (a fleet): each request goes to the one with the fewest in
    # flight, and one that fails is left out until a probe succeeds. Default: OpenAI's API.
    base_url: str | list[str] | None = None
    api_key: SecretStr | None = None
    batch_size: int = Field(2048, ge=1, le=2048)
    timeout: float = Field(60.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    # The most tokens the model takes in one input; longer content is split into chunks of at
    # most this many tokens. Default: 8191 (OpenAI's embedding models) for provider openai; a
    # local model's own max_seq_length, read with its tokenizer (None until then).
    max_input_tokens: int | None = Field(None, ge=16)
    # tiktoken encoding that counts tokens (provider openai); default: the model's, else
    # cl100k_base. A local model counts with its own tokenizer.
    tokenizer: str | None = None
    # Embedding requests in flight at once on each endpoint (the sink still writes batches in
    # commit order).
    concurrency: int = Field(4, ge=1, le=64)
    # Optional budget shared by all requests (and all endpoints: it is the account's), for
    # accounts with a low tokens-per-minute limit.
    tokens_per_minute: int | None = Field(None, ge=1)
    # Azure OpenAI's classic deployment endpoints: the API version (e.g. 2024-10-21), with
    # base_url the resource (https://NAME.openai.azure.com) and model the deployment name.
    api_version: str | None = None
    # Send `dimensions` with each request (default: only for OpenAI's text-embedding-3 models;
    # servers that do not take it refuse the request).
    send_dimensions: bool | None = None
    # What a million input tokens cost, for `cdc estimate`. Default: OpenAI's list price for
    # its embedding models (US dollars), 0 for provider local, else unknown (None).
    price_per_million_tokens: float | None = Field(None, ge=0)
    # Provider local: where the model runs (auto: a CUDA GPU when torch sees one, else Apple's
    # MPS, else the CPU), and the CPU threads torch computes with (default: the CPUs this
    # process may use, its affinity within any cgroup CPU quota).
    device: Literal["auto", "cpu", "cuda", "mps"] | None = None
    threads: int | None = Field(None, ge=1, le=1024)

    @field_validator("base_url", mode="before")
    @classmethod
    def _url_or_urls(cls, value: Any) -> Any:
        """A URL or a list of them; said plainly, not as each member of the union failing."""
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("give a URL, or a list of URLs of endpoints serving the same model")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"entry [{index}] is a {type(item).__name__}, not a URL")
        return value

    @model_validator(mode="before")
    @classmethod
    def _provider_defaults(cls, data: Any) -> Any:
        """`provider: openai` takes inputs of up to 8191 tokens. `provider: local` alone means
        the packaged all-MiniLM-L6-v2, with its size and a forward pass's worth of inputs; its
        chunks default to the model's own limit (256 word pieces for MiniLM), known once its
        tokenizer is read."""
        if not isinstance(data, dict):
            return data
        if data.get("provider") != "local":
            price = OPENAI_PRICES.get(str(data.get("model", "text-embedding-3-small")))
            # Absent, or null in the file: the defaults.
            return {
                **data,
                "max_input_tokens": _given(data, "max_input_tokens", OPENAI_MAX_INPUT_TOKENS),
                "price_per_million_tokens": _given(data, "price_per_million_tokens", price),
            }
        defaults: dict[str, Any] = {
            "batch_size": 32,
            "price_per_million_tokens": 0.0,
            "device": "auto",
        }
        if "model" not in data:
            defaults.update(model="all-MiniLM-L6-v2", dimensions=384)
        return {**defaults, **data}

    @model_validator(mode="after")
    def _tokenizer_is_tiktokens(self) -> EmbeddingConfig:
        if self.provider == "local" and self.tokenizer is not None:
            raise ValueError(
                "tokenizer names a tiktoken encoding, for provider openai; a local model counts "
                "with its own tokenizer: remove embedding.tokenizer"
            )
        return self

    @model_validator(mode="after")
    def _hardware_is_local(self) -> EmbeddingConfig:
        given = [key for key in ("device", "threads") if getattr(self, key) is not None]
        if self.provider != "local" and given:
            names = " and ".join(f"embedding.{key}" for key in given)
            raise ValueError(
                f"{names}: where and how a model runs is set for provider local; an "
                "endpoint (provider openai) chooses its own hardware: remove them"
            )
        return self


def _given(data: dict[str, Any], key: str, default: Any) -> Any:
    """`data[key]` unless absent or null."""
    value = data.get(key)
    return default if value is None else value


class TableConfig(_Strict):
    table: str
    # The content: `columns` joined by a blank line, or a `template` over columns (one of two).
    columns: list[str] = []
    template: str | None = None
    metadata: list[str] = []
    target: str | None = None
    # Chunk size in tokens (default: embedding.max_input_tokens) and tokens shared by
    # consecutive chunks, so a sentence cut at a boundary is still whole in one of them.
    chunk_tokens: int | None = Field(None, ge=16)
    chunk_overlap: int = Field(0, ge=0)
    # The longest a change of this table may wait in the buffer, in seconds (default:
    # buffer.max_age): short for courses or profiles, long for comments that may batch.
    max_latency: float | None = Field(None, gt=0)
    _content: ContentRule = PrivateAttr()

    @model_validator(mode="after")
    def _one_content_rule(self) -> TableConfig:
        if bool(self.columns) == (self.template is not None):
            raise ValueError(
                f"{self.table}: set exactly one of columns (a list of columns) or template "
                '(a format string such as "Title: {title}\\n\\n{body}")'
            )
        try:
            self._content = (
                ContentRule.from_template(self.template)
                if self.template is not None
                else ContentRule.joined(self.columns)
            )
        except ValueError as error:
            raise ValueError(f"{self.table}: {error}") from None
        return self

    @property
    def content(self) -> ContentRule:
        """How a row of this table becomes text (see `ContentRule`)."""
        return self._content

    @property
    def content_columns(self) -> tuple[str, ...]:
        """The columns the content is made of, each once: what gets published and fetched."""
        return self._content.columns

    @field_validator("table")
    @classmethod
    def _qualified(cls, value: str) -> str:
        schema, _, name = value.partition(".")
        if not name:
            return f"public.{value}"
        if not schema:
            raise ValueError("write the table as schema.table, e.g. public.articles")
        return value

    @property
    def schema_name(self) -> str:
        return self.table.partition(".")[0]

    @property
    def table_name(self) -> str:
        return self.table.partition(".")[2]


class BufferConfig(_Strict):
    max_rows: int = Field(20000, ge=1)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # The longest a change waits for company before it is flushed, in seconds.
    max_age: float = Field(0.05, ge=0)
    # Once the stream is quiet (everything the server sent is read, the last transaction
    # complete), the seconds a change still waits for a burst's next transaction before it is
    # flushed, however long max_age is; null: wait max_age (`cdc.pipeline.quiet`).
    idle_flush: float | None = Field(0.002, ge=0)


class SnapshotConfig(_Strict):
    # Rows read and applied per step of the initial snapshot and of `cdc resync`.
    batch_rows: int = Field(2000, ge=1, le=100_000)
    # Batches embedded and written at once by a snapshot, each on its own sink connection:
    # pays when the embedding service, not this machine, is the bottleneck.
    workers: int = Field(2, ge=1, le=32)
    # Rows per watermarked chunk of a per-table resync that runs beside the stream.
    chunk_rows: int = Field(1000, ge=1, le=100_000)
    # maintenance_work_mem for building an HNSW index after a bulk load.
    index_build_memory: str = "1GB"
    # Seconds between checks for a resync requested while `cdc run` runs.
    poll_interval: float = Field(1.0, gt=0)


class MetricsConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    # Seconds between polls of the slot's state on the server (cdc.pipeline.monitor).
    poll_interval: float = Field(10.0, gt=0)


class LeaderConfig(_Strict):
    """Active/standby: instances of one configuration elect a leader (replication.leadership)."""

    # Off only where a session-level advisory lock cannot be held (a transaction-pooling
    # PgBouncer between wal2vec and the source); then run exactly one instance.
    election: bool = True
    # How long a leader that stopped answering (frozen, cut off) keeps the lead: the source
    # ends its lock session after this many idle seconds (idle_session_timeout).
    lease: float = Field(10.0, ge=2, le=600)
    # Seconds between a standby's attempts to take the lead.
    retry_interval: float = Field(1.0, gt=0, le=60)


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    """The whole configuration, validated."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    source: SourceConfig
    sink: SinkConfig = SinkConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    tables: list[TableConfig] = Field(min_length=1)
    buffer: BufferConfig = BufferConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    metrics: MetricsConfig = MetricsConfig()
    leader: LeaderConfig = LeaderConfig()
    log: LogConfig = LogConfig()
    # Seconds from SIGTERM/SIGINT to exit, whatever is buffered: below Kubernetes' default
    # 30 s grace period, so the pod is never SIGKILLed mid-write.
    shutdown_timeout: float = Field(25.0, gt=0, le=3600)

    @property
    def sink_dsn(self) -> str:
        return self.sink.dsn or self.source.dsn

    def target_of(self, table: TableConfig) -> tuple[str, str]:
        """The (schema, table) of the sink table that holds `table`'s vectors."""
        target = table.target or self.sink.table
        schema, _, name = target.partition(".")
        return (schema, name) if name else (self.sink.schema_, target)

    def sink_tables(self) -> list[tuple[str, str]]:
        """Every distinct sink table, in configuration order."""
        return list(dict.fromkeys(self.target_of(t) for t in self.tables))


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file, apply `CDC_` environment overrides, validate; `ConfigError` names the key."""
    env = os.environ if environ is None else environ
    path = path or env.get(ENV_CONFIG_PATH)
    if not path:
        raise ConfigError("no configuration: pass --config PATH or set CDC_CONFIG")
    data = _read_yaml(Path(path))
    _deep_merge(data, _env_overrides(env))
    return settings_from(data, str(path))


def settings_from(data: Mapping[str, Any], origin: str = "the configuration") -> Settings:
    """Validated settings from a mapping shaped like the file (what `cdc demo` builds);
    `ConfigError` names the key and `origin`."""
    try:
        # Validation only: no environment is read here, the caller merged what it wanted.
        settings = Settings.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, origin)) from None
    _check_consistency(settings)
    return settings


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """`CDC_SOURCE__DSN=x` -> {"source": {"dsn": "x"}}; lists and mappings are given as JSON."""
    overrides: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_PATH:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if not _is_known_path(Settings, path):
            raise ConfigError(
                f"unknown configuration key in environment variable {name}: "
                f"{'.'.join(path)} is not a wal2vec setting"
            )
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _env_value(name, value)
    return overrides


def _env_value(name: str, value: str) -> Any:
    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{name} looks like JSON but is not valid: {error}") from None
    return value


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys: source, sink, embedding, tables")
    return data


def _is_known_path(model: type[BaseModel], path: list[str]) -> bool:
    if not path:
        return True
    fields = {(f.alias or n).lower(): f for n, f in model.model_fields.items()}
    field = fields.get(path[0])
    if field is None:
        return False
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _is_known_path(annotation, path[1:])
    # Lists (tables) are overridden as a whole JSON value; leaves end the path.
    return len(path) == 1


def _describe(error: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; remove it or check its spelling")
        elif item["type"] == "missing":
            lines.append(f"  {key}: required; add it")
        elif item["type"] == "value_error":
            lines.append(f"  {key}: {item.get('ctx', {}).get('error', item['msg'])}")
        else:
            lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def _check_consistency(settings: Settings) -> None:
    check_dsn("source.dsn", settings.source.dsn)
    check_dsn("sink.dsn", settings.sink.dsn)
    _check_endpoints(settings.embedding.base_url)
    limit = HNSW_MAX_DIMENSIONS[settings.sink.vector_type]
    if settings.embedding.dimensions > limit:
        raise ConfigError(
            f"embedding.dimensions is {settings.embedding.dimensions}, but an HNSW index on "
            f"{settings.sink.vector_type} holds at most {limit}: lower the dimensions or set "
            "sink.vector_type: halfvec (up to 4000)"
        )
    seen: set[str] = set()
    for index, table in enumerate(settings.tables):
        if table.table in seen:
            raise ConfigError(f"tables.{index}.table: {table.table} is configured twice")
        seen.add(table.table)
        if len(set(table.columns)) != len(table.columns):  # a template may repeat a column
            raise ConfigError(f"tables.{index}.columns: a column is listed twice")
        _check_chunking(settings.embedding, table, index)


def _check_endpoints(base_url: str | list[str] | None) -> None:
    """A list of endpoints: each an http(s) URL with a host, none twice. (A single URL is
    taken as given, as it always was.) Messages never quote a URL: it may hold a password."""
    if not isinstance(base_url, list):
        return
    if not base_url:
        raise ConfigError(
            "embedding.base_url is an empty list: name at least one endpoint, or leave it "
            "out for OpenAI's API"
        )
    seen: dict[str, int] = {}
    for index, url in enumerate(base_url):
        key = f"embedding.base_url[{index}]"
        if not _is_http_url(url):
            raise ConfigError(
                f"{key} is not an http:// or https:// URL with a host, e.g. http://vllm-1:8000/v1"
            )
        normal = url.rstrip("/")
        if normal in seen:
            raise ConfigError(
                f"{key} repeats embedding.base_url[{seen[normal]}]: list each endpoint once"
            )
        seen[normal] = index


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number, or out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_chunking(embedding: EmbeddingConfig, table: TableConfig, index: int) -> None:
    """What can be checked before the model's tokenizer is read (a local model's limit is
    checked then, by `cdc.embedding.factory.chunk_size`)."""
    size = table.chunk_tokens or embedding.max_input_tokens
    if size is None:
        return
    if embedding.max_input_tokens is not None and size > embedding.max_input_tokens:
        raise ConfigError(
            f"tables.{index}.chunk_tokens is {size}, but the model takes at most "
            f"embedding.max_input_tokens = {embedding.max_input_tokens} tokens per input: "
            "lower chunk_tokens"
        )
    if table.chunk_overlap > size // 2:
        raise ConfigError(
            f"tables.{index}.chunk_overlap is {table.chunk_overlap} tokens, more than half of "
            f"the chunk size ({size}): lower it (chunks would mostly repeat each other)"
        )


# Environment variables whose values are secrets, wherever they would show.
SECRET_VARIABLES = ("PGPASSWORD", "OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")


def known_secrets(settings: Settings | None, environ: Mapping[str, str]) -> list[str]:
    """Every secret value this process may hold: the configured passwords and API key, and
    the environment's (also before the configuration loaded, when `settings` is None)."""
    values = [environ.get(name) for name in SECRET_VARIABLES]
    values.append(environ.get(f"{ENV_PREFIX}EMBEDDING__API_KEY"))
    values += [dsn_password(environ.get(f"{ENV_PREFIX}{k}__DSN")) for k in ("SOURCE", "SINK")]
    if settings is not None:
        values += [dsn_password(settings.source.dsn), dsn_password(settings.sink.dsn)]
        key = settings.embedding.api_key
        values.append(key.get_secret_value() if key is not None else None)
        values += [_url_password(url) for url in _endpoint_urls(settings.embedding.base_url)]
    return [value for value in values if value]


def _endpoint_urls(base_url: str | list[str] | None) -> list[str]:
    if base_url is None:
        return []
    return [base_url] if isinstance(base_url, str) else list(base_url)


def _url_password(url: str) -> str | None:
    """The password of an endpoint URL's user part (http://user:PASSWORD@host/...)."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None
