"""Counting tokens as a local model reads them: its own tokenizer, its special tokens, its limit.

`embedding.provider: local` cuts content with the tokenizer the model was trained with (its
`tokenizer.json`, read with the `tokenizers` library sentence-transformers brings), not
tiktoken: a model reads at most `max_seq_length` of its tokens (word pieces, for MiniLM) and
silently drops the rest, and tiktoken's count of the same text can be far lower (ASCII tables,
code). Counts include the special tokens the model adds to every input ([CLS] and [SEP] for
BERT-like models), so a chunk of `max_seq_length` tokens is read whole.

Only the tokenizer and two small JSON files are read: no torch, no weights, nothing downloaded.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdc.embedding.local import INSTALL_HINT, go_offline, resolve_model
from cdc.embedding.tokens import Starts
from cdc.errors import ConfigError

# Texts tokenized at once by `ModelEncoder.count`: bounds the encodings held at a time.
COUNT_GROUP = 256
# sentence-transformers' own settings of the module that tokenizes: max_seq_length, do_lower_case.
_ST_CONFIG = "sentence_bert_config.json"
_TRANSFORMER_MODULE = "sentence_transformers.models.Transformer"


class ModelEncoder:
    """An `Encoder` (`cdc.embedding.tokens`) with a model's tokenizer, as sentence-transformers
    feeds it: each input stripped (and lower-cased when the model says so), special tokens
    added, nothing truncated or padded (counting must see what truncation would drop)."""

    def __init__(
        self, tokenizer: Any, *, limit: int | None, lower_case: bool = False, name: str = ""
    ) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.added = int(tokenizer.num_special_tokens_to_add(False))
        self.limit = limit
        self.name = name
        self._lower = lower_case

    @classmethod
    def for_model(cls, model: str) -> ModelEncoder:
        """The encoder of the local model `model` (as `embedding.model` names it)."""
        directory = module_directory(model_directory(model))
        settings = read_json(directory / _ST_CONFIG)
        return cls(
            load_tokenizer(directory, model),
            limit=max_seq_length(directory, settings),
            lower_case=bool(settings.get("do_lower_case", False)),
            name=model,
        )

    def count(self, texts: Sequence[str]) -> list[int]:
        if len(texts) == 1:  # a chunk's window: no batch to spread over threads
            return [len(self._tokenizer.encode(self._prepared(texts[0])))]
        counts: list[int] = []
        for start in range(0, len(texts), COUNT_GROUP):
            group = [self._prepared(text) for text in texts[start : start + COUNT_GROUP]]
            counts += [len(e) for e in self._tokenizer.encode_batch(group)]
        return counts

    def measure(self, text: str, size: int) -> tuple[int, Starts | None]:
        prepared = self._prepared(text)
        encoding = self._tokenizer.encode(prepared)
        count = len(encoding)
        if count <= size:
            return count, None
        if prepared != text:
            # Where tokens start in the text as stored (not stripped or lower-cased): windows
            # are cut there, and each window is counted again as the model reads it.
            encoding = self._tokenizer.encode(text)
        offsets = [
            offset
            for offset, special in zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
            if not special
        ]
        return count, token_starts(offsets, len(text))

    def fits_uncounted(self, text: str, size: int) -> bool:
        # No cheap bound: a tokenizer may add tokens or split a character into several.
        return False

    def ceilings(self, texts: Sequence[str]) -> None:
        return None  # as above

    def _prepared(self, text: str) -> str:
        """The text as sentence-transformers hands it to the tokenizer."""
        text = text.strip()
        return text.lower() if self._lower else text


def token_starts(offsets: Sequence[tuple[int, int]], length: int) -> Starts:
    """`Starts` from a tokenizer's (start, end) character offsets: a token that begins before
    the previous one ends (pieces of one character, byte-level BPE) is no place to cut."""
    starts: Starts = []
    reached = 0
    for begin, end in offsets:
        starts.append(begin if begin >= reached else None)
        reached = max(reached, end)
    starts.append(length)
    return starts


def model_directory(model: str) -> Path:
    """Where the local model `model` lives: its directory, the packaged MiniLM's, or its copy
    in the local Hugging Face cache (never downloaded)."""
    target = resolve_model(model)
    if Path(target).is_dir():
        return Path(target)
    go_offline()
    hub = importlib.import_module("huggingface_hub")
    # sentence-transformers also finds a bare name under the sentence-transformers organisation.
    for repo in (target, f"sentence-transformers/{target}") if "/" not in target else (target,):
        try:
            return Path(hub.snapshot_download(repo, local_files_only=True))
        except Exception:  # huggingface_hub reports a missing cache entry in several ways
            continue
    raise ConfigError(
        f"embedding.model: {model!r} is neither a directory nor in the local Hugging Face "
        "cache; give the model's directory (nothing is downloaded)"
    )


def module_directory(directory: Path) -> Path:
    """The directory of the model's tokenizing module (sentence-transformers' modules.json
    may put it in a subdirectory); the model's own directory otherwise."""
    for module in read_json(directory / "modules.json", default=[]):
        if isinstance(module, dict) and module.get("type") == _TRANSFORMER_MODULE:
            return directory / str(module.get("path") or "")
    return directory


