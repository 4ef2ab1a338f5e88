"""Bounded resources: a statement that runs too long, returns too much or
holds too much memory fails alone with an error naming the flag, while
another client's statement succeeds at the same time; results nobody reads
do not fill an executor's disk past its cap (past it, results pass through
the scheduler)."""

from __future__ import annotations

import threading
import time

import pytest
from pyarrow import flight

import lakelink_harness as h


@pytest.fixture(scope="module")
def bounded(tpch_lake_small, tmp_path_factory):
    c = h.Cluster("bounded", tpch_lake_small, tmp_path_factory.mktemp("cluster-bounded"),
                  scheduler_args=["--query-timeout", "4", "--max-result-size", "1MiB", "--query-memory", "16MiB"],
                  executor_args=["--memory-pool", "24MiB"])
    c.start()
    try:
        yield c
    finally:
        c.stop()


def fails_alone(cluster: h.Cluster, bomb: str) -> str:
    """Runs `bomb` on one connection while another keeps answering; the
    bomb's error text."""
    answered: list[int] = []
    stop = threading.Event()

    def other() -> None:
        with cluster.connection() as conn:
            while not stop.is_set():
                answered.append(h.scalar(conn, "SELECT count(*) FROM nation"))

    t = threading.Thread(target=other)
    t.start()
    try:
        with cluster.connection() as conn, pytest.raises(Exception) as failure:
            h.query(conn, bomb)
    finally:
        stop.set()
        t.join(120)
    assert answered and set(answered) == {25}, "the other client's statements answered"
    with cluster.connection() as conn:
        assert h.scalar(conn, "SELECT count(*) FROM region") == 5, "the cluster serves after the bomb"
    return h.error_text(failure.value)


def test_a_statement_past_the_timeout_is_cancelled(bounded):
    err = fails_alone(bounded, "SELECT count(*) FROM lineitem a, lineitem b WHERE a.l_comment < b.l_comment")
    assert "--query-timeout" in err, err


def test_a_result_past_the_size_cap_is_cut(bounded):
    err = fails_alone(bounded, "SELECT * FROM lineitem")
    assert "--max-result-size" in err, err
    with bounded.connection() as conn:
        assert h.scalar(conn, "SELECT count(*) FROM lineitem") == h.parquet_dataset(bounded.lake, "lineitem").count_rows()


def test_a_memory_bomb_in_the_scheduler_fails_alone(bounded):
    # A catalog-only statement runs in the scheduler, under --query-memory.
    bomb = ("SELECT cardinality(array_agg(repeat(a.column_name, 1000))) "
            "FROM information_schema.columns a, information_schema.columns b")
    err = fails_alone(bounded, bomb)
    assert "--query-memory" in err, err


def test_a_memory_bomb_on_the_executors_fails_alone(bounded):
    bomb = "SELECT cardinality(array_agg(repeat(l_comment, 20))) FROM lineitem"
    err = fails_alone(bounded, bomb)
    assert "--memory-pool" in err and "Failed to allocate" in err, err


def test_unread_results_stay_under_the_executors_cap(tpch_lake_small, tmp_path_factory):
    cap = 256 * 1024
    c = h.Cluster("unread", tpch_lake_small, tmp_path_factory.mktemp("cluster-unread"),
                  scheduler_args=["--result-endpoints", "executors"],
                  executor_args=["--max-unread-results", str(cap)])
    c.start()
    try:
        client = c.flight_client()
        options = flight.FlightCallOptions(headers=c.flight_headers(), timeout=120)

        def held(ex) -> int:
            return sum(p.stat().st_size for p in (ex.work_dir / "lakelink-results").glob("*.arrow"))

        def settled() -> list[int]:
            """What each executor holds once the granted files stop growing."""
            before = None
            while True:
                now = [held(ex) for ex in c.executors]
                if now == before:
                    return now
                before = now
                time.sleep(0.5)

        one_result = 0
        infos = []
        for i in range(12):  # each asks for all of lineitem, never read
            info = client.get_flight_info(h.statement_descriptor("SELECT * FROM lineitem"), options)
            infos.append(info)
            if i == 0:
                one_result = max(settled())
            if not info.endpoints[0].locations:
                break  # passed through the scheduler: the executors are full
        through_scheduler = infos[-1]
        assert not through_scheduler.endpoints[0].locations, "the executors kept granting past their cap"
        # Checked before each grant: at most one statement's files past the cap.
        for ex, bytes_held in zip(c.executors, settled()):
            assert bytes_held <= cap + one_result, f"{ex.name} holds {bytes_held} bytes of unread results"
        rows = h.parquet_dataset(c.lake, "lineitem").count_rows()
        # Meanwhile other statements are answered, through the scheduler.
        with c.connection() as conn:
            assert h.scalar(conn, "SELECT count(*) FROM region") == 5
        assert client.do_get(through_scheduler.endpoints[0].ticket, options).read_all().num_rows == rows
        # Reading the granted results frees the executors: results are
        # granted there again.
        for info in infos[:-1]:
            read = sum(c.flight_client(e.locations[0]).do_get(e.ticket).read_all().num_rows for e in info.endpoints)
            assert read == rows
        again = client.get_flight_info(h.statement_descriptor("SELECT * FROM lineitem"), options)
        assert all(e.locations for e in again.endpoints), "granted at the executors once read"
        assert sum(c.flight_client(e.locations[0]).do_get(e.ticket).read_all().num_rows for e in again.endpoints) == rows
        with c.connection() as conn:
            assert h.scalar(conn, "SELECT count(*) FROM region") == 5
    finally:
        c.stop()


def test_one_client_address_runs_at_most_its_share_of_statements(cluster_factory, tpch_lake_big):
    c = cluster_factory("capped", tpch_lake_big, executors=1)
    c.stop()
    c.scheduler_args = ["--max-client-statements", "2"]
    c.executors.clear()
    c.start()
    # Two results left unread keep their statements running.
    conns = [c.connect() for _ in range(2)]
    cursors = [conn.cursor() for conn in conns]
    try:
        for cur in cursors:
            cur.execute("SELECT * FROM lineitem")
        time.sleep(1)
        with c.connection() as third:
            with pytest.raises(Exception) as refused:
                h.scalar(third, "SELECT count(*) FROM orders WHERE o_orderkey > 0")
            text = h.error_text(refused.value)
            assert "--max-client-statements" in text, text
            # Reading one result to its end frees its slot.
            assert cursors[0].fetch_arrow_table().num_rows == h.parquet_dataset(tpch_lake_big, "lineitem").count_rows()
            h.wait_for(lambda: h.scalar(third, "SELECT count(*) FROM orders WHERE o_orderkey > 0") > 0, 30, 0.5,
                       "a statement after another ended", lambda why: pytest.fail(f"{why}\n{c.logs()}"))
    finally:
        for cur, conn in zip(cursors, conns):
            cur.close()
            conn.close()
