"""Build step beyond pyproject.toml: compile the reader's hot path with mypyc.

The modules listed in `cdc/hotpath.py` (decode -> assemble -> coalesce) become C extensions
that sit beside their .py sources and win at import; everything else stays pure Python.

- `WAL2VEC_PURE_PYTHON=1` builds no extension: the same sources run interpreted.
- If mypyc is missing or the C compile fails, the build goes on pure Python and says so in
  the build log (pip shows it with `-v`), unless `WAL2VEC_REQUIRE_COMPILED=1` makes that an
  error. A half-built set is never installed: the modules share one mypyc runtime library,
  and a module whose extension exists but whose library does not would fail at import.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
PURE_ENV = "WAL2VEC_PURE_PYTHON"
REQUIRE_ENV = "WAL2VEC_REQUIRE_COMPILED"
# mypyc type-checks the whole import graph again at build time, where the project's
# dependencies (pydantic and its mypy plugin among them) are not installed: no config file
# (an empty name),
# unresolved imports as Any, errors only in the compiled modules. `mypy` (strict, with the
# plugin) is what checks the code; this only has to translate it.
MYPY_FLAGS = ["--config-file=", "--ignore-missing-imports", "--follow-imports=silent"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _say(message: str) -> None:
    print(f"wal2vec build: {message}", file=sys.stderr, flush=True)


def _hot_modules() -> list[str]:
    """The list in cdc/hotpath.py, read without importing `cdc` (its deps are absent here)."""
    return list(runpy.run_path(str(HERE / "cdc" / "hotpath.py"))["HOT_MODULES"])


def _give_up(reason: str) -> list[Extension]:
    if _flag(REQUIRE_ENV):
        raise SystemExit(f"wal2vec build: {reason}, and {REQUIRE_ENV} is set")
    _say(f"{reason}; installing the pure-Python hot path (same behaviour, slower)")
    return []


def _extensions() -> list[Extension]:
    if _flag(PURE_ENV):
        _say(f"{PURE_ENV} is set: no extension is built")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return _give_up("mypyc (part of mypy) is not installed")
    # Relative paths: mypyc names the modules after them, and setup() runs in this directory.
    os.chdir(HERE)
    paths = [module.replace(".", "/") + ".py" for module in _hot_modules()]
    _say(f"compiling {len(paths)} modules with mypyc ({PURE_ENV}=1 builds none)")
    try:
        # group_name: one shared runtime library, wal2vec__mypyc, instead of a hashed name.
        return list(mypycify([*MYPY_FLAGS, *paths], opt_level="3", group_name="wal2vec"))
    except (Exception, SystemExit) as error:  # mypyc exits on a type error
        return _give_up(f"mypyc could not translate the hot path ({error!r})")


class OptionalBuildExt(build_ext):
    """build_ext that installs either every compiled module or none of them."""

    def build_extensions(self) -> None:
        try:
            super().build_extensions()
        except Exception as error:  # CompileError, LinkError, a missing compiler...
            self._discard_built()
            _give_up(f"compiling the hot path failed ({error})")

    def _discard_built(self) -> None:
        for extension in self.extensions:
            Path(self.get_ext_fullpath(extension.name)).unlink(missing_ok=True)
        # Nothing left to copy in place or to list as an output.
        self.extensions = []


def _setup_args() -> dict[str, Any]:
    extensions = _extensions()
    if not extensions:
        return {}
    return {"ext_modules": extensions, "cmdclass": {"build_ext": OptionalBuildExt}}


setup(**_setup_args())
