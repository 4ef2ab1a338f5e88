"""Apache Superset engine spec for LakeLink.

Superset reaches LakeLink through the `flightsql-dbapi` SQLAlchemy dialect
(`datafusion://USER:PASSWORD@HOST:PORT`, see docs/bi.md). Superset has no
engine spec for that dialect and would fall back to its generic one, which
gets three things wrong against LakeLink; this spec fixes them:

- Row limits. The generic spec replaces a statement's own `LIMIT` with SQL
  Lab's row limit (`LIMIT 5` ran as `LIMIT 1001`). Wrapping instead
  (`SELECT * FROM (...) LIMIT 1001`) would keep the limit but lose the
  statement's `ORDER BY` (the order of a subquery is not kept) and break
  `EXPLAIN`. This spec asks Superset to wrap, then takes the wrap apart before
  the statement is sent: a query gets the smaller of its own limit and SQL
  Lab's at its top level, where its `ORDER BY` holds; a statement that is not
  a query (`EXPLAIN`, `SHOW`, `SET`) is sent as the user wrote it.
- Column types. The dialect describes result columns with SQLAlchemy type
  classes, which the generic spec cannot read, so `DECIMAL` columns such as
  TPC-H prices showed as unknown (`?`) and could not be summed in charts;
  they are named here.
- Time grains and time literals use DataFusion's `date_trunc` and typed
  `DATE` / `TIMESTAMP` literals.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import sqlglot
from sqlalchemy import types
from sqlglot import exp
from superset.constants import TimeGrain
from superset.db_engine_specs.base import BaseEngineSpec, LimitMethod


# Superset's limit wrapped around a statement that is not a query (which
# sqlglot cannot parse inside a subquery).
_WRAPPED_COMMAND = re.compile(
    r"^\s*SELECT\s+\*\s+FROM\s+\(\s*((?:EXPLAIN|SHOW|DESCRIBE|DESC|SET)\b.*?)\s*\)"
    r"\s*LIMIT\s+\d+\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)


def apply_row_limit(sql: str) -> str:
    """Superset's `SELECT * FROM (<statement>) LIMIT n` -> `<statement>` with
    `LIMIT min(own, n)` when it is a query, unchanged when it is not; any other
    SQL is returned as it is."""
    if m := _WRAPPED_COMMAND.match(sql):
        return m.group(1)
    try:
        tree = sqlglot.parse_one(sql)
    except sqlglot.errors.SqlglotError:
        return sql
    inner, n = _limit_wrap(tree)
    if not isinstance(inner, exp.Query):
        return sql
    own = _int_limit(inner)
    if own is None or own > n:
        inner = inner.limit(n)
    return inner.sql()


def _int_limit(tree: exp.Expression) -> int | None:
    limit = tree.args.get("limit")
    value = limit.args.get("expression") if isinstance(limit, exp.Limit) else None
    if isinstance(value, exp.Literal) and value.is_int:
        return int(value.name)
    return None


def _limit_wrap(tree: exp.Expression) -> tuple[exp.Expression | None, int]:
    """(statement, n) when `tree` is exactly `SELECT * FROM (statement) LIMIT n`."""
    if not isinstance(tree, exp.Select) or len(tree.expressions) != 1:
        return None, 0
    if not isinstance(tree.expressions[0], exp.Star):
        return None, 0
    source = tree.args.get("from_") or tree.args.get("from")
    sub = source.this if isinstance(source, exp.From) else None
    if not isinstance(sub, exp.Subquery) or sub.alias:
        return None, 0
    others = {k for k, v in tree.args.items() if v and k not in ("expressions", "from_", "from", "limit")}
    n = _int_limit(tree)
    if others or n is None:
        return None, 0
    return sub.this, n


class LakeLinkEngineSpec(BaseEngineSpec):
    engine = "datafusion"
    engine_name = "LakeLink"
    # The dialect's driver name; a URI without a driver resolves to it too.
    drivers = {"flightsql": "Arrow Flight SQL (flightsql-dbapi)"}
    default_driver = "flightsql"
    sqlalchemy_uri_placeholder = "datafusion://USER:PASSWORD@HOST:50050"

    limit_method = LimitMethod.WRAP_SQL
    allows_joins = True
    allows_subqueries = True
    allows_alias_in_select = True
    allows_alias_in_orderby = True

    _time_grain_expressions = {
        None: "{col}",
        TimeGrain.SECOND: "date_trunc('second', {col})",
        TimeGrain.MINUTE: "date_trunc('minute', {col})",
        TimeGrain.HOUR: "date_trunc('hour', {col})",
        TimeGrain.DAY: "date_trunc('day', {col})",
        TimeGrain.WEEK: "date_trunc('week', {col})",
        TimeGrain.MONTH: "date_trunc('month', {col})",
        TimeGrain.QUARTER: "date_trunc('quarter', {col})",
        TimeGrain.YEAR: "date_trunc('year', {col})",
    }

    @classmethod
    def epoch_to_dttm(cls) -> str:
        return "to_timestamp({col})"

    @classmethod
    def convert_dttm(
        cls, target_type: str, dttm: datetime, db_extra: dict[str, Any] | None = None
    ) -> str | None:
        sqla_type = cls.get_sqla_column_type(target_type)
        if isinstance(sqla_type, types.Date) and not isinstance(sqla_type, types.DateTime):
            return f"DATE '{dttm.date().isoformat()}'"
        if isinstance(sqla_type, types.DateTime):
            return f"""TIMESTAMP '{dttm.isoformat(sep=" ", timespec="microseconds")}'"""
        return None

    @classmethod
    def get_datatype(cls, type_code: Any) -> str | None:
        # flightsql-dbapi's cursor description holds SQLAlchemy type classes
        # (types.DECIMAL, types.TEXT, ...): name them as SQL types.
        if isinstance(type_code, type) and issubclass(type_code, types.TypeEngine):
            return type_code.__visit_name__.upper()
        if isinstance(type_code, types.TypeEngine):
            return type_code.__visit_name__.upper()
        return super().get_datatype(type_code)

    @classmethod
    def execute(cls, cursor: Any, query: str, database: Any, **kwargs: Any) -> None:
        super().execute(cursor, apply_row_limit(query), database, **kwargs)
