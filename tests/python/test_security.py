"""The doors of a running cluster, attacked with real clients (pyarrow's
Flight client and ADBC) against separate scheduler and executor processes:

* tickets: forged, modified, replayed and another user's are refused; a
  ticket carrying its own model settings no longer exists, so a session
  cannot point the executors at its own endpoint (the listener standing in
  for it receives nothing);
* executors' data ports: shuffle, follow and grant calls without the
  cluster secret are refused;
* parameters: more than one row, or more than 1 MiB, bound to a prepared
  statement is refused before it is read whole, while another client's
  query runs.

Each refusal is paired with the same call made the right way, so a test
cannot pass because the call itself was broken.
"""

from __future__ import annotations

import json
import socket
import threading

import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import lakelink_harness as h

_field = h.proto_field
any_message = h.any_message
command = h.statement_descriptor


def statement_ticket(handle: bytes) -> flight.Ticket:
    return flight.Ticket(any_message(h.TICKET_TYPE, _field(1, handle)))



def client(cluster: h.Cluster, token: str | None = None) -> tuple[flight.FlightClient, flight.FlightCallOptions]:
    c = cluster.flight_client()
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return c, flight.FlightCallOptions(headers=headers, timeout=120)


def read(c: flight.FlightClient, ticket: flight.Ticket, options) -> pa.Table:
    return c.do_get(ticket, options).read_all()


