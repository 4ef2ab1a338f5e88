"""TLS: the scheduler's client port and the executors' data ports speak
grpc+tls:// with the operator's certificate; clients check it against a CA;
a plaintext client or one trusting another CA gets nothing; auth on a
non-loopback address without TLS, or with an empty token, is refused at start."""

from __future__ import annotations

import subprocess
import time

import pyarrow as pa
import pytest
from pyarrow import flight

import lakelink_harness as h


@pytest.fixture(scope="module")
def tls_cluster(tpch_lake_small, tmp_path_factory, auth_secrets):
    """TLS everywhere, a token, and results read from the executors."""
    c = h.Cluster("tls", tpch_lake_small, tmp_path_factory.mktemp("cluster-tls"), tls=True,
                  token=auth_secrets["token"], scheduler_args=["--result-endpoints", "executors"])
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_adbc_over_tls_with_the_ca(tls_cluster):
    assert tls_cluster.uri.startswith("grpc+tls://")
    with tls_cluster.connection() as conn:
        table = h.query(conn, "SELECT o_orderkey, o_comment FROM orders")
        assert table.num_rows == h.parquet_dataset(tls_cluster.lake, "orders").count_rows()
        assert h.scalar(conn, "SELECT count(*) FROM nation") == 25


def test_a_plaintext_client_gets_nothing(tls_cluster):
    plain = tls_cluster.uri.replace("grpc+tls://", "grpc://")
    with pytest.raises(Exception) as failure:
        conn = h.adbc_connect(plain, token=tls_cluster.token, rpc_timeout=15)
        try:
            h.scalar(conn, "SELECT 1")
        finally:
            conn.close()
    assert "25" not in h.error_text(failure.value)
    # The executors' data ports are TLS too.
    for ex in tls_cluster.executors:
        c = flight.FlightClient(f"grpc+tcp://127.0.0.1:{ex.flight_port}")
        with pytest.raises(flight.FlightError):
            c.do_get(flight.Ticket(b"lakelink-result:0123456789abcdef"),
                     flight.FlightCallOptions(timeout=15)).read_all()


def test_a_client_trusting_another_ca_gets_nothing(tls_cluster, tmp_path):
    other = h.make_tls_files(tmp_path / "other", "other-ca")
    with pytest.raises(Exception) as failure:
        conn = h.adbc_connect(tls_cluster.uri, token=tls_cluster.token, rpc_timeout=15,
                              extra={"adbc.flight.sql.client_option.tls_root_certs": other.ca_pem.decode()})
        try:
            h.scalar(conn, "SELECT 1")
        finally:
            conn.close()
    assert "certificate" in h.error_text(failure.value).lower()
    # Nor does an executor serve a client that does not trust it.
    ex = tls_cluster.executors[0]
    c = flight.FlightClient(f"grpc+tls://127.0.0.1:{ex.flight_port}", tls_root_certs=other.ca_pem)
    with pytest.raises(flight.FlightError):
        c.do_get(flight.Ticket(b"lakelink-result:0123456789abcdef"), flight.FlightCallOptions(timeout=15)).read_all()


