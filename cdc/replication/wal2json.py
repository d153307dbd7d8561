"""Decoder for the wal2json output plugin (format-version 2), and the options it needs.

One XLogData payload (one JSON object) in, the `cdc.replication.messages` types out, the same
ones `cdc.replication.pgoutput` produces, so everything after the decoder is shared. No socket,
no database, no clock.

wal2json sends no schema messages: every change names its schema and table and lists its
columns (name, type oid, value). The decoder keeps the column list it last saw per table and
synthesizes a `Relation` before the first change of a table and whenever that list changes (an
INSERT carries every column, so it defines the list; an UPDATE naming a column the list lacks
extends it). Relation ids are a counter per (schema, table), stable for the decoder's life.

Values are put back into PostgreSQL's text output form, the form pgoutput sends: wal2json
writes booleans as JSON true/false, strips the ``\\x`` of bytea, and writes numbers as JSON
numbers unless `numeric-data-types-as-string` is on (wal2json 2.6+). Numbers are parsed as their
exact JSON token, so ``1.50`` stays ``1.50``. What wal2json cannot tell us at all:

- NaN and +/-Infinity in numeric and float columns arrive as null without
  `numeric-data-types-as-string` (wal2json 2.5 has no such option).
- It never says a TOASTed column was left unchanged: it leaves the column out of the UPDATE,
  which is how an absent column becomes `UNCHANGED_TOAST` here. A column dropped while no
  INSERT has redefined the table looks the same.
- No type modifiers (`type_modifier` is -1) and no replica identity setting: Relations say 'd',
  `is_key` marks primary-key columns, and an old key is sent ('K') only when it differs from
  the new row's (with REPLICA IDENTITY FULL the key is the whole old row).
- One Truncate per table, without CASCADE / RESTART IDENTITY flags.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from operator import itemgetter
from typing import Any, Final, TypeAlias

from cdc.errors import ProtocolError
from cdc.replication.lsn import Lsn
from cdc.replication.messages import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    LogicalMessage,
    Message,
    Relation,
    RelationColumn,
    Row,
    Truncate,
    Value,
    make_delete,
    make_insert,
    make_update,
)

__all__ = ["Wal2JsonDecoder", "commit_time", "wal2json_options"]

# Integers and floats stay the exact JSON token: PostgreSQL's own text form, as pgoutput sends
# (and the bare NaN/Infinity Python's json accepts would be PostgreSQL's spelling too). One
# decoder object: json.loads(..., parse_int=...) would build a new one per call.
_JSON: Final = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=str)

# Type oids as parsed (integers are kept as their token, see _JSON).
_BOOL_OID: Final = "16"
_BYTEA_OID: Final = "17"

_COLUMN: Final = itemgetter("name", "typeoid", "value")
_NAME: Final = itemgetter("name")

_NAMES: Final[dict[str, str]] = {
    "B": "Begin",
    "C": "Commit",
    "I": "Insert",
    "U": "Update",
    "D": "Delete",
    "T": "Truncate",
    "M": "Message",
}

_Json: TypeAlias = dict[str, Any]
_Columns: TypeAlias = tuple[tuple[str, ...], tuple[str, ...], tuple[Any, ...]]


# --- values ---------------------------------------------------------------------------------


def _bool_text(value: Any) -> Value:
    return None if value is None else ("t" if value else "f")


def _bytea_text(value: Any) -> Value:
    # bytea_output = hex: wal2json sends the digits after "\x".
    return None if value is None else f"\\x{value}"


def _text(value: Any, type_oid: str) -> Value:
    """One value in PostgreSQL's text output form (see the module docstring)."""
    if value is None:
        return None
    if type_oid == _BOOL_OID:
        return "t" if value else "f"
    if type_oid == _BYTEA_OID:
        return f"\\x{value}"
    return value  # type: ignore[no-any-return]


def _split(columns: list[_Json]) -> _Columns:
    """Names, type oids and raw values of a wal2json column list."""
    if not columns:
        return (), (), ()
    names, types, values = zip(*map(_COLUMN, columns), strict=True)
    return names, types, values


