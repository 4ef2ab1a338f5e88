"""A cluster on three hosts with nothing shared on disk.

The scheduler and two executors each run in a network namespace of their own
(their own address on a bridge, their own host name, HOME, work and trail
folders, and their own copy of the cluster secret); the lake is on moto's S3
server and the scripted model double listens on the bridge. Needs root (or
CAP_NET_ADMIN) for `ip netns`; skipped with the reason where namespaces
cannot be made.
"""

from __future__ import annotations

import random
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import lakelink_harness as h
from test_llm import ScriptedModel, point_at
from test_object_store import BUCKET, QUERY_DIR, S3

pytest.importorskip("moto", reason="moto[server] is in tests/python/requirements.txt")

RPC_TIMEOUT = 300


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Hosts:
    """A bridge with an address for the test (`.1`) and one namespace per host."""

    def __init__(self, names: list[str]):
        self.tag = secrets.token_hex(2)
        self.net = f"10.213.{random.randint(1, 250)}"
        self.bridge = f"llbr{self.tag}"
        self.names = names
        self.ns: dict[str, str] = {}
        self.addr: dict[str, str] = {}
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            pytest.skip(f"network namespaces cannot be made here: {getattr(e, 'stderr', e)}")
        try:
            _ip("addr", "add", f"{self.net}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, name in enumerate(names):
                ns, outside, inside = f"ll{self.tag}{name}", f"ll{self.tag}{i}o", f"ll{self.tag}{i}i"
                _ip("netns", "add", ns)
                self.ns[name] = ns
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                self.addr[name] = f"{self.net}.{10 + i}"
                _ip("-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as e:
            self.close()
            pytest.skip(f"network namespaces cannot be set up here: {e.stderr}")

    @property
    def outside(self) -> str:
        return f"{self.net}.1"

    def command(self, name: str, cmd: list[str]) -> list[str]:
        """`cmd` run in host `name`'s namespace, under its own host name."""
        return ["ip", "netns", "exec", self.ns[name], "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', f"ll-{name}", *cmd]

    def close(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class MultiHostCluster:
    def __init__(self, hosts: Hosts, s3: S3, lake: str, workdir: Path):
        self.hosts, self.workdir = hosts, workdir
        secret = secrets.token_hex(24) + "\n"
        self.procs: dict[str, h.Proc] = {}
        sched = hosts.addr["sched"]
        self.uri = f"grpc://{sched}:50050"
        for name in ["sched", "ex1", "ex2"]:
            home = workdir / name
            home.mkdir(parents=True)
            secret_file = home / "cluster.secret"
            secret_file.write_text(secret)
            secret_file.chmod(0o600)
            env = {**s3.env(f"http://{hosts.outside}:{s3.port}"), "HOME": str(home),
                   "LAKELINK_LLM_TRAIL_DIR": str(home / "trail"),
                   "LAKELINK_LLM_CACHE_DIR": str(home / "llm-cache"),
                   "LAKELINK_LLM_ALLOW_SESSION_ENDPOINTS": "true"}
            if name == "sched":
                cmd = [h.binary("lakelink-scheduler"), "--lake", lake, "--bind", sched, "--port", "50050",
                       "--cluster-port", "50051", "--cluster-secret-file", str(secret_file), "--allow-plaintext-cluster"]
            else:
                me = hosts.addr[name]
                cmd = [h.binary("lakelink-executor"), "--scheduler", f"{sched}:50051", "--bind", me,
                       "--external-host", me, "--port", "50052", "--grpc-port", "50053",
                       "--cluster-secret-file", str(secret_file), "--work-dir", str(home / "work"),
                       "--allow-plaintext-cluster"]
            self.procs[name] = h.Proc(name, hosts.command(name, cmd), workdir / f"{name}.log", env=env).start(home)
            if name == "sched":
                time.sleep(1.0)
        h.wait_for(self._ready, 120, 0.5, "the three-host cluster", lambda why: pytest.fail(f"{why}\n{self.logs()}"))

    def _ready(self) -> bool:
        for p in self.procs.values():
            if not p.alive():
                pytest.fail(f"{p.name} exited\n{self.logs()}")
        with self.connect() as conn:
            return h.scalar(conn, "SELECT count(*) FROM region") == 5

    def connect(self):
        return h.adbc_connect(self.uri, rpc_timeout=RPC_TIMEOUT)

    def logs(self) -> str:
        return "\n".join(p.describe(40) for p in self.procs.values())

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()


@pytest.fixture(scope="module")
def hosts():
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("`ip` and `unshare` are needed for the multi-host test")
    hs = Hosts(["sched", "ex1", "ex2"])
    try:
        yield hs
    finally:
        hs.close()


@pytest.fixture(scope="module")
def s3_on_bridge(hosts, tmp_path_factory):
    server = S3(tmp_path_factory.mktemp("moto-bridge"), host=hosts.outside)
    try:
        yield server
    finally:
        server.proc.stop()


@pytest.fixture(scope="module")
def three_hosts(hosts, s3_on_bridge, tpch_lake_small, tmp_path_factory):
    s3_on_bridge.upload_folder(tpch_lake_small, "tpch")
    c = MultiHostCluster(hosts, s3_on_bridge, f"s3://{BUCKET}/tpch", tmp_path_factory.mktemp("three-hosts"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def bridge_model(hosts):
    m = ScriptedModel(host=hosts.outside).start()
    try:
        yield m
    finally:
        m.stop()


def test_tpch_on_three_hosts_equals_datafusion(three_hosts, tpch_lake_small):
    with three_hosts.connect() as conn:
        for n in range(1, 23):
            sql = (QUERY_DIR / f"q{n}.sql").read_text()
            statement = [s for s in h.split_statements(sql) if h.returns_rows(s)][-1]
            h.compare_results(h.adbc_run(conn, sql), h.reference_run(tpch_lake_small, sql), statement)
    # Both executors took part: each wrote shuffle files in its own folder.
    for name in ["ex1", "ex2"]:
        work = three_hosts.workdir / name / "work"
        assert any(work.rglob("*")), f"{name} ran no task\n{three_hosts.logs()}"


def test_model_calls_of_other_hosts_reach_the_scheduler(three_hosts, bridge_model):
    with three_hosts.connect() as conn:
        point_at(conn, bridge_model, "SET lakelink.llm.cache = false")
        before = bridge_model.count()
        n = h.scalar(conn, "SELECT count(*) FROM part WHERE llm_filter(p_name, 'the name mentions green')")
        asked = bridge_model.count() - before
        assert asked > 0, "the filter asked the model nothing"
        assert 0 <= n <= h.scalar(conn, "SELECT count(*) FROM part")
        rows = h.query(conn, "SELECT split_part(process, ':', 1) AS host, count(*) AS calls FROM system.model_calls "
                             "WHERE function = 'llm_filter' AND NOT cache_hit GROUP BY 1 ORDER BY 1").to_pylist()
    hosts = {r["host"] for r in rows}
    assert hosts and hosts <= {"ll-ex1", "ll-ex2"}, rows
    assert sum(r["calls"] for r in rows) == asked, (rows, asked)
    # The scheduler's own trail folder holds none of them: they came over the network.
    assert not any((three_hosts.workdir / "sched" / "trail").glob("*.jsonl"))


def test_a_value_on_both_hosts_is_asked_once(three_hosts, bridge_model):
    # lineitem's few ship modes are in every partition, read on both hosts;
    # the scheduler's ledger lets one process ask each.
    with three_hosts.connect() as conn:
        point_at(conn, bridge_model, "SET lakelink.llm.cache = false")
        modes = h.scalar(conn, "SELECT count(DISTINCT l_shipmode) FROM lineitem")
        before = bridge_model.count()
        n = h.scalar(conn, "SELECT count(*) FROM lineitem WHERE llm_filter(l_shipmode, 'the mode is good')")
        assert n == 0  # the scripted model says yes to texts with "good" only
        asked = sorted(c["user"] for c in bridge_model.row_chats(before))
        assert len(asked) == modes == len(set(asked)), asked


def test_an_abandoned_query_stops_its_model_calls_on_every_host(three_hosts, bridge_model):
    conn = three_hosts.connect()
    point_at(conn, bridge_model, "SET lakelink.llm.cache = false")
    bridge_model.delay = 0.3
    before = bridge_model.count()
    cursor = conn.cursor()
    failure: list[BaseException] = []

    def run():
        try:
            cursor.execute("SELECT count(*) FROM partsupp WHERE llm_filter(ps_comment, 'the comment is cheerful')")
            cursor.fetchall()
        except BaseException as e:  # noqa: BLE001 - the cancelled call's error is expected
            failure.append(e)

    t = threading.Thread(target=run)
    try:
        t.start()
        h.wait_for(lambda: bridge_model.count() - before >= 6, 120, 0.2, "model calls to start",
                   lambda why: pytest.fail(f"{why}\n{three_hosts.logs()}"))
        cursor.adbc_cancel()
        t.join(60)
        assert not t.is_alive(), "the cancelled statement did not return"
        time.sleep(3)  # calls in flight end
        settled = bridge_model.count()
        time.sleep(4)
        later = bridge_model.count()
        distinct = 8000  # partsupp comments at SF 0.01, nearly all distinct
        assert later == settled, f"{later - settled} model calls after the query was abandoned"
        assert settled - before < distinct / 4, settled - before
    finally:
        bridge_model.delay = 0.0
        t.join(60)
        cursor.close()
        conn.close()
    # The cluster still answers.
    with three_hosts.connect() as conn:
        assert h.scalar(conn, "SELECT count(*) FROM nation") == 25


def test_an_executor_killed_mid_query(three_hosts, tpch_lake_small, bridge_model):
    """Runs last: it leaves the cluster with one executor."""
    conn = three_hosts.connect()
    point_at(conn, bridge_model, "SET lakelink.llm.cache = false")
    bridge_model.delay = 0.05
    before = bridge_model.count()
    outcome: list = []

    def run():
        try:
            outcome.append(h.scalar(conn, "SELECT count(*) FROM supplier WHERE llm_filter(s_comment, 'calm')"))
        except Exception as e:  # noqa: BLE001
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        h.wait_for(lambda: bridge_model.count() - before >= 5, 120, 0.1, "model calls to start",
                   lambda why: pytest.fail(f"{why}\n{three_hosts.logs()}"))
        three_hosts.procs["ex2"].kill()
        t.join(240)
        assert not t.is_alive(), "the query neither finished nor failed after an executor died"
    finally:
        bridge_model.delay = 0.0
        t.join(60)
        conn.close()
    result = outcome[0]
    if isinstance(result, Exception):
        h.assert_informative(h.error_text(result))
    else:
        assert 0 <= result <= 100
    assert three_hosts.procs["sched"].alive() and three_hosts.procs["ex1"].alive(), three_hosts.logs()
    # The next query works on the survivor.
    expected = h.parquet_dataset(tpch_lake_small, "lineitem").count_rows()
    with three_hosts.connect() as conn:
        h.wait_for(lambda: h.scalar(conn, "SELECT count(*) FROM lineitem") == expected, 120, 1.0,
                   "a query on the surviving executor", lambda why: pytest.fail(f"{why}\n{three_hosts.logs()}"))


GUESS_SCRIPT = r"""
import sys
import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
uri, user, password, tries = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for _ in range(tries):
    try:
        with flight_sql.connect(uri, db_kwargs={"username": user, "password": password}) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM information_schema.tables")
                cur.fetchall()
        print("ANSWERED")
    except adbc_driver_manager.Error as e:
        print("REFUSED", str(e).replace("\n", " "))
"""


def test_password_guessing_from_one_host_does_not_lock_out_another(hosts, s3_on_bridge, tmp_path):
    """A guesser on one host is throttled; the real user on another logs in."""
    home = tmp_path / "auth-sched"
    home.mkdir()
    secret_file = home / "cluster.secret"
    secret_file.write_text(secrets.token_hex(24) + "\n")
    secret_file.chmod(0o600)
    password = "pw-" + secrets.token_hex(8)
    sched = hosts.addr["sched"]
    cmd = [h.binary("lakelink-scheduler"), "--lake", f"s3://{BUCKET}/tpch", "--bind", sched, "--port", "50070",
           "--cluster-port", "50071", "--cluster-secret-file", str(secret_file), "--user", "ada",
           "--password", password, "--allow-plaintext-auth", "--allow-plaintext-cluster"]
    env = {**s3_on_bridge.env(f"http://{hosts.outside}:{s3_on_bridge.port}"), "HOME": str(home)}
    proc = h.Proc("auth-sched", hosts.command("sched", cmd), tmp_path / "auth-sched.log", env=env).start(home)
    uri = f"grpc://{sched}:50070"
    try:
        def guess(password: str, tries: int) -> list[str]:
            out = subprocess.run(["ip", "netns", "exec", hosts.ns["ex1"], sys.executable, "-c", GUESS_SCRIPT,
                                  uri, "ada", password, str(tries)], capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr
            return out.stdout.splitlines()

        h.wait_for(lambda: h.port_open(50070, sched), 60, 0.2, "the scheduler",
                   lambda why: pytest.fail(f"{why}\n{proc.describe()}"))
        answers = guess("wrong", 11)
        assert all("wrong user name or password" in a for a in answers[:10]), answers
        assert "too many failed logins" in answers[10], answers
        # The guesser's own address is refused even the right password ...
        assert "too many failed logins" in guess(password, 1)[0]
        # ... while the user at another address logs in.
        with h.adbc_connect(uri, username="ada", password=password, rpc_timeout=60) as conn:
            assert h.scalar(conn, "SELECT count(*) FROM information_schema.tables") > 0
    finally:
        proc.stop()
