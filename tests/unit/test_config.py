"""Configuration: YAML plus CDC_ environment overrides; errors name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.config import load_config
from cdc.dsn import redact_dsn
from cdc.errors import ConfigError

BASE = """
source:
  dsn: postgresql://cdc:pw@db:5432/app
tables:
  - table: public.articles
    columns: [title, body]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wal2vec.yaml"
    path.write_text(text)
    return path


def test_defaults_and_environment_overrides(tmp_path: Path) -> None:
    settings = load_config(
        write(tmp_path, BASE),
        {"CDC_SOURCE__SLOT": "other", "CDC_EMBEDDING__API_KEY": "sk-env"},
    )
    assert settings.source.slot == "other"
    assert settings.embedding.api_key is not None
    assert settings.embedding.api_key.get_secret_value() == "sk-env"
    assert "sk-env" not in repr(settings)
    assert settings.sink_dsn == settings.source.dsn
    assert settings.target_of(settings.tables[0]) == ("public", "cdc_embeddings")


def test_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"source\.dsnn: unknown key"):
        load_config(write(tmp_path, BASE.replace("dsn:", "dsnn:")), {})


def test_unknown_key_in_the_environment_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CDC_SOURCE__SLOTT"):
        load_config(write(tmp_path, BASE), {"CDC_SOURCE__SLOTT": "x"})


def test_missing_required_key_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"source: required"):
        load_config(write(tmp_path, "tables: []\n"), {})
    with pytest.raises(ConfigError, match=r"embedding\.dimensions"):
        load_config(write(tmp_path, BASE + "embedding:\n  dimensions: 0\n"), {})
    with pytest.raises(ConfigError, match="halfvec"):
        load_config(write(tmp_path, BASE + "embedding:\n  dimensions: 3072\n"), {})
    with pytest.raises(ConfigError, match="slot"):
        load_config(write(tmp_path, BASE), {"CDC_SOURCE__SLOT": "Bad-Name"})


def test_unqualified_table_means_public(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, BASE.replace("public.articles", "articles")), {})
    assert settings.tables[0].table == "public.articles"


def test_missing_file_and_no_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", {})
    with pytest.raises(ConfigError, match="--config"):
        load_config(None, {})


def test_redact_dsn_hides_passwords() -> None:
    assert redact_dsn("postgresql://cdc:secret@db/app") == "postgresql://cdc:***@db/app"
    assert "secret" not in redact_dsn("host=db password=secret dbname=app")
    assert redact_dsn("postgresql://cdc@db/app") == "postgresql://cdc@db/app"


def test_the_plugin_and_failover_are_source_settings(tmp_path: Path) -> None:
    environ = {"CDC_SOURCE__PLUGIN": "wal2json", "CDC_SOURCE__FAILOVER": "true"}
    settings = load_config(write(tmp_path, BASE), environ)
    assert (settings.source.plugin, settings.source.failover) == ("wal2json", True)
    with pytest.raises(ConfigError, match=r"source\.plugin"):
        load_config(write(tmp_path, BASE), {"CDC_SOURCE__PLUGIN": "decoderbufs"})


def test_a_table_takes_a_template_instead_of_columns(tmp_path: Path) -> None:
    text = BASE.replace("columns: [title, body]", 'template: "Title: {title}\\n\\n{body}"')
    [table] = load_config(write(tmp_path, text), {}).tables
    assert table.content_columns == ("title", "body")
    assert table.content.render(["T", "B"]) == "Title: T\n\nB"


def test_columns_and_template_are_exclusive_and_one_is_required(tmp_path: Path) -> None:
    both = BASE + '    template: "{title}"\n'
    with pytest.raises(ConfigError, match=r"tables\.0: public\.articles: set exactly one"):
        load_config(write(tmp_path, both), {})
    neither = BASE.replace("    columns: [title, body]\n", "")
    with pytest.raises(ConfigError, match=r"public\.articles: set exactly one of columns"):
        load_config(write(tmp_path, neither), {})
    bad = BASE.replace("columns: [title, body]", 'template: "{title.upper}"')
    with pytest.raises(ConfigError, match=r"public\.articles: template placeholder \{title"):
        load_config(write(tmp_path, bad), {})


def test_provider_local_defaults_to_the_packaged_minilm(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, BASE + "embedding:\n  provider: local\n"), {})
    embedding = settings.embedding
    assert (embedding.model, embedding.dimensions) == ("all-MiniLM-L6-v2", 384)
    # Chunks default to the model's own limit, read with its tokenizer (256 word pieces for
    # MiniLM, see test_local_chunks); one forward pass of 32.
    assert (embedding.max_input_tokens, embedding.batch_size) == (None, 32)
    assert embedding.api_key is None and embedding.base_url is None