def refused(call) -> str:
    """Runs `call`, which must fail; the error's text. (pyarrow raises
    FlightError subclasses, or ArrowKeyError for NOT_FOUND.)"""
    try:
        result = call()
    except (flight.FlightError, pa.ArrowException) as e:
        return str(e)
    pytest.fail(f"the call went through: {result}")


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """The varint at `buf[i:]` and the index after it."""
    n, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _length_delimited(raw: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a protobuf message, by number."""
    fields, i = {}, 0
    while i < len(raw):
        key, i = _read_varint(raw, i)
        length, i = _read_varint(raw, i)
        fields[key >> 3] = raw[i:i + length]
        i += length
    return fields


def handle_of(ticket: flight.Ticket) -> bytes:
    """The statement handle inside a statement ticket: Any's value (field 2)
    is a TicketStatementQuery whose field 1 is the handle."""
    return _length_delimited(_length_delimited(ticket.ticket)[2])[1]


@pytest.fixture(scope="module")
def secure_cluster(tpch_lake_small, tmp_path_factory, auth_secrets):
    c = h.Cluster("secure", tpch_lake_small, tmp_path_factory.mktemp("cluster-secure"),
                  token=auth_secrets["token"], user=auth_secrets["user"], password=auth_secrets["password"],
                  scheduler_args=["--result-endpoints", "executors"])
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_tickets_are_opaque_one_time_and_their_owners(secure_cluster, auth_secrets):
    c, options = client(secure_cluster, auth_secrets["token"])
    info = c.get_flight_info(command("SELECT count(*) AS n FROM region"), options)
    ticket = info.endpoints[0].ticket
    # The client reads the result at the executor with its grant (executor
    # endpoints): replaying it fails, and the grant names no statement.
    at_executor = secure_cluster.flight_client(info.endpoints[0].locations[0])
    plain = flight.FlightCallOptions(timeout=60)
    assert read(at_executor, ticket, plain).column(0)[0].as_py() == 5
    assert "unknown result ticket" in refused(lambda: read(at_executor, ticket, plain))

    # A catalog query is answered by the scheduler behind a statement ticket.
    info = c.get_flight_info(command("SELECT table_name FROM information_schema.tables LIMIT 1"), options)
    ticket = info.endpoints[0].ticket
    handle = handle_of(ticket)
    assert handle.startswith(b"lakelink-statement:"), handle
    forged = [
        # What tickets used to carry: the statement and its settings, in the clear.
        statement_ticket(json.dumps({"sql": "SELECT 1", "params": None, "settings": [
            ["lakelink.llm.backend", "openai"], ["lakelink.llm.base_url", "http://127.0.0.1:9/v1"]]}).encode()),
        statement_ticket(b"lakelink-statement:" + b"0" * 64),
        statement_ticket(handle[:-1] + (b"0" if handle[-1:] != b"0" else b"1")),
    ]
    for bad in forged:
        assert "unknown, expired or already read ticket" in refused(lambda: read(c, bad, options))
    # Another user (the password login) cannot read the token user's ticket.
    with secure_cluster.connection(username=auth_secrets["user"], password=auth_secrets["password"]) as other:
        h.scalar(other, "SELECT 1")
    login = secure_cluster.flight_client()
    pair = login.authenticate_basic_token(auth_secrets["user"], auth_secrets["password"])
    other_options = flight.FlightCallOptions(headers=[pair], timeout=60)
    assert "unknown, expired or already read ticket" in refused(lambda: read(login, ticket, other_options))
    # Its owner reads it, once.
    assert read(c, ticket, options).num_rows == 1
    assert "unknown, expired or already read ticket" in refused(lambda: read(c, ticket, options))


def test_a_session_cannot_send_the_model_calls_elsewhere(secure_cluster, auth_secrets):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    contacted = []

    def watch():
        for _ in range(40):
            try:
                conn, _ = listener.accept()
                contacted.append(conn.recv(200))
                conn.close()
            except OSError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with secure_cluster.connection() as conn:
            with pytest.raises(adbc_driver_manager.Error) as err:
                h.query(conn, f"SET lakelink.llm.base_url = 'http://127.0.0.1:{port}/v1'")
            assert "fixed by the operator" in h.error_text(err.value)
        c, options = client(secure_cluster, auth_secrets["token"])
        forged = statement_ticket(json.dumps({"sql": "SELECT llm_complete('hello')", "settings": [
            ["lakelink.llm.backend", "openai"], ["lakelink.llm.model", "x"],
            ["lakelink.llm.base_url", f"http://127.0.0.1:{port}/v1"]]}).encode())
        assert "unknown, expired or already read ticket" in refused(lambda: read(c, forged, options))
    finally:
        watcher.join()
        listener.close()
    assert contacted == [], f"the listener was contacted: {contacted}"


def test_executor_data_ports_need_the_cluster_secret(secure_cluster):
    port = secure_cluster.executors[0].flight_port
    stranger = secure_cluster.flight_client(secure_cluster.member_port_uri(port))
    options = flight.FlightCallOptions(timeout=30)
    follow = b'lakelink-follow:{"job_id":"AAAAAAAAAAAAA","stage_id":1,"partition_id":0,"task_id":0}'
    for attempt in [lambda: stranger.do_get(flight.Ticket(follow), options).read_all(),
                    lambda: list(stranger.do_action(flight.Action("lakelink.grant_result", b"{}"), options)),
                    lambda: list(stranger.do_action(flight.Action("lakelink.revoke_grant", b"0" * 64), options)),
                    # Reading the host's model-call trail, cancelling someone's query.
                    lambda: list(stranger.do_action(flight.Action("lakelink.trail", b"{}"), options)),
                    lambda: list(stranger.do_action(flight.Action("lakelink.cancel_query", b"q-1"), options)),
                    lambda: list(stranger.list_flights(options=options)),
                    lambda: stranger.do_get(flight.Ticket(b"\x0a\x00"), options).read_all()]:
        assert "did not present the cluster secret" in refused(attempt)
    # The same port serves a member of the cluster: past the door, the
    # made-up partition is simply not there.
    secret = secure_cluster.secret_file.read_text().strip()
    member = secure_cluster.flight_client(secure_cluster.member_port_uri(port),
                                 generic_options=[("grpc.primary_user_agent", f"lakelink-cluster/{secret}")])
    missing = refused(lambda: member.do_get(flight.Ticket(follow), flight.FlightCallOptions(timeout=90)).read_all())
    assert "cluster secret" not in missing, missing
    # A member may read the trail (the scheduler does, for system.model_calls).
    chunks = list(member.do_action(flight.Action("lakelink.trail", b'{"since_ms": null, "needle": "no-such-query"}'),
                                   flight.FlightCallOptions(timeout=30)))
    assert chunks == [], chunks
    with pytest.raises(Exception) as bad:  # pyarrow: ArrowInvalid for INVALID_ARGUMENT
        list(member.do_action(flight.Action("lakelink.trail", b"not json"), flight.FlightCallOptions(timeout=30)))
    assert "malformed trail scan" in str(bad.value)


def test_parameters_are_bounded_and_others_keep_working(cluster):
    with cluster.connection() as conn, cluster.connection() as other:
        with conn.cursor() as cur:
            with pytest.raises(adbc_driver_manager.Error) as err:
                cur.execute("SELECT count(*) FROM region WHERE r_name = ?",
                            parameters=pa.record_batch([pa.array(["ASIA", "EUROPE"])], names=["p"]))
            assert "parameter rows" in h.error_text(err.value)
        with conn.cursor() as cur:
            with pytest.raises(adbc_driver_manager.Error) as err:
                cur.execute("SELECT count(*) FROM region WHERE r_name = ?", parameters=("x" * (2 * 1024 * 1024),))
            assert "more than 1048576 bytes" in h.error_text(err.value)
        assert h.scalar(other, "SELECT count(*) FROM region WHERE r_name = ?", ("ASIA",)) == 1
        assert h.scalar(conn, "SELECT count(*) FROM region WHERE r_name = ?", ("ASIA",)) == 1