def load_tokenizer(directory: Path, model: str) -> Any:
    """The model's fast tokenizer: its tokenizer.json, else the one transformers converts
    from its vocabulary files."""
    try:
        tokenizers = importlib.import_module("tokenizers")
    except ImportError:
        raise ConfigError(
            f"embedding.provider local counts tokens with the model's tokenizer, which needs "
            f"the tokenizers library: {INSTALL_HINT}"
        ) from None
    path = directory / "tokenizer.json"
    if path.is_file():
        try:
            return tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # a malformed file: the Rust side raises a plain Exception
            raise ConfigError(
                f"embedding.model: cannot read {path} ({str(exc)[:200]}): is {model!r} a "
                "sentence-transformers model directory?"
            ) from None
    return _converted_tokenizer(directory, model)


def _converted_tokenizer(directory: Path, model: str) -> Any:
    go_offline()
    try:
        transformers = importlib.import_module("transformers")
        converted = transformers.AutoTokenizer.from_pretrained(
            str(directory), use_fast=True, local_files_only=True
        )
    except Exception as exc:  # ImportError, OSError, ValueError: the model cannot be counted
        raise ConfigError(
            f"embedding.model: the local model {model!r} has no tokenizer.json and its "
            f"tokenizer cannot be loaded ({type(exc).__name__}: {str(exc)[:200]}); wal2vec "
            "counts tokens with the model's own tokenizer"
        ) from None
    backend = getattr(converted, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"embedding.model: the local model {model!r} has only a slow tokenizer; save it "
            "with a tokenizer.json (tokenizer.save_pretrained) so wal2vec can count its tokens"
        )
    return backend


def max_seq_length(directory: Path, settings: dict[str, Any]) -> int | None:
    """The most tokens the model reads of an input, as sentence-transformers decides it: its
    own setting, else the smaller of the model's positions and the tokenizer's limit."""
    configured = settings.get("max_seq_length")
    if isinstance(configured, int) and configured > 0:
        return configured
    positions = read_json(directory / "config.json").get("max_position_embeddings")
    tokenizer_limit = read_json(directory / "tokenizer_config.json").get("model_max_length")
    known = [v for v in (positions, tokenizer_limit) if isinstance(v, int) and v > 0]
    return min(known) if known else None


def read_json(path: Path, default: Any = None) -> Any:
    """A model file's JSON; `default` (an empty mapping unless given) when there is none."""
    empty = {} if default is None else default
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return empty
    except OSError as error:
        raise ConfigError(f"embedding.model: cannot read {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"embedding.model: {path} is not valid JSON: {error}") from None
    return data if isinstance(data, type(empty)) else empty
