"""Row changes as the rest of the pipeline sees them, and the projection that makes them.

A decoded pgoutput tuple holds every published column; a `TableShape` picks out the key, the
content and the metadata columns of a configured table, so that a `RowChange` carries only what
embedding and the sink need.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Literal

from cdc.config import TableConfig
from cdc.errors import ConfigError
from cdc.ids import render_source_id
from cdc.replication.lsn import Lsn
from cdc.replication.messages import UNCHANGED_TOAST, Relation, Row, Value

ChangeOp = Literal["insert", "update", "delete"]
# The prefix of the logical messages wal2vec emits itself (resync watermarks).
MARK_PREFIX = "wal2vec.resync"
# What it costs to hold a change in memory beyond its values, roughly (objects, tuples, keys).
CHANGE_OVERHEAD_BYTES = 240


Picker = Callable[[Row], tuple[Value, ...]]


def _picker(positions: tuple[int, ...]) -> Picker:
    """A fast projection of a decoded row onto `positions` (always a tuple)."""
    if not positions:
        return lambda row: ()
    if len(positions) == 1:
        only = positions[0]
        return lambda row: (row[only],)
    return itemgetter(*positions)


@dataclass(frozen=True, slots=True)
class TableShape:
    """Where a configured table's key, content and metadata columns sit in a decoded row."""

    table: str
    key_names: tuple[str, ...]
    key_positions: tuple[int, ...]
    content_positions: tuple[int, ...]
    metadata_positions: tuple[int, ...]
    # The relation lacks configured columns (changes from before a rename the configuration
    # already follows): its changes carry only their key, and every content and metadata
    # value is an UNCHANGED_TOAST placeholder, so the row's current values are fetched.
    refetch: bool = False
    # Projections built once per relation: this runs for every change of the stream.
    pick_key: Picker = field(init=False, repr=False, compare=False)
    content_of: Picker = field(init=False, repr=False, compare=False)
    metadata_of: Picker = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pick_key", _picker(self.key_positions))
        if self.refetch:
            content = (UNCHANGED_TOAST,) * len(self.content_positions)
            metadata = (UNCHANGED_TOAST,) * len(self.metadata_positions)
            object.__setattr__(self, "content_of", lambda row: content)
            object.__setattr__(self, "metadata_of", lambda row: metadata)
            return
        object.__setattr__(self, "content_of", _picker(self.content_positions))
        object.__setattr__(self, "metadata_of", _picker(self.metadata_positions))

    def key_of(self, row: Row) -> tuple[str, ...]:
        values = self.pick_key(row)
        if None in values or UNCHANGED_TOAST in values:
            raise ConfigError(f"{self.table}: a change arrived without its key values")
        return values  # type: ignore[return-value]


def text_size(values: tuple[Value, ...] | None) -> int:
    """Characters of text held in `values` (for the buffer's byte budget)."""
    total = 0
    for value in values or ():
        if value.__class__ is str:
            total += len(value)
    return total


@dataclass(slots=True)
class RowChange:
    """The latest known state of one source row: to be embedded (`upsert`) or removed (`delete`).

    `content` and `metadata` may hold UNCHANGED_TOAST where the server did not resend a value;
    those are filled from an earlier change of the same row or fetched from the source.
    """

    table: str
    source_id: str
    key: tuple[str, ...]
    op: ChangeOp
    content: tuple[Value, ...] | None
    metadata: tuple[Value, ...] | None
    commit_lsn: Lsn
    commit_time: int
    # Roughly what holding this change costs, in bytes; computed once.
    size: int

    @property
    def is_delete(self) -> bool:
        return self.op == "delete"

    def resize(self) -> None:
        """Recompute `size` after `content` or `metadata` changed."""
        self.size = (
            CHANGE_OVERHEAD_BYTES
            + len(self.source_id)
            + text_size(self.content)
            + text_size(self.metadata)
        )

    def has_unchanged_toast(self) -> bool:
        # `in` runs in C; this is called for every change that replaces a buffered one.
        content, metadata = self.content, self.metadata
        return (content is not None and UNCHANGED_TOAST in content) or (
            metadata is not None and UNCHANGED_TOAST in metadata
        )


@dataclass(slots=True)
class TableTruncate:
    """Every row of `table` is gone."""

    table: str
    commit_lsn: Lsn
    commit_time: int


Change = RowChange | TableTruncate


@dataclass(slots=True)
class Transaction:
    """A committed source transaction, reduced to the changes of configured tables.

    A transaction too large for the buffer arrives in parts: each part has `through` set,
    the count of the transaction's changes received so far (the part's and all before it),
    and `end_lsn` 0, as its end is not known until its Commit arrives with the last part.
    """

    xid: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int
    changes: list[Change]
    # Contents of wal2vec's own logical messages (resync watermarks) in this transaction.
    marks: list[bytes] = field(default_factory=list)
    through: int | None = None

    @property
    def is_part(self) -> bool:
        return self.through is not None


