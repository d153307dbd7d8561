"""The compiled hot path (setup.py, cdc.hotpath) and its pure-Python fallback run the same tests.

The build compiles `cdc.hotpath.HOT_MODULES` with mypyc, in place beside their sources. Here:
the unit tests of those modules pass again on a copy of the sources without any extension (the
fallback a `WAL2VEC_PURE_PYTHON=1` build or a failed compile installs); when this checkout was
compiled, every hot module really is an extension, and none is older than its source (an
extension wins at import, so a stale one would run old code). WAL2VEC_REQUIRE_COMPILED=1 (as on
CI, where it also makes the build fail instead of going pure) requires the compiled build.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cdc
from cdc.hotpath import HOT_MODULES, compiled_modules

REPO = Path(__file__).resolve().parents[2]
RUNTIME_LIBRARY = "wal2vec__mypyc"  # setup.py's group_name
# The unit tests that exercise the hot modules (decoders, assembly, buffer, positions).
HOT_TESTS = (
    "test_pgoutput.py",
    "test_transactions.py",
    "test_buffer.py",
    "test_slices.py",
    "test_watermarks.py",
    "test_wal2json.py",
    "test_frames.py",
    "test_positions.py",
)


def built_compiled() -> bool:
    """Whether the build of the `cdc` imported here compiled anything: the shared runtime
    library sits beside the package (in place for an editable install, in site-packages for
    a wheel). One found elsewhere on the path belongs to another checkout."""
    spec = importlib.util.find_spec(RUNTIME_LIBRARY)
    if spec is None or spec.origin is None:
        return False
    return Path(spec.origin).parent == Path(cdc.__file__).resolve().parent.parent


def pure_copy(destination: Path) -> Path:
    """The sources, tests and pytest settings, without any compiled extension or cache."""
    skip = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__")
    for name in ("cdc", "tests"):
        shutil.copytree(REPO / name, destination / name, ignore=skip)
    shutil.copy2(REPO / "pyproject.toml", destination / "pyproject.toml")
    return destination


def run_in(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDC_", "PYTEST_"))}
    env["PYTHONPATH"] = str(root)
    return subprocess.run(
        [sys.executable, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_pure_python_fallback_passes_the_hot_modules_tests(tmp_path: Path) -> None:
    root = pure_copy(tmp_path / "pure")
    probe = run_in(
        root, "-c", "import json, cdc.hotpath as h; print(json.dumps(h.compiled_modules()))"
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == dict.fromkeys(HOT_MODULES, False)
    tests = [f"tests/unit/{name}" for name in HOT_TESTS]
    result = run_in(
        root,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={tmp_path / 'bt'}",
        *tests,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


def test_a_compiled_build_compiled_every_hot_module() -> None:
    if not built_compiled():
        if os.environ.get("WAL2VEC_REQUIRE_COMPILED") == "1":
            pytest.fail("WAL2VEC_REQUIRE_COMPILED=1, but the hot path was built as pure Python")
        pytest.skip("this checkout was built as pure Python (no mypyc runtime library)")
    assert compiled_modules() == dict.fromkeys(HOT_MODULES, True)


def test_no_compiled_module_is_older_than_its_source() -> None:
    stale = []
    for name in HOT_MODULES:
        module = importlib.import_module(name)
        source = REPO / (name.replace(".", "/") + ".py")
        path = Path(module.__file__ or "")
        if path.suffix != ".py" and path.stat().st_mtime < source.stat().st_mtime:
            stale.append(name)
    assert not stale, (
        f"{stale}: the source changed after the build; rebuild (`pip install -e .`, or "
        "`python setup.py build_ext --inplace`) or build pure Python (WAL2VEC_PURE_PYTHON=1)"
    )