def _shell(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([h.binary("lakelink"), *args, "-c", "SELECT count(*) AS n FROM region", "--format", "csv"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_the_shell_over_tls(tls_cluster):
    ok = _shell(tls_cluster.shell_args())
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["n", "5"]
    # Without the CA the shell checks against the system's roots, which do
    # not know this cluster's CA.
    refused = _shell(["--host", tls_cluster.uri, "--token", tls_cluster.token])
    assert refused.returncode != 0, refused.stdout
    assert "certificate" in refused.stderr.lower() or "tls" in refused.stderr.lower(), refused.stderr


def test_a_token_is_no_credential_at_an_executor(tls_cluster):
    """An executor's data port admits a client read by its grant only: the
    client's token with no grant gets nothing, and the shell, which sends
    its token to the scheduler alone, reads its results there."""
    ex = tls_cluster.executors[0]
    c = tls_cluster.flight_client(f"grpc+tls://127.0.0.1:{ex.flight_port}")
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {tls_cluster.token}".encode())],
                                       timeout=15)
    with pytest.raises((flight.FlightError, pa.ArrowKeyError)):
        c.do_get(flight.Ticket(b"lakelink-result:0123456789abcdef"), options).read_all()
    ok = _shell(tls_cluster.shell_args())
    assert ok.returncode == 0, ok.stderr


def _scheduler_refuses(tpch_lake_small, tmp_path, *args: str, secret_mode: int = 0o600) -> str:
    secret = tmp_path / "cluster.secret"
    secret.write_text("s" * 48)
    secret.chmod(secret_mode)
    port, cluster_port = h.free_ports(2)
    res = subprocess.run([h.binary("lakelink-scheduler"), "--lake", str(tpch_lake_small), "--port", str(port),
                          "--cluster-port", str(cluster_port), "--cluster-secret-file", str(secret), *args],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode != 0, f"the scheduler started with {args}: {res.stderr}"
    return res.stderr


def test_auth_without_tls_beyond_loopback_is_refused_at_start(tpch_lake_small, tmp_path):
    err = _scheduler_refuses(tpch_lake_small, tmp_path, "--bind", "0.0.0.0", "--auth-token", "t" * 32)
    assert "--allow-plaintext-auth" in err and "--tls-cert" in err, err


def test_a_plaintext_cluster_beyond_loopback_is_refused_at_start(tpch_lake_small, tmp_path):
    err = _scheduler_refuses(tpch_lake_small, tmp_path, "--bind", "0.0.0.0")
    assert "--allow-plaintext-cluster" in err and "--tls-cert" in err, err
    secret = tmp_path / "cluster.secret"
    for args in (["--bind", "0.0.0.0", "--scheduler", "127.0.0.1:1"], ["--bind", "127.0.0.1", "--scheduler", "192.0.2.1:50051"]):
        res = subprocess.run([h.binary("lakelink-executor"), "--cluster-secret-file", str(secret), *args],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode != 0 and "--allow-plaintext-cluster" in res.stderr, (args, res.stderr)


def test_an_empty_token_is_refused_at_start(tpch_lake_small, tmp_path):
    err = _scheduler_refuses(tpch_lake_small, tmp_path, "--bind", "127.0.0.1", "--auth-token", "")
    assert "empty" in err.lower(), err
    err = _scheduler_refuses(tpch_lake_small, tmp_path, "--bind", "127.0.0.1", "--auth-token", "   ")
    assert "empty" in err.lower(), err


def test_a_tls_certificate_needs_its_ca(tpch_lake_small, tmp_path):
    files = h.make_tls_files(tmp_path / "tls")
    err = _scheduler_refuses(tpch_lake_small, tmp_path, "--bind", "127.0.0.1", "--tls-cert", str(files.cert),
                             "--tls-key", str(files.key))
    assert "--tls-ca" in err, err


def test_push_scheduling_with_tls_is_refused(tpch_lake_small, tmp_path):
    files = h.make_tls_files(tmp_path / "tls")
    err = _scheduler_refuses(tpch_lake_small, tmp_path, "--bind", "127.0.0.1", "--scheduling", "push",
                             "--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca))
    assert "push scheduling cannot use TLS" in err, err


def test_a_secret_file_others_may_read_is_refused(tpch_lake_small, tmp_path):
    err = _scheduler_refuses(tpch_lake_small, tmp_path, "--bind", "127.0.0.1", secret_mode=0o644)
    assert "chmod 600" in err, err


def test_an_executor_waits_for_the_secret_its_scheduler_writes(tpch_lake_small, tmp_path):
    """Started first, an executor waits for the default secret file (HOME of
    its own) that the scheduler started after it writes."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    c = h.Cluster("secret-wait", tpch_lake_small, tmp_path / "cluster", executors_wanted=0, env=env, tls=False)
    c.token = None  # started below without credentials, whatever the suite's mode
    port, cluster_port, fport, gport = h.free_ports(4)
    executor = h.Proc("executor-first", [h.binary("lakelink-executor"), "--scheduler", f"127.0.0.1:{cluster_port}",
                                         "--port", str(fport), "--grpc-port", str(gport), "--bind", "127.0.0.1"],
                      tmp_path / "executor.log", env=env).start(tmp_path)
    try:
        time.sleep(1.0)
        assert executor.alive(), executor.describe(40)
        scheduler = h.Proc("scheduler", [h.binary("lakelink-scheduler"), "--lake", str(tpch_lake_small),
                                         "--port", str(port), "--cluster-port", str(cluster_port),
                                         "--bind", "127.0.0.1"], tmp_path / "scheduler.log", env=env).start(tmp_path)
        try:
            c.port = port
            c.wait_ready()
            with c.connection() as conn:
                assert h.scalar(conn, "SELECT count(*) FROM nation") == 25
            secret = home / ".config" / "lakelink" / "cluster.secret"
            assert secret.stat().st_mode & 0o777 == 0o600
        finally:
            scheduler.stop()
    finally:
        executor.stop()
