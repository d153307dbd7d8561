"""A newcomer's first minutes: `cdc status` and `cdc search` before `cdc setup` or the first
`cdc run` say what to do next, and global options go before or after the command."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fakes.openai_server import FakeOpenAIServer
from tests.harness import Deployment


def cdc(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m cdc ARGS` exactly as given (the harness's `cli` puts --config last)."""
    deployment.write_config()
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args],
        capture_output=True,
        text=True,
        env=deployment.env(),
        timeout=120,
        check=False,
    )


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "None" not in output, output


def test_status_before_setup_says_to_run_setup(deployment: Deployment) -> None:
    text = deployment.cli("status")
    assert text.returncode == 1, text.stdout + text.stderr
    assert_clean(text)
    assert "not set up" in text.stdout and "NEXT: run `cdc setup`, then `cdc run`" in text.stdout
    as_json = deployment.cli("status", "--json")
    assert as_json.returncode == 1, as_json.stderr
    assert_clean(as_json)
    report = json.loads(as_json.stdout)
    assert report["set_up"] is False and report["healthy"] is False
    assert report["next_step"] == "run `cdc setup`, then `cdc run`"
    assert report["vectors"] == {"public.articles": 0} and report["dead_letters"] == 0


def test_status_after_setup_before_the_first_run_says_to_run(deployment: Deployment) -> None:
    assert deployment.cli("setup").returncode == 0
    text = deployment.cli("status")
    assert text.returncode == 1
    assert_clean(text)
    assert f"PROBLEM: slot {deployment.slot} does not exist" in text.stdout
    assert "NEXT: run `cdc run`" in text.stdout
    assert "(none yet" in text.stdout and "lag             -" in text.stdout
    report = json.loads(deployment.cli("status", "--json").stdout)
    assert report["set_up"] is True and report["slot_exists"] is False
    assert report["next_step"].startswith("run `cdc run`")


def test_global_options_go_before_or_after_the_command(deployment: Deployment) -> None:
    config = str(deployment.config_path)
    before = cdc(deployment, "--config", config, "--log-format", "json", "status", "--json")
    after = cdc(deployment, "status", "--json", "--config", config, "--log-level", "debug")
    for result in (before, after):
        assert result.returncode == 1, result.stderr
        assert json.loads(result.stdout)["next_step"].startswith("run `cdc setup`")
    mixed = cdc(deployment, "--log-level", "debug", "setup", "--config", config)
    assert mixed.returncode == 0, mixed.stderr
    missing = cdc(deployment, "status")
    assert missing.returncode == 2 and "pass --config PATH" in missing.stderr


def _unloadable_model(deployment: Deployment) -> None:
    """A local model that cannot load: search must not get that far when the sink is wrong."""
    deployment.extra = {
        "embedding": {"provider": "local", "model": str(deployment.workdir / "no-model")}
    }


def test_search_before_setup_names_the_sink_before_loading_a_model(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    _unloadable_model(deployment)
    result = deployment.cli("search", "anything")
    assert result.returncode == 2, result.stderr
    assert_clean(result)
    assert "sink table" in result.stderr and "cdc setup" in result.stderr
    assert "no-model" not in result.stderr


def test_search_refuses_a_sink_of_another_model_before_loading_one(
    deployment: Deployment,
) -> None:
    assert deployment.cli("setup").returncode == 0
    deployment.execute(
        "INSERT INTO cdc_state (slot, snapshot_done, model, dimensions) "
        "VALUES (%s, true, 'some-other-model', 32)",
        (deployment.slot,),
    )
    _unloadable_model(deployment)
    result = deployment.cli("search", "anything")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("cdc search: the sink holds vectors of model some-other-model")
    assert "cannot be compared" in result.stderr


def test_search_of_an_empty_sink_says_so_without_a_model(
    deployment: Deployment, endpoint: FakeOpenAIServer
) -> None:
    assert deployment.cli("setup").returncode == 0
    _unloadable_model(deployment)
    result = deployment.cli("search", "anything", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert "no vectors yet" in result.stderr and "cdc run" in result.stderr
    assert endpoint.requests == 0
