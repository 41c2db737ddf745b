"""Prepared statements for the SQL text the compiled paths send: PostgreSQL parses and plans a
statement's shape once per connection instead of once per request.

The compiled reads (and createDevice's INSERT, and every write's audit row and change-log
statements at COMMIT) go as simple-protocol text with their values written in as literals, so
BEGIN, the role switch and COMMIT share their round trip. Parsing and planning that text was a
third of a `device(id)` statement's database CPU. The writes' statements come `Shaped` by their
builders; any other text is cut here into a shape and its values: a value compared with `=`,
`<>`, `<`, `>`, `<=`, `>=` (a bigint, or a quoted string whose type PostgreSQL takes from the
other side, as it does a literal's) and a quoted string cast with `::`. A shape seen a second
time in this process is PREPAREd on the connection that meets it (in the same round trip, under
the transaction's role and search_path) and EXECUTEd with the values after that. A shape
PostgreSQL refuses to prepare (a value whose type nothing around it tells: `_UNPREPARABLE`) is
sent again as its text, the round trip rolled back first when it began the transaction, and is
never prepared again.

psycopg prepares the generic path's statements itself and, on a rollback it sees (or DROP,
ALTER …), deallocates ALL of the connection's statements, these too: a connection's shapes are
forgotten when psycopg has cleared its own since they were prepared, and none is used while its
DEALLOCATE ALL is still to be sent (`_psycopg_epoch`, tests/test_prepared.py).

Isolation stays PostgreSQL's: a prepared statement names tables as the text does (through
search_path), PostgreSQL parses it again when search_path differs from the one it was
prepared under, and checks the role's privileges at every execution. Names are never reused on
a connection (a round trip that failed may have left a PREPARE behind: it is forgotten, not
reused), and each connection keeps at most `PER_CONNECTION` shapes, deallocating the oldest.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg._preparing import PrepareManager

from app.db.transaction import simple_query

PER_CONNECTION = 128  # shapes prepared on one connection (each holds a parse tree and a plan)
SEEN_LIMIT = 4096  # shapes counted in this process before the count starts over
LONGEST = 16_000  # characters: longer texts go as they are (rare, and their plans are big)
_BIGINT = 2**63
enabled = True  # Settings.prepared_statements (app.runtime.platform)

# Quoted identifiers and strings are read whole so nothing inside them is taken for a value.
# Written for Python's engine: the lookahead lets it skip to a character that can start a match
# (no lookbehind, which kept it trying every alternative at every position: `cut` looks at the
# character before an operator instead), and each quoted text is one run of what it may hold
# between its doubled quotes, not a choice per character. Half the time of the plain form.
_TOKENS = re.compile(r"""(?=["'E<>!=])(?:
    "[^"]*(?:""[^"]*)*"
  | (?P<op>(?:<>|<=|>=|!=|=|<|>)\s*)(?P<value>-?\d+(?![\w.])|E'[^'\\]*(?:(?:''|\\.)[^'\\]*)*'|'[^']*(?:''[^']*)*')
  | (?P<cast>E'[^'\\]*(?:(?:''|\\.)[^'\\]*)*'|'[^']*(?:''[^']*)*')(?=::)
  | E'[^'\\]*(?:(?:''|\\.)[^'\\]*)*'
  | '[^']*(?:''[^']*)*'
)""", re.VERBOSE)
# An operator that is the end of a longer one (->>, #>, @>, <@ …): `v->>'name'` keeps its key.
_LONGER = frozenset("-<>!=#@~|&^*/%+")


class Shaped(str):
    """SQL text whose builder wrote its shape too (`shaped`): it is never cut, and its values'
    length does not matter (what PostgreSQL keeps is the shape)."""

    shape: tuple[str, tuple[str, ...], tuple[str, ...]]


def shaped(template: str, values: Sequence[tuple[str, str]]) -> Shaped:
    """`template` with each `{}` filled by a value, given as (its SQL literal, its declared type:
    `unknown` where a cast or the other side types it, as the literal's own type was). The writes'
    statements carry new values every time, so cutting their text was most of what preparing them
    cost in Python (createDevice's change-log statement: 8 µs, 29 µs the first time)."""
    text = Shaped(template.format(*(value for value, _ in values)))
    text.shape = (_placeheld(template, len(values)), tuple(value for value, _ in values),
                  tuple(kind for _, kind in values))
    return text


@functools.lru_cache(maxsize=256)
def _placeheld(template: str, count: int) -> str:
    """`template` with $1…$count for its values: the same few templates every write, rendered once."""
    return template.format(*(f"${n}" for n in range(1, count + 1)))


class _Connection:
    """One connection's prepared shapes (shape → name), oldest first."""

    __slots__ = ("epoch", "names", "next")

    def __init__(self, epoch: int) -> None:
        self.names: OrderedDict[str, str] = OrderedDict()
        self.next = 0
        self.epoch = epoch  # psycopg's clears when these were prepared


_CONNECTIONS: weakref.WeakKeyDictionary[Any, _Connection] = weakref.WeakKeyDictionary()
_SEEN: dict[str, int] = {}
_SHAPES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}  # text → its shape, values, types
_REFUSED: dict[str, bool] = {}  # shapes PostgreSQL would not prepare: they go as their text
# What PostgreSQL says when it cannot parse or type a shape its text parsed as (a value whose
# type no side tells, say): the text is sent again as it is, and the shape never prepared again.
_UNPREPARABLE = frozenset({"42601", "42P18", "42P08", "42725", "42883", "42804"})


async def round_trip(driver: Any, steps: Sequence[tuple[str, bool]], *, whole: bool) -> list[Any]:
    """libpq's results of the `steps` marked preparable (each run through `steps_for`), all sent in one
    simple-protocol round trip. `whole`: the steps begin the transaction (BEGIN first), so a shape
    PostgreSQL refuses to prepare can be rolled back and the round trip sent again with its text."""
    new: list[tuple[Any, str]] = []
    sent, answers = _compose(driver, steps, new)
    try:
        results = await simple_query(driver, "; ".join(sent))
    except psycopg.Error as exc:
        forget(new)
        if not (new and exc.sqlstate in _UNPREPARABLE):
            raise
        for _, text in new:  # one request's worth of trouble at most
            _remember(_REFUSED, text, True)
        if not whole:  # what ran before this round trip is lost with it: the caller's error
            raise
        await simple_query(driver, "ROLLBACK")
        sent, answers = _compose(driver, steps, [])
        results = await simple_query(driver, "; ".join(sent))
    except BaseException:
        forget(new)
        raise
    return [results[n] for n in answers]


def _compose(driver: Any, steps: Sequence[tuple[str, bool]], new: list[tuple[Any, str]]
             ) -> tuple[list[str], list[int]]:
    sent: list[str] = []
    answers: list[int] = []
    for sql, preparable in steps:
        if preparable:
            sent += steps_for(driver, sql, new)
            answers.append(len(sent) - 1)
        else:
            sent.append(sql)
    return sent, answers


def shape(sql: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """`sql` as a shape with $n for its values, the values' SQL text and their declared types: its
    own when it is `Shaped` (the writes, new values every time), else cut and remembered by text —
    the compiled reads are built from cached pieces, so a request that repeats another's (a
    dashboard's poll) is cut once."""
    if type(sql) is Shaped:
        return sql.shape
    known = _SHAPES.get(sql)
    if known is None:
        known = _cut(sql)
        _remember(_SHAPES, sql, known)
    return known


def _remember(table: dict[str, Any], key: str, value: Any) -> None:
    """`table[key] = value`, the table started over once it holds SEEN_LIMIT entries."""
    if len(table) >= SEEN_LIMIT:
        table.clear()
    table[key] = value


def _cut(sql: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    values: list[str] = []
    types: list[str] = []

    def cut(match: re.Match[str]) -> str:
        value = match.group("value") or match.group("cast")
        if value is None or (match.group("op") is not None and sql[match.start() - 1:match.start()] in _LONGER):
            return match.group(0)
        if value[-1] != "'":  # an integer: bigint, unless it is bigger (then it stays as it is)
            if not -_BIGINT <= int(value) < _BIGINT:
                return match.group(0)
            types.append("bigint")
        else:
            types.append("unknown")  # typed by its context, as the literal was
        values.append(value)
        return f"{match.group('op') or ''}${len(values)}"

    return _TOKENS.sub(cut, sql), tuple(values), tuple(types)


def steps_for(driver: Any, sql: str, new: list[tuple[Any, str]]) -> list[str]:
    """The statements that run `sql` on `driver`'s connection: EXECUTE of its prepared shape
    (after PREPARE, and DEALLOCATE of the oldest, when it is new there), or `sql` itself.
    Shapes prepared here are added to `new`, for `forget` if the round trip fails."""
    if not enabled or (len(sql) > LONGEST and type(sql) is not Shaped):
        return [sql]
    manager = driver._prepared
    if None in manager._to_flush:  # psycopg's DEALLOCATE ALL goes with its next command
        _CONNECTIONS.pop(driver, None)
        return [sql]
    text, values, types = shape(sql)
    if text in _REFUSED or len(text) > LONGEST:
        return [sql]
    connection = _CONNECTIONS.get(driver)
    epoch = _psycopg_epoch(manager)
    if connection is not None and connection.epoch != epoch:  # deallocated since, with psycopg's own
        connection.names.clear()
        connection.epoch = epoch
    name = connection.names.get(text) if connection is not None else None
    if name is not None:
        assert connection is not None
        connection.names.move_to_end(text)
        return [_execute(name, values)]
    seen = _SEEN.get(text, 0) + 1
    if seen < 2:  # a one-off (a device's own scope, a rare filter) is not worth a plan kept
        _remember(_SEEN, text, seen)
        return [sql]
    if connection is None:
        connection = _CONNECTIONS[driver] = _Connection(epoch)
    out: list[str] = []
    if len(connection.names) >= PER_CONNECTION:
        _, oldest = connection.names.popitem(last=False)
        out.append(f"DEALLOCATE {oldest}")
    name = f"tenantry_{connection.next}"
    connection.next += 1
    connection.names[text] = name
    new.append((driver, text))
    declared = f"({', '.join(types)})" if types else ""
    return [*out, f"PREPARE {name}{declared} AS {text}", _execute(name, values)]


def forget(new: list[tuple[Any, str]]) -> None:
    """After a failed round trip: its new shapes are prepared again (under new names) next time."""
    for driver, text in new:
        connection = _CONNECTIONS.get(driver)
        if connection is not None:
            connection.names.pop(text, None)


def _execute(name: str, values: tuple[str, ...]) -> str:
    return f"EXECUTE {name}({', '.join(values)})" if values else f"EXECUTE {name}"


def _psycopg_epoch(manager: PrepareManager) -> int:
    """How many times psycopg has cleared this connection's statements (each a DEALLOCATE ALL)."""
    return getattr(manager, "_tenantry_epoch", 0)


_clear = PrepareManager.clear


def _counted_clear(self: PrepareManager) -> bool:
    """psycopg's own clear (which queues DEALLOCATE ALL when it returns True), counted."""
    cleared = _clear(self)
    if cleared:
        self._tenantry_epoch = _psycopg_epoch(self) + 1  # type: ignore[attr-defined]
    return cleared


PrepareManager.clear = _counted_clear  # type: ignore[method-assign]
