"""LakeLink's Superset engine spec (clients/superset), without a browser."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import types

from lakelink_superset import LakeLinkEngineSpec as Spec, apply_row_limit


@pytest.mark.parametrize("sent_by_superset, sent_to_lakelink", [
    # Not a query: as the user wrote it.
    ("SELECT\n  *\nFROM (\n  EXPLAIN SELECT count(*) FROM lineitem\n)\nLIMIT 1001",
     "EXPLAIN SELECT count(*) FROM lineitem"),
    ("select * from (show tables) limit 11", "show tables"),
    # A query's own smaller limit holds, and its ORDER BY stays at the top.
    ("SELECT * FROM (SELECT n_name FROM nation ORDER BY n_name DESC LIMIT 5) LIMIT 1001",
     "SELECT n_name FROM nation ORDER BY n_name DESC LIMIT 5"),
    ("SELECT * FROM (SELECT n_name FROM nation ORDER BY n_name DESC) LIMIT 1001",
     "SELECT n_name FROM nation ORDER BY n_name DESC LIMIT 1001"),
    ("SELECT * FROM (SELECT n_name FROM nation LIMIT 5000) LIMIT 1001",
     "SELECT n_name FROM nation LIMIT 1001"),
    ("SELECT * FROM (SELECT a FROM t UNION ALL SELECT b FROM u) LIMIT 11",
     "SELECT a FROM t UNION ALL SELECT b FROM u LIMIT 11"),
    ("SELECT * FROM (SELECT * FROM nl_query('how many nations?')) LIMIT 1001",
     "SELECT * FROM NL_QUERY('how many nations?') LIMIT 1001"),
    # Anything else is left alone.
    ("SELECT * FROM (SELECT 1) AS t LIMIT 5", "SELECT * FROM (SELECT 1) AS t LIMIT 5"),
    ("SELECT * FROM (SELECT 1) WHERE 1 = 1 LIMIT 5", "SELECT * FROM (SELECT 1) WHERE 1 = 1 LIMIT 5"),
    ("SELECT n_name FROM nation", "SELECT n_name FROM nation"),
    ("not sql at all (", "not sql at all ("),
])
def test_superset_row_limit_is_applied_at_the_statements_top(sent_by_superset, sent_to_lakelink):
    assert apply_row_limit(sent_by_superset) == sent_to_lakelink


def test_the_dialects_type_classes_are_named_and_decimals_are_numbers():
    assert Spec.get_datatype(types.DECIMAL) == "DECIMAL"
    assert Spec.get_datatype(types.TEXT) == "TEXT"
    assert Spec.get_datatype(types.TIMESTAMP) == "TIMESTAMP"
    assert Spec.get_datatype("varchar") == "VARCHAR"
    assert Spec.get_datatype(None) is None
    assert Spec.get_column_spec("DECIMAL").generic_type.name == "NUMERIC"
    assert Spec.get_column_spec("BIGINT").generic_type.name == "NUMERIC"
    assert Spec.get_column_spec("DATE").is_dttm


def test_time_literals_are_typed():
    t = datetime(1995, 3, 15, 12, 30, 5, 250000)
    assert Spec.convert_dttm("DATE", t) == "DATE '1995-03-15'"
    assert Spec.convert_dttm("TIMESTAMP", t) == "TIMESTAMP '1995-03-15 12:30:05.250000'"
    assert Spec.convert_dttm("VARCHAR", t) is None


def test_time_grains_truncate_with_date_trunc():
    grains = Spec._time_grain_expressions
    assert grains["P1M"] == "date_trunc('month', {col})"
    assert grains["P3M"] == "date_trunc('quarter', {col})"