# --- per-table shape ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shape:
    """The columns last seen for one table, as the Relation that announced them."""

    relation_id: int
    schema: str
    table: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    pk: tuple[str, ...]
    positions: dict[str, int] = field(init=False, repr=False, compare=False)
    # (position, converter) for the columns whose JSON value is not already the text form.
    fixes: tuple[tuple[int, Callable[[Any], Value]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", {n: i for i, n in enumerate(self.names)})
        fixes = [
            (i, _bool_text if t == _BOOL_OID else _bytea_text)
            for i, t in enumerate(self.types)
            if t in (_BOOL_OID, _BYTEA_OID)
        ]
        object.__setattr__(self, "fixes", tuple(fixes))

    def relation(self) -> Relation:
        pk = set(self.pk)
        columns = tuple(
            RelationColumn(name, int(type_oid), -1, name in pk)
            for name, type_oid in zip(self.names, self.types, strict=True)
        )
        return Relation(None, self.relation_id, self.schema, self.table, "d", columns)

    def matches(self, names: tuple[str, ...], types: tuple[str, ...], pk: tuple[str, ...]) -> bool:
        return names == self.names and types == self.types and pk == self.pk

    def covers(self, names: tuple[str, ...], types: tuple[str, ...], pk: tuple[str, ...]) -> bool:
        """Every named column is known with that type (other columns may be absent)."""
        if pk != self.pk:
            return False
        positions, known = self.positions, self.types
        for name, type_oid in zip(names, types, strict=True):
            position = positions.get(name)
            if position is None or known[position] != type_oid:
                return False
        return True

    def full_row(self, values: tuple[Any, ...]) -> Row:
        """A row from every column's value, in this shape's order."""
        if not self.fixes:
            return values
        row = list(values)
        for position, fix in self.fixes:
            row[position] = fix(row[position])
        return tuple(row)

    def partial_row(self, columns: _Columns, absent: Value) -> Row:
        """A row from some columns' values; the others are `absent`."""
        row: list[Value] = [absent] * len(self.names)
        positions = self.positions
        for name, type_oid, value in zip(*columns, strict=True):
            row[positions[name]] = _text(value, type_oid)
        return tuple(row)


def _widened(
    shape: _Shape | None,
    relation_id: int,
    key: tuple[str, str],
    named: _Columns,
    pk: tuple[str, ...],
) -> _Shape:
    """The named columns in order, then the columns of `shape` they do not name."""
    columns = dict(zip(named[0], named[1], strict=True))
    if shape is not None:
        for name, type_oid in zip(shape.names, shape.types, strict=True):
            columns.setdefault(name, type_oid)
    return _Shape(relation_id, key[0], key[1], tuple(columns), tuple(columns.values()), pk)


def _joined(first: _Columns, second: _Columns) -> _Columns:
    """`first`, then the columns of `second` it does not name."""
    extra = [i for i, name in enumerate(second[0]) if name not in first[0]]
    if not extra:
        return first
    names, types, values = first
    return (
        names + tuple(second[0][i] for i in extra),
        types + tuple(second[1][i] for i in extra),
        values + tuple(second[2][i] for i in extra),
    )


# --- timestamps -----------------------------------------------------------------------------

# timestamptz_to_str(): ISO date and time, up to 6 fractional digits (trailing zeros dropped),
# then the session time zone's offset as +HH, +HH:MM or +HH:MM:SS.
_TIMESTAMP: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?"
    r"([+-])([0-9]{2})(?::([0-9]{2}))?(?::([0-9]{2}))?"
)
_PG_EPOCH_DAY: Final = date(2000, 1, 1).toordinal()


def commit_time(text: str) -> int:
    """A wal2json timestamp as microseconds since 2000-01-01 UTC (pgoutput's commit time)."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"timestamp {text!r} is not in timestamptz_to_str's form")
    year, month, day, hour, minute, second, fraction, sign, oh, om, os = match.groups()
    days = date(int(year), int(month), int(day)).toordinal() - _PG_EPOCH_DAY
    offset = int(oh) * 3600 + int(om or 0) * 60 + int(os or 0)
    local = days * 86_400 + int(hour) * 3600 + int(minute) * 60 + int(second)
    utc = local - offset if sign == "+" else local + offset
    return utc * 1_000_000 + (int(fraction.ljust(6, "0")) if fraction else 0)


# --- decoder --------------------------------------------------------------------------------


class Wal2JsonDecoder:
    """Decode wal2json format-version 2 payloads, one `decode` call per XLogData payload.

    Keeps the columns last seen per table, to synthesize Relations (see the module docstring).
    Use one decoder per replication connection, as with pgoutput: after a reconnect the next
    change of each table is announced by a Relation again. Unlike pgoutput's (table OIDs), the
    relation ids are this decoder's own: a new decoder numbers tables from 1 again, so it needs
    a new `TransactionAssembler` too, or that would take a table's new Relation for a change of
    whatever table held the id before.
    """

    __slots__ = ("_handlers", "_last_time", "_next_relation_id", "_shapes")

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, str], _Shape] = {}
        self._next_relation_id = 1
        # Begin and Commit of a transaction carry the same timestamp: parse it once.
        self._last_time: tuple[str, int] = ("", 0)
        self._handlers: dict[str, Callable[[_Json], list[Message]]] = {
            "B": self._begin,
            "C": self._commit,
            "I": self._insert,
            "U": self._update,
            "D": self._delete,
            "T": self._truncate,
            "M": self._message,
        }

    def decode(self, data: bytes | memoryview) -> list[Message]:
        """Decode one payload: usually one message, a Relation first when a table's columns
        are new; raise `ProtocolError` if it is not a wal2json format-version 2 object."""
        try:
            # str() reads a memoryview in place: no copy of the payload first. raw_decode,
            # not decode: wal2json writes no whitespace around its object to skip.
            text = str(data, "utf-8")
            obj, end = _JSON.raw_decode(text)
            if end != len(text):
                raise ValueError(f"extra data at char {end}")
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ProtocolError(f"wal2json payload is not JSON: {exc} ({_excerpt(data)})") from None
        if type(obj) is not dict:
            raise ProtocolError(f"wal2json payload is not a JSON object ({_excerpt(data)})")
        action: str = obj.get("action", "")  # checked by the handler lookup
        try:
            handler = self._handlers[action]
        except (KeyError, TypeError):
            raise ProtocolError(_unknown_action(obj, data)) from None
        try:
            return handler(obj)
        except KeyError as exc:
            problem = f"it has no {exc.args[0]!r} field"
        except (TypeError, ValueError, AttributeError) as exc:
            problem = str(exc)
        raise ProtocolError(
            f"malformed wal2json {_NAMES[action]} (action {action!r}): {problem} ({_excerpt(data)})"
        )

    # Transactions and messages.

    def _time(self, text: str) -> int:
        last_text, last_value = self._last_time
        if text == last_text:
            return last_value
        value = commit_time(text)
        self._last_time = (text, value)
        return value

    def _begin(self, obj: _Json) -> list[Message]:
        return [Begin(Lsn.parse(obj["lsn"]), self._time(obj["timestamp"]), int(obj["xid"]))]

    def _commit(self, obj: _Json) -> list[Message]:
        lsn, end = Lsn.parse(obj["lsn"]), Lsn.parse(obj["nextlsn"])
        return [Commit(0, lsn, end, self._time(obj["timestamp"]))]

    def _message(self, obj: _Json) -> list[Message]:
        transactional = obj["transactional"]
        if type(transactional) is not bool:
            raise ValueError(f"'transactional' is {transactional!r}, not true or false")
        content = obj["content"].encode()
        return [LogicalMessage(None, transactional, Lsn.parse(obj["lsn"]), obj["prefix"], content)]

    # Changes.

    def _insert(self, obj: _Json) -> list[Message]:
        key = (obj["schema"], obj["table"])
        columns = _split(obj["columns"])
        pk = tuple(map(_NAME, obj["pk"]))
        shape = self._shapes.get(key)
        if shape is not None and shape.matches(columns[0], columns[1], pk):
            return [make_insert(None, shape.relation_id, shape.full_row(columns[2]))]
        # An INSERT carries every column: it defines the table's columns.
        shape = _widened(None, self._relation_id(key, shape), key, columns, pk)
        out: list[Message] = [shape.relation()]
        out.append(make_insert(None, shape.relation_id, shape.full_row(columns[2])))
        self._shapes[key] = shape
        return out

    def _update(self, obj: _Json) -> list[Message]:
        key = (obj["schema"], obj["table"])
        columns = _split(obj["columns"])
        identity: list[_Json] = self._identity(obj, key)
        pk = tuple(map(_NAME, obj["pk"]))
        shape = self._shapes.get(key)
        if shape is not None and shape.matches(columns[0], columns[1], pk):
            # The common case: every column sent, none new (a few microseconds count here).
            new = shape.full_row(columns[2])
            try:
                old = _changed_key(shape.positions, identity, new)
            except _UnknownColumn:
                pass  # a key column the table was not known to have: the slow way
            else:
                kind = None if old is None else "K"
                return [make_update(None, shape.relation_id, old, kind, new)]
        # Unchanged TOASTed columns are left out of an UPDATE: absent means unchanged.
        out: list[Message] = []
        named = _joined(columns, _split(identity))
        shape, relation = self._fitted(key, shape, named, pk)
        if relation is not None:
            out.append(relation)
        new = shape.partial_row(columns, UNCHANGED_TOAST)
        old = _changed_key(shape.positions, identity, new)
        out.append(make_update(None, shape.relation_id, old, None if old is None else "K", new))
        self._shapes[key] = shape
        return out

    def _delete(self, obj: _Json) -> list[Message]:
        key = (obj["schema"], obj["table"])
        identity = _split(self._identity(obj, key))
        pk = tuple(map(_NAME, obj["pk"]))
        shape, relation = self._fitted(key, self._shapes.get(key), identity, pk)
        delete = make_delete(None, shape.relation_id, shape.partial_row(identity, None), "K")
        self._shapes[key] = shape
        return [delete] if relation is None else [relation, delete]

    def _truncate(self, obj: _Json) -> list[Message]:
        key = (obj["schema"], obj["table"])
        shape = self._shapes.get(key)
        truncate = Truncate(None, (self._relation_id(key, shape),), False, False)
        if shape is not None:
            return [truncate]
        # Nothing of this table seen yet, and a TRUNCATE carries no columns: name it only.
        shape = _Shape(truncate.relation_ids[0], key[0], key[1], (), (), ())
        out: list[Message] = [shape.relation(), truncate]
        self._shapes[key] = shape
        return out

    def _relation_id(self, key: tuple[str, str], shape: _Shape | None) -> int:
        if shape is not None:
            return shape.relation_id
        relation_id = self._next_relation_id
        self._next_relation_id += 1
        return relation_id

    def _fitted(
        self, key: tuple[str, str], shape: _Shape | None, named: _Columns, pk: tuple[str, ...]
    ) -> tuple[_Shape, Relation | None]:
        """`shape` if it knows every named column; else a wider one and its Relation."""
        if shape is not None and shape.covers(named[0], named[1], pk):
            return shape, None
        wider = _widened(shape, self._relation_id(key, shape), key, named, pk)
        return wider, wider.relation()

    @staticmethod
    def _identity(obj: _Json, key: tuple[str, str]) -> list[_Json]:
        identity: list[_Json] | None = obj.get("identity")
        if identity is None:
            raise ValueError(
                f'no identity for "{key[0]}"."{key[1]}": the table has no primary key or replica'
                " identity index, so its rows cannot be told apart"
            )
        return identity


class _UnknownColumn(Exception):
    """The identity names a column the table's shape lacks."""


def _changed_key(positions: dict[str, int], identity: list[_Json], new: Row) -> Row | None:
    """The old key row if it differs from the new row's values (pgoutput's 'K'), else None.

    wal2json always sends the identity of an UPDATE, taken from the new row when the server
    logged no old key (the key did not change); pgoutput sends an old key only when it did.
    """
    changed = False
    for column in identity:
        position = positions.get(column["name"])
        if position is None:
            raise _UnknownColumn
        if new[position] != _text(column["value"], column["typeoid"]):
            changed = True
    if not changed:
        return None
    old: list[Value] = [None] * len(new)
    for column in identity:
        old[positions[column["name"]]] = _text(column["value"], column["typeoid"])
    return tuple(old)


def _excerpt(data: bytes | memoryview) -> str:
    """What was received, for error messages: its length and its start."""
    head = bytes(data[:120]).decode(errors="replace")
    return f"{len(data)} bytes: {head}{'...' if len(data) > 120 else ''}"


def _unknown_action(obj: _Json, buf: bytes | memoryview) -> str:
    if "action" not in obj:
        hint = " (format-version 1?)" if "change" in obj else ""
        return f"wal2json payload has no 'action' field{hint} ({_excerpt(buf)})"
    return f"unknown wal2json action {obj['action']!r} ({_excerpt(buf)})"


# --- START_REPLICATION options --------------------------------------------------------------

# Characters wal2json's add-tables parser splits on (',', '.', whitespace) or reads as a
# wildcard ('*') unless escaped with a backslash, and the backslash itself.
_TABLE_SPECIAL: Final = frozenset(",.*\\ \t\n\v\f\r")
# add-msg-prefixes is split the same way but its escapes are never removed: a prefix holding
# one of these cannot be matched at all.
_PREFIX_UNUSABLE: Final = frozenset(",\\ \t\n\v\f\r")


def _escaped(name: str) -> str:
    return "".join("\\" + c if c in _TABLE_SPECIAL else c for c in name)


def _table_pattern(table: str) -> str:
    schema, dot, name = table.partition(".")
    if not dot or not schema or not name:
        raise ValueError(f"table {table!r} is not schema.table")
    return f"{_escaped(schema)}.{_escaped(name)}"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def wal2json_options(
    tables: Sequence[str], message_prefixes: Sequence[str], *, numeric_as_string: bool = False
) -> tuple[str, ...]:
    """The START_REPLICATION options for this decoder, each as ``"name" 'value'``.

    `tables` are "schema.table" names as in the configuration (split at the first dot, exact
    catalog spelling); wal2json sends the changes of these tables only. `message_prefixes`
    are the logical message prefixes to receive (wal2json sends every message if the list is
    empty, so it must not be). `numeric_as_string` asks for numbers as JSON strings, which
    keeps NaN and Infinity; only wal2json 2.6+ knows the option (2.5 refuses to start).
    """
    if not tables:
        raise ValueError("wal2json needs at least one table (with none it sends no change)")
    if not message_prefixes:
        raise ValueError("wal2json needs at least one message prefix (with none it sends all)")
    for prefix in message_prefixes:
        if not prefix or _PREFIX_UNUSABLE.intersection(prefix):
            raise ValueError(f"wal2json cannot match message prefix {prefix!r}")
    options = [
        ("format-version", "2"),
        ("include-xids", "1"),
        ("include-timestamp", "1"),
        ("include-lsn", "1"),
        ("include-transaction", "1"),
        ("include-schemas", "1"),
        ("include-type-oids", "1"),
        ("include-types", "0"),
        ("include-pk", "1"),
        *([("numeric-data-types-as-string", "1")] if numeric_as_string else []),
        ("actions", "insert,update,delete,truncate"),
        ("add-tables", ",".join(_table_pattern(table) for table in tables)),
        ("add-msg-prefixes", ",".join(message_prefixes)),
    ]
    return tuple(f'"{name}" {_sql_string(value)}' for name, value in options)