def test_provider_local_runs_where_it_can_on_the_cpus_it_has_unless_told(tmp_path: Path) -> None:
    local = BASE + "embedding:\n  provider: local\n"
    embedding = load_config(write(tmp_path, local), {}).embedding
    # auto: a GPU when torch sees one, else the CPU; threads: the CPUs the process may use.
    assert (embedding.device, embedding.threads) == ("auto", None)
    given = {"CDC_EMBEDDING__DEVICE": "cpu", "CDC_EMBEDDING__THREADS": "1"}
    embedding = load_config(write(tmp_path, local), given).embedding
    assert (embedding.device, embedding.threads) == ("cpu", 1)
    with pytest.raises(ConfigError, match=r"embedding\.device: Input should be 'auto', 'cpu'"):
        load_config(write(tmp_path, local + "  device: tpu\n"), {})
    with pytest.raises(ConfigError, match=r"embedding\.threads: Input should be greater"):
        load_config(write(tmp_path, local + "  threads: 0\n"), {})


def test_device_and_threads_are_refused_for_an_endpoint(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE), {}).embedding.device is None
    text = BASE + "embedding:\n  device: cuda\n  threads: 4\n"
    with pytest.raises(
        ConfigError, match=r"embedding\.device and embedding\.threads: .* for provider local"
    ):
        load_config(write(tmp_path, text), {})


def test_provider_openai_takes_inputs_of_8191_tokens_unless_told(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE), {}).embedding.max_input_tokens == 8191
    null = BASE + "embedding:\n  max_input_tokens: null\n"
    assert load_config(write(tmp_path, null), {}).embedding.max_input_tokens == 8191
    given = {"CDC_EMBEDDING__MAX_INPUT_TOKENS": "512"}
    assert load_config(write(tmp_path, BASE), given).embedding.max_input_tokens == 512


def test_a_tiktoken_encoding_with_a_local_model_is_refused(tmp_path: Path) -> None:
    text = BASE + "embedding:\n  provider: local\n  tokenizer: cl100k_base\n"
    with pytest.raises(ConfigError, match=r"embedding: tokenizer names a tiktoken encoding"):
        load_config(write(tmp_path, text), {})


def test_provider_local_keeps_what_is_given(tmp_path: Path) -> None:
    text = BASE + "embedding:\n  provider: local\n  model: /models/bge\n  dimensions: 768\n"
    settings = load_config(write(tmp_path, text), {"CDC_EMBEDDING__MAX_INPUT_TOKENS": "400"})
    embedding = settings.embedding
    assert (embedding.model, embedding.dimensions, embedding.max_input_tokens) == (
        "/models/bge",
        768,
        400,
    )


FLEET = (
    BASE
    + """embedding:
  base_url:
    - http://vllm-0:8000/v1
    - http://vllm-1:8000/v1
    - https://vllm-2.internal/v1
"""
)


def test_base_url_may_list_a_fleet_of_endpoints(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, FLEET), {})
    assert settings.embedding.base_url == [
        "http://vllm-0:8000/v1",
        "http://vllm-1:8000/v1",
        "https://vllm-2.internal/v1",
    ]
    single = load_config(write(tmp_path, BASE + "embedding:\n  base_url: http://tei/v1\n"), {})
    assert single.embedding.base_url == "http://tei/v1"


def test_base_url_from_the_environment_one_url_or_a_json_list(tmp_path: Path) -> None:
    path = write(tmp_path, FLEET)
    one = load_config(path, {"CDC_EMBEDDING__BASE_URL": "http://other:9000/v1"})
    assert one.embedding.base_url == "http://other:9000/v1"
    many = load_config(path, {"CDC_EMBEDDING__BASE_URL": '["http://a:1/v1", "http://b:2/v1"]'})
    assert many.embedding.base_url == ["http://a:1/v1", "http://b:2/v1"]


@pytest.mark.parametrize(
    ("urls", "error"),
    [
        ("[]", r"embedding\.base_url is an empty list"),
        ('["http://a/v1", "http://b/v1", "vllm:8000/v1"]', r"embedding\.base_url\[2\] is not an"),
        ('["http://a/v1", "ftp://b/v1"]', r"embedding\.base_url\[1\] is not an"),
        ('["http://a:99999/v1"]', r"embedding\.base_url\[0\] is not an"),
        (
            '["http://a/v1", "http://b/v1", "http://a/v1/"]',
            r"base_url\[2\] repeats .*base_url\[0\]",
        ),
        ('["http://a/v1", 3]', r"embedding\.base_url: entry \[1\] is a int, not a URL"),
        ("3", r"embedding\.base_url: give a URL, or a list of URLs"),
    ],
)
def test_a_bad_endpoint_in_the_list_is_named(tmp_path: Path, urls: str, error: str) -> None:
    text = BASE + f"embedding:\n  base_url: {urls}\n"
    with pytest.raises(ConfigError, match=error) as caught:
        load_config(write(tmp_path, text), {})
    assert "ftp://" not in str(caught.value)  # URLs are not quoted: they may hold a password


def test_a_url_with_a_password_is_never_quoted(tmp_path: Path) -> None:
    text = BASE + 'embedding:\n  base_url: ["http://u:hunter2@a/v1", "http:/hunter2"]\n'
    with pytest.raises(ConfigError, match=r"base_url\[1\]") as caught:
        load_config(write(tmp_path, text), {})
    assert "hunter2" not in str(caught.value)
