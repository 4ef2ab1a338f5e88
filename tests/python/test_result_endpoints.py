"""Results read from the executors (`lakelink-scheduler --result-endpoints
executors`): the ADBC driver follows the endpoints' locations with the session
token it logged in with, every ticket reads once, and the files go once read."""

from __future__ import annotations

import contextlib

import pyarrow as pa
import pyarrow.flight as flight
import pytest

import lakelink_harness as h


@pytest.fixture(scope="module")
def direct_cluster(tpch_lake_big, tmp_path_factory, auth_secrets):
    c = h.Cluster("direct", tpch_lake_big, tmp_path_factory.mktemp("cluster-direct"),
                  user=auth_secrets["user"], password=auth_secrets["password"],
                  scheduler_args=["--result-endpoints", "executors"])
    try:
        c.start()
        yield c
    finally:
        c.stop()


def statement_info(cluster: h.Cluster, sql: str) -> flight.FlightInfo:
    """The FlightInfo of a Flight SQL statement, asked with a plain Flight client."""
    client = cluster.flight_client()
    header = client.authenticate_basic_token(cluster.user, cluster.password)
    options = flight.FlightCallOptions(headers=[header])
    return client.get_flight_info(h.statement_descriptor(sql), options)


def read_endpoint(cluster: h.Cluster, endpoint: flight.FlightEndpoint) -> pa.Table:
    client = cluster.flight_client(endpoint.locations[0].uri.decode())
    return client.do_get(endpoint.ticket).read_all()


def test_adbc_reads_a_large_result_from_the_executors(direct_cluster):
    def arrow_files():
        return {p for ex in direct_cluster.executors for p in ex.work_dir.rglob("*.arrow")}

    before = arrow_files()
    with direct_cluster.connection() as conn:
        table = h.query(conn, "SELECT * FROM orders")
        local = h.parquet_dataset(direct_cluster.lake, "orders").to_table()
        assert table.num_rows == local.num_rows
        local = pa.table([c.cast(f.type) for c, f in zip(local.columns, table.schema)], schema=table.schema)
        keys = [("o_orderkey", "ascending")]
        assert table.sort_by(keys).equals(local.sort_by(keys)), "fetched rows differ from the Parquet files"
        ordered = h.query(conn, "SELECT o_orderkey FROM orders ORDER BY o_orderkey DESC")
        assert ordered.column(0).to_pylist() == sorted(local.column("o_orderkey").to_pylist(), reverse=True)
        assert h.scalar(conn, "SELECT count(*) FROM lineitem WHERE l_quantity > 10") > 0
    h.wait_for(lambda: not (arrow_files() - before), 20, 0.2, "the result's files removed",
               lambda why: pytest.fail(f"{why}: {sorted(map(str, arrow_files() - before))}"))


def test_endpoints_are_the_executors_and_a_ticket_reads_once(direct_cluster):
    info = statement_info(direct_cluster, "SELECT o_orderkey, o_comment FROM orders")
    executor_ports = {ex.flight_port for ex in direct_cluster.executors}
    assert len(info.endpoints) >= 2, "one endpoint per result file"
    assert {int(e.locations[0].uri.decode().rsplit(":", 1)[1]) for e in info.endpoints} <= executor_ports
    rows = sum(read_endpoint(direct_cluster, e).num_rows for e in info.endpoints)
    assert rows == h.parquet_dataset(direct_cluster.lake, "orders").count_rows()
    # Each ticket is good for one read, and a made-up one for none; the
    # error says what to do.
    for ticket in [info.endpoints[0].ticket, flight.Ticket(b"lakelink-result:0123456789abcdef")]:
        with pytest.raises((flight.FlightError, pa.ArrowKeyError)) as failure:  # NOT_FOUND
            read_endpoint(direct_cluster, flight.FlightEndpoint(ticket, info.endpoints[0].locations))
        assert "unknown result ticket" in str(failure.value)
        assert "run the statement again" in str(failure.value)
    # The cluster goes on answering.
    with direct_cluster.connection() as conn:
        assert h.scalar(conn, "SELECT count(*) FROM nation") == 25


def test_a_client_that_ignores_locations_is_told_so(direct_cluster):
    """A client reading an executor's ticket from the scheduler (as
    flightsql-dbapi does, which Superset uses) gets an error that names the
    cause and the scheduler flag, not a protobuf decoding error; the ticket
    itself stays good at its executor."""
    info = statement_info(direct_cluster, "SELECT o_orderkey FROM orders")
    client = direct_cluster.flight_client()
    header = client.authenticate_basic_token(direct_cluster.user, direct_cluster.password)
    options = flight.FlightCallOptions(headers=[header])
    with pytest.raises((flight.FlightError, pa.ArrowInvalid)) as failure:  # INVALID_ARGUMENT
        client.do_get(info.endpoints[0].ticket, options).read_all()
    text = str(failure.value)
    assert "executor's result endpoint" in text and "--result-endpoints scheduler" in text, text
    assert "DecodeError" not in text, text
    # Without a credential the scheduler refuses before looking at the ticket.
    with pytest.raises((flight.FlightError, pa.ArrowInvalid)) as anonymous:
        client.do_get(info.endpoints[0].ticket).read_all()
    assert "executor's result endpoint" not in str(anonymous.value), str(anonymous.value)
    assert isinstance(anonymous.value, flight.FlightUnauthenticatedError), str(anonymous.value)
    rows = sum(read_endpoint(direct_cluster, e).num_rows for e in info.endpoints)
    assert rows == h.parquet_dataset(direct_cluster.lake, "orders").count_rows()