def shape_for(
    relation: Relation,
    table: TableConfig,
    key_names: Sequence[str] | None = None,
    previous: TableShape | None = None,
) -> TableShape:
    """Project `relation` onto `table`'s configuration, or explain what does not match.

    `key_names` (the primary key from the catalog) wins over the relation's key flags: with
    REPLICA IDENTITY FULL the server flags every column as part of the key.

    The server sends a Relation message before the first change of a table in a session and
    again after its DDL, with the columns as they were when the change was made. One lacking a
    configured column after a matching one (`previous`) means the column was renamed or
    dropped under a running stream: a `ConfigError` naming it. One lacking it before any
    matching one may hold changes from before a rename that the configuration (checked against
    the catalog at start) already follows: those changes keep their key and have their values
    fetched from the source, which refuses the configured names if the catalog lacks them too.
    """
    positions = {column.name: index for index, column in enumerate(relation.columns)}
    if key_names:
        key = [(name, positions[name]) for name in key_names if name in positions]
        if len(key) != len(key_names):
            raise ConfigError(
                f"{table.table}: key columns {list(key_names)} are not all in the replicated "
                "row; was the primary key changed? Run `cdc setup`, then `cdc resync` (the "
                "sink's row ids come from the key)"
            )
    else:
        key = [(c.name, i) for i, c in enumerate(relation.columns) if c.is_key]
    if not key:
        raise ConfigError(
            f"{table.table} has no primary key or replica identity index in the stream: "
            "add a primary key (or ALTER TABLE ... REPLICA IDENTITY USING INDEX ...)"
        )
    missing = missing_columns(table, positions)
    if missing and (previous is None or previous.refetch):
        return TableShape(
            table=table.table,
            key_names=tuple(name for name, _ in key),
            key_positions=tuple(index for _, index in key),
            # Not in this row: only their number counts, for the placeholders.
            content_positions=tuple(range(len(table.content_columns))),
            metadata_positions=tuple(range(len(table.metadata))),
            refetch=True,
        )
    if missing:
        raise missing_columns_error(table, missing)
    return TableShape(
        table=table.table,
        key_names=tuple(name for name, _ in key),
        key_positions=tuple(index for _, index in key),
        content_positions=tuple(positions[name] for name in table.content_columns),
        metadata_positions=tuple(positions[name] for name in table.metadata),
    )


def configured_columns(table: TableConfig) -> list[tuple[str, Sequence[str]]]:
    """The configured column names, each with the configuration key that names them."""
    content = "tables[].columns" if table.template is None else "tables[].template"
    return [(content, table.content_columns), ("tables[].metadata", table.metadata)]


def missing_columns(table: TableConfig, existing: Collection[str]) -> list[tuple[str, str]]:
    """(configuration key, column) for each configured column not in `existing`."""
    return [
        (key, name)
        for key, names in configured_columns(table)
        for name in names
        if name not in existing
    ]


def missing_columns_error(table: TableConfig, missing: Sequence[tuple[str, str]]) -> ConfigError:
    """What to do when configured columns were renamed or dropped under wal2vec."""
    named = ", ".join(f"{name!r} ({key})" for key, name in missing)
    verb = "column {} is" if len(missing) == 1 else "columns {} are"
    return ConfigError(
        f"{table.table}: {verb.format(named)} not in the table (renamed or dropped?). "
        f"{column_advice(table.table)}"
    )


def column_advice(table: str) -> str:
    return (
        "If it was renamed, put the new name in the configuration; if it was dropped, take it "
        f"out of the configuration and run `cdc resync --table {table}` once `cdc run` is back, "
        "to rewrite the table's vectors without it. Then run `cdc setup` and start `cdc run` "
        "again"
    )


def upsert_change(
    shape: TableShape, row: Row, op: ChangeOp, commit_lsn: Lsn, commit_time: int
) -> RowChange:
    # The hot path of the stream: every insert and update passes here once.
    key = shape.key_of(row)
    source_id = key[0] if len(key) == 1 else render_source_id(key)
    content = shape.content_of(row)
    metadata = shape.metadata_of(row)
    size = CHANGE_OVERHEAD_BYTES + len(source_id) + text_size(content) + text_size(metadata)
    return RowChange(
        shape.table, source_id, key, op, content, metadata, commit_lsn, commit_time, size
    )


def delete_change(
    shape: TableShape, key: tuple[str, ...], commit_lsn: Lsn, commit_time: int
) -> RowChange:
    return deletion(shape.table, render_source_id(key), key, commit_lsn, commit_time)


def deletion(
    table: str, source_id: str, key: tuple[str, ...], commit_lsn: Lsn, commit_time: int
) -> RowChange:
    """The change that removes row `source_id` of `table` (a delete, or a resync's orphan)."""
    return RowChange(
        table=table,
        source_id=source_id,
        key=key,
        op="delete",
        content=None,
        metadata=None,
        commit_lsn=commit_lsn,
        commit_time=commit_time,
        size=CHANGE_OVERHEAD_BYTES + len(source_id),
    )
