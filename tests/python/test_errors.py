"""Error paths: bad SQL, unknown tables, corrupt files, a killed executor."""

from __future__ import annotations

import threading
import time

import adbc_driver_manager
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import lakelink_harness as h


def _error_of(conn, sql: str) -> str:
    with pytest.raises(adbc_driver_manager.Error) as info:
        t = h.query(conn, sql)
        pytest.fail(f"{sql!r} unexpectedly answered: {t}", pytrace=False)
    return h.error_text(info.value)


def _still_answers(conn, lake) -> None:
    expected = h.parquet_dataset(lake, "nation").count_rows()
    assert h.scalar(conn, "SELECT count(*) FROM nation") == expected


def test_malformed_sql(conn, tpch_lake_small):
    text = _error_of(conn, "SELEC n_name FROM nation")
    h.assert_informative(text)
    low = text.lower()
    assert any(w in low for w in ("parser", "syntax", "expected")), text
    assert "selec" in low, f"error does not point at the bad token: {text}"
    _still_answers(conn, tpch_lake_small)

    text = _error_of(conn, "SELECT n_name FROM nation WHERE")
    h.assert_informative(text)
    assert any(w in text.lower() for w in ("parser", "syntax", "expected")), text
    _still_answers(conn, tpch_lake_small)


def test_unknown_table(conn, tpch_lake_small):
    text = _error_of(conn, "SELECT * FROM no_such_table_xyz")
    h.assert_informative(text)
    assert "no_such_table_xyz" in text.lower(), text
    assert any(w in text.lower() for w in ("not found", "does not exist", "unknown")), text
    _still_answers(conn, tpch_lake_small)


def test_unknown_column(conn, tpch_lake_small):
    text = _error_of(conn, "SELECT no_such_col_q FROM nation")
    h.assert_informative(text)
    assert "no_such_col_q" in text.lower(), text
    _still_answers(conn, tpch_lake_small)


def test_runtime_error(conn, tpch_lake_small):
    """An error raised while executing (not planning) on the executors."""
    text = _error_of(conn, "SELECT CAST(n_name AS INT) FROM nation")
    h.assert_informative(text)
    assert any(w in text.lower() for w in ("cast", "parse", "int")), text
    _still_answers(conn, tpch_lake_small)


def test_error_with_bad_parameter_count(conn, tpch_lake_small):
    with pytest.raises(adbc_driver_manager.Error) as info:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders WHERE o_orderpriority = ? AND o_custkey = ?",
                        parameters=("1-URGENT",))
            cur.fetchall()
    h.assert_informative(h.error_text(info.value))
    _still_answers(conn, tpch_lake_small)


def test_corrupt_parquet_table(cluster_factory, tmp_path):
    lake = tmp_path / "lake"
    (lake / "good").mkdir(parents=True)
    (lake / "broken").mkdir()
    good = pa.table({"id": pa.array(range(1000), pa.int64()),
                     "name": pa.array([f"n{i}" for i in range(1000)])})
    pq.write_table(good, lake / "good" / "part-0.parquet")
    (lake / "broken" / "part-0.parquet").write_bytes(
        b"this is not a parquet file \x00\x01\x02" * 40)

    c = cluster_factory("corrupt", lake, executors=1)
    conn = c.connect(rpc_timeout=120)
    try:
        assert h.scalar(conn, "SELECT count(*) FROM good") == 1000
        text = _error_of(conn, "SELECT * FROM broken")
        h.assert_informative(text)
        low = text.lower()
        assert "broken" in low or "part-0.parquet" in low, (
            f"error names neither the table nor the file: {text}")
        # The good table still answers, on the same connection.
        assert h.scalar(conn, "SELECT sum(id) FROM good") == sum(range(1000))
        text = _error_of(conn, "SELECT count(*) FROM broken")
        assert "broken" in text.lower() or "part-0.parquet" in text.lower(), text
        assert h.scalar(conn, "SELECT count(*) FROM good WHERE id < 10") == 10
    finally:
        conn.close()
    assert c.scheduler.alive(), c.logs()


def test_executor_killed_before_query(cluster_factory, tpch_lake_small, capsys):
    c = cluster_factory("kill", tpch_lake_small, executors=2)
    li = h.parquet_dataset(tpch_lake_small, "lineitem")
    expected = {}
    for row in li.to_table(columns=["l_returnflag"]).group_by("l_returnflag").aggregate(
            [([], "count_all")]).to_pylist():
        expected[row["l_returnflag"]] = row["count_all"]
    sql = ("SELECT l_returnflag, count(*) AS n FROM lineitem "
           "GROUP BY l_returnflag ORDER BY l_returnflag")

    victim = c.executors[0]
    victim.kill()
    assert not victim.alive()

    outcome: dict = {}

    def run():
        try:
            conn = c.connect(rpc_timeout=120)
            try:
                outcome["table"] = h.query(conn, sql)
            finally:
                conn.close()
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    started = time.monotonic()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(125)
    elapsed = time.monotonic() - started
    assert not th.is_alive(), (
        f"query neither finished nor failed within 120 s after an executor was killed\n"
        + c.logs(30))
    with capsys.disabled():
        print(f"\n[lakelink-tests] query after SIGKILL of one executor: "
              f"{'answered' if 'table' in outcome else 'failed'} in {elapsed:.1f} s"
              + (f": {h.error_text(outcome['error'])}" if "error" in outcome else ""))
    if "table" in outcome:
        got = {r["l_returnflag"]: r["n"] for r in outcome["table"].to_pylist()}
        assert got == expected, "query answered after executor loss, but wrongly"
    else:
        h.assert_informative(h.error_text(outcome["error"]))

    # The cluster answers the next query (retry up to 60 s).
    deadline = time.monotonic() + 60
    last = None
    while True:
        try:
            conn = c.connect(rpc_timeout=60)
            try:
                t = h.query(conn, sql)
            finally:
                conn.close()
            got = {r["l_returnflag"]: r["n"] for r in t.to_pylist()}
            assert got == expected
            break
        except adbc_driver_manager.Error as exc:
            last = exc
            if time.monotonic() > deadline:
                pytest.fail(f"cluster did not answer within 60 s after losing an executor: "
                            f"{h.error_text(last)}\n{c.logs(30)}", pytrace=False)
            time.sleep(1)
    assert c.scheduler.alive() and c.executors[1].alive(), c.logs(30)


def test_connection_survives_many_errors(conn, tpch_lake_small):
    for i in range(5):
        _error_of(conn, f"SELECT * FROM missing_{i}")
        _error_of(conn, "SELECT 1 +")
    _still_answers(conn, tpch_lake_small)
    expected = h.parquet_dataset(tpch_lake_small, "orders").count_rows(
        filter=ds.field("o_orderstatus").cast("string") == "F")
    assert h.scalar(conn, "SELECT count(*) FROM orders WHERE o_orderstatus = 'F'") == expected
