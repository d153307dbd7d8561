"""START_REPLICATION options per server version."""

from __future__ import annotations

from cdc.replication.plugins import protocol_options


def test_protocol_4_on_postgresql_16_and_later_without_streaming_in_progress() -> None:
    # Large transactions are left to the server's spill and applied in parts once committed.
    assert protocol_options(180000, "wal2vec") == (
        "proto_version '4'",
        "publication_names 'wal2vec'",
        "messages 'true'",
    )


def test_older_servers_fall_back() -> None:
    assert protocol_options(150004, "p")[0] == "proto_version '3'"
    assert protocol_options(140010, "p")[0] == "proto_version '2'"
    assert protocol_options(130000, "p") == ("proto_version '1'", "publication_names 'p'")


def test_publication_name_is_quoted() -> None:
    assert protocol_options(180000, "it's")[1] == "publication_names 'it''s'"
