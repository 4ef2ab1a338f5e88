"""Prepared statements with bound parameters, and a >= 1M-row fetch."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

import lakelink_harness as h

PRIORITY_SQL = "SELECT count(*) FROM orders WHERE o_orderpriority = ?"


def _pa_count(lake, table, expr) -> int:
    return h.parquet_dataset(lake, table).count_rows(filter=expr)


def test_bound_string_parameter(conn, tpch_lake_small):
    expected = _pa_count(tpch_lake_small, "orders", ds.field("o_orderpriority").cast("string") == "1-URGENT")
    assert expected > 0
    with conn.cursor() as cur:
        cur.execute(PRIORITY_SQL, parameters=("1-URGENT",))
        rows = cur.fetchall()
    assert rows == [(expected,)]


def test_prepared_once_executed_with_two_values(conn, tpch_lake_small):
    exp_urgent = _pa_count(tpch_lake_small, "orders", ds.field("o_orderpriority").cast("string") == "1-URGENT")
    exp_low = _pa_count(tpch_lake_small, "orders", ds.field("o_orderpriority").cast("string") == "5-LOW")
    exp_none = 0
    assert exp_urgent != exp_low
    with conn.cursor() as cur:
        cur.adbc_prepare(PRIORITY_SQL)
        cur.execute(PRIORITY_SQL, parameters=("1-URGENT",))
        urgent = cur.fetchone()[0]
        cur.execute(PRIORITY_SQL, parameters=("5-LOW",))
        low = cur.fetchone()[0]
        cur.execute(PRIORITY_SQL, parameters=("no such priority",))
        none = cur.fetchone()[0]
    assert (urgent, low, none) == (exp_urgent, exp_low, exp_none)


def test_bound_integer_parameter(conn, tpch_lake_small):
    sql = "SELECT count(*) FROM orders WHERE o_custkey < ?"
    with conn.cursor() as cur:
        cur.adbc_prepare(sql)
        got = []
        for bound in (100, 700):
            cur.execute(sql, parameters=(bound,))
            got.append(cur.fetchone()[0])
    expected = [_pa_count(tpch_lake_small, "orders", ds.field("o_custkey") < b) for b in (100, 700)]
    assert expected[0] < expected[1]
    assert got == expected


def test_bound_float_and_two_parameters(conn, tpch_lake_small):
    sql = "SELECT count(*) FROM lineitem WHERE l_extendedprice > ? AND l_returnflag = ?"
    with conn.cursor() as cur:
        cur.execute(sql, parameters=(50000.5, "R"))
        got = cur.fetchone()[0]
    expected = _pa_count(tpch_lake_small, "lineitem",
                         (ds.field("l_extendedprice").cast("float64") > 50000.5)
                         & (ds.field("l_returnflag").cast("string") == "R"))
    assert expected > 0
    assert got == expected


def test_parameter_result_rows(conn, tpch_lake_small):
    """A parameter that selects rows (not only a count): values come back intact."""
    sql = "SELECT n_nationkey, n_name FROM nation WHERE n_regionkey = ? ORDER BY n_nationkey"
    with conn.cursor() as cur:
        cur.execute(sql, parameters=(3,))
        t = cur.fetch_arrow_table()
    nation = sorted((r["n_nationkey"], r["n_name"]) for r in
                    h.parquet_dataset(tpch_lake_small, "nation").to_table().to_pylist()
                    if r["n_regionkey"] == 3)
    assert len(nation) == 5
    assert list(zip(t.column(0).to_pylist(), t.column(1).to_pylist())) == nation


def test_million_row_fetch(big_conn, tpch_lake_big, capsys):
    dataset = h.parquet_dataset(tpch_lake_big, "lineitem")
    expected_rows = dataset.count_rows()
    assert expected_rows >= 1_000_000, f"SF 0.2 lineitem has only {expected_rows} rows"
    expected_sum = pc.sum(dataset.to_table(columns=["l_orderkey"])["l_orderkey"]).as_py()

    start = time.perf_counter()
    with big_conn.cursor() as cur:
        cur.execute("SELECT * FROM lineitem")
        table = cur.fetch_arrow_table()
    elapsed = time.perf_counter() - start

    mb = table.nbytes / 1e6
    line = (f"[lakelink-tests] SELECT * FROM lineitem (SF 0.2): {table.num_rows} rows, "
            f"{mb:.1f} MB (Arrow in memory) in {elapsed:.2f} s = "
            f"{table.num_rows / elapsed:,.0f} rows/s, {mb / elapsed:.1f} MB/s")
    with capsys.disabled():
        print("\n" + line)

    assert table.num_rows == expected_rows
    assert table.column_names == dataset.schema.names
    assert pc.sum(table["l_orderkey"]).as_py() == expected_sum, "l_orderkey checksum differs"
    # Every value of every column, as the Parquet files hold them (executors
    # forward their result files' Arrow IPC messages unchanged).
    local = dataset.to_table()
    local = pa.table([c.cast(f.type) for c, f in zip(local.columns, table.schema)], schema=table.schema)
    keys = [("l_orderkey", "ascending"), ("l_linenumber", "ascending")]
    assert table.sort_by(keys).equals(local.sort_by(keys)), "fetched rows differ from the Parquet files"


def test_result_files_are_removed_once_read(big_cluster, big_conn):
    """A result's files stay on the executors only until the client has read
    them (a large result would otherwise hold disk space for minutes)."""
    def arrow_files():
        return {p for ex in big_cluster.executors for p in ex.work_dir.rglob("*.arrow")}

    before = arrow_files()
    with big_conn.cursor() as cur:
        cur.execute("SELECT * FROM orders")
        assert cur.fetch_arrow_table().num_rows == h.parquet_dataset(big_cluster.lake, "orders").count_rows()
    h.wait_for(lambda: not (arrow_files() - before), 20, 0.2, "the result's files removed",
               lambda why: pytest.fail(f"{why}: {sorted(map(str, arrow_files() - before))}"))
