"""Lakes on an object store: a real S3 API server (moto's) holds the lake.

Every process of the cluster reads the lake over S3 with the credentials of
its own environment; the tests check that results equal single-process
DataFusion over the same files, that the catalog lists the lake once per
refresh (counted by a proxy in front of the server), that new tables and
files appear after `REFRESH LAKE`, and that the store's secret key appears in
no answer and no log.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import http.server
import re
import secrets
import socketserver
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lakelink_harness as h

boto3 = pytest.importorskip("boto3", reason="boto3 comes with moto[server] (tests/python/requirements.txt)")
pytest.importorskip("moto", reason="moto[server] is in tests/python/requirements.txt")

QUERY_DIR = Path(__file__).resolve().parents[1] / "testdata" / "tpch"
BUCKET = "lake"


class S3:
    """moto's S3 server on a free loopback port, and a client for it."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1"):
        self.host = host
        self.port = h.free_ports(1)[0]
        self.proc = h.Proc("moto", [sys.executable, "-m", "moto.server", "-H", host, "-p", str(self.port)],
                           workdir / "moto.log").start(workdir)
        h.wait_for(lambda: h.port_open(self.port, host), 60, 0.2, "moto's S3 server",
                   lambda why: pytest.fail(f"{why}\n{self.proc.describe()}"))
        # The secret is checked for in logs and answers: it must never show.
        self.secret = "sk-" + secrets.token_hex(20)
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id="AKIDLAKELINKTEST", aws_secret_access_key=self.secret)
        self.client.create_bucket(Bucket=BUCKET)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "AKIDLAKELINKTEST",
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def upload_folder(self, folder: Path, prefix: str) -> int:
        n = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
                n += 1
        return n

    def put_table(self, key: str, ids: range) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64())}), sink)
        self.client.put_object(Bucket=BUCKET, Key=key, Body=sink.getvalue().to_pybytes())


class CountingProxy:
    """Forwards HTTP to the S3 server and counts the listings (ListObjectsV2)."""

    def __init__(self, target_port: int):
        self.lists = 0
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def forward(self):
                proxy.requests += 1
                if "list-type=2" in (urlsplit(self.path).query or ""):
                    proxy.lists += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = forward

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.proc.stop()


def _no_secret_anywhere(cluster: h.Cluster, secret: str, texts: list[str]) -> None:
    for text in texts:
        assert secret not in text, "the store's secret key reached an answer"
    for proc in cluster.procs():
        assert secret not in proc.log.read_text(errors="replace"), f"the secret key is in {proc.log}"


def _plan(conn, statement: str, folder: str) -> str:
    """The EXPLAIN of `statement`, the lake's folder in file paths made `LAKE/`
    (and Ballista's stage input lists left out: printed in hash order)."""
    text = "\n".join(f"{r['plan_type']}\n{r['plan']}" for r in h.query(conn, "EXPLAIN " + statement).to_pylist())
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("Inputs{")]
    return "\n".join(lines).replace(folder.strip("/") + "/", "LAKE/")


def test_tpch_from_s3_equals_datafusion_over_the_same_files(s3, tpch_lake_small, cluster_factory, conn):
    """Results equal DataFusion's; plans equal the local lake's (same sizes and
    statistics, so the same joins, broadcasts and rewrites), file paths aside."""
    uploaded = s3.upload_folder(tpch_lake_small, "tpch-sf001")
    assert uploaded >= 8
    local_conn = conn
    c = cluster_factory("s3-tpch", f"s3://{BUCKET}/tpch-sf001", env=s3.env())
    conn = c.connect(rpc_timeout=300)
    try:
        tables = sorted(r["table_name"] for r in h.query(
            conn, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").to_pylist())
        assert tables == sorted(h.lake_tables(tpch_lake_small)), tables
        for n in range(1, 23):
            sql = (QUERY_DIR / f"q{n}.sql").read_text()
            statement = [s for s in h.split_statements(sql) if h.returns_rows(s)][-1]
            expected = h.reference_run(tpch_lake_small, sql)
            got = h.adbc_run(conn, sql)
            h.compare_results(got, expected, statement)
            assert expected.num_rows > 0, f"q{n} returned no rows"
            if len(h.split_statements(sql)) == 1:
                local_plan = _plan(local_conn, statement, str(tpch_lake_small.resolve()))
                assert _plan(conn, statement, "tpch-sf001") == local_plan, f"q{n} is planned differently on S3"
    finally:
        conn.close()
    # Every executor read the lake from the store (nothing is shared on disk).
    assert c.scheduler.alive() and all(e.alive() for e in c.executors), c.logs()
    _no_secret_anywhere(c, s3.secret, [])


def test_new_tables_and_files_appear_after_refresh_lake(s3, cluster_factory, tmp_path):
    prefix = "refresh-" + secrets.token_hex(4)
    s3.put_table(f"{prefix}/events/part-0.parquet", range(10))
    state = tmp_path / "scheduler-state"
    c = cluster_factory("s3-refresh", f"s3://{BUCKET}/{prefix}", executors=1,
                        env={**s3.env(), "LAKELINK_STATE_DIR": str(state)},
                        scheduler_args=["--lake-refresh", "3600"])
    conn = c.connect(rpc_timeout=120)
    try:
        assert h.scalar(conn, "SELECT count(*) FROM events") == 10
        s3.put_table(f"{prefix}/events/part-1.parquet", range(10, 15))
        s3.put_table(f"{prefix}/later.parquet", range(3))
        s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/broken/part-0.parquet", Body=b"not parquet at all" * 20)
        catalog = b'[tables.events]\ndescription = "clicks"\n'
        s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/_lakelink/catalog.toml", Body=catalog)
        # Until the next listing the lake is what was listed.
        assert h.scalar(conn, "SELECT count(*) FROM events") == 10
        with pytest.raises(Exception) as info:
            h.query(conn, "SELECT * FROM later")
        assert "later" in h.error_text(info.value) and "not found" in h.error_text(info.value).lower()

        summary = h.query(conn, "refresh lake;").to_pylist()
        assert summary == [{"tables": 3, "files": 4, "bytes": summary[0]["bytes"], "changed": 3}], summary
        assert summary[0]["bytes"] > 0, summary
        assert h.scalar(conn, "SELECT count(*) FROM events") == 15
        assert h.scalar(conn, "SELECT sum(id) FROM later") == 3
        # The lake's NL metadata is brought to the scheduler's state folder.
        copies = list(state.glob("lakes/*/_lakelink/catalog.toml"))
        assert [p.read_bytes() for p in copies] == [catalog], copies
        # A corrupt file fails its table alone, named by its URL.
        with pytest.raises(Exception) as info:
            h.query(conn, "SELECT * FROM broken")
        text = h.error_text(info.value)
        assert f"s3://{BUCKET}/{prefix}/broken/part-0.parquet" in text, text
        assert h.scalar(conn, "SELECT count(*) FROM events WHERE id >= 10") == 5
        assert h.query(conn, "REFRESH LAKE").to_pylist()[0]["changed"] == 0
        _no_secret_anywhere(c, s3.secret, [text])
    finally:
        conn.close()


def test_planning_lists_nothing_between_refreshes(s3, cluster_factory, tmp_path):
    """A lake of 1,000 tables x 10 files: statements plan from the catalog's listing."""
    prefix = "many-" + secrets.token_hex(4)
    tables = 1000
    keys = [(f"{prefix}/t{t:04d}/part-{f}.parquet", f) for t in range(tables) for f in range(10)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kf: s3.put_table(kf[0], range(kf[1], kf[1] + 2)), keys))
    proxy = CountingProxy(s3.port)
    try:
        c = cluster_factory("s3-many", f"s3://{BUCKET}/{prefix}", executors=1, env=s3.env(f"http://127.0.0.1:{proxy.port}"),
                            scheduler_args=["--lake-refresh", "3600"])
        conn = c.connect(rpc_timeout=120)
        try:
            lists_at_start = proxy.lists
            assert lists_at_start >= 1, "the lake was never listed"
            for t in range(0, tables, 37):
                assert h.scalar(conn, f"SELECT count(*) FROM t{t:04d}") == 20
            assert h.scalar(conn, "SELECT count(*) FROM t0001 JOIN t0002 USING (id)") == 38
            assert proxy.lists == lists_at_start, (
                f"planning listed the store {proxy.lists - lists_at_start} time(s) between refreshes")
            requests = proxy.requests
            h.query(conn, "REFRESH LAKE")
            assert proxy.lists > lists_at_start, "REFRESH LAKE did not list the store"
            assert proxy.requests > requests
        finally:
            conn.close()
    finally:
        proxy.close()


def test_a_missing_bucket_stops_the_scheduler_with_a_clear_error(s3, tmp_path):
    port, cport = h.free_ports(2)
    log = tmp_path / "scheduler.log"
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_text(secrets.token_hex(24) + "\n")
    secret_file.chmod(0o600)
    proc = h.Proc("scheduler", [h.binary("lakelink-scheduler"), "--lake", "s3://no-such-bucket/lake",
                                "--port", str(port), "--cluster-port", str(cport), "--bind", "127.0.0.1",
                                "--cluster-secret-file", str(secret_file)],
                  log, env=s3.env()).start(tmp_path)
    h.wait_for(lambda: not proc.alive(), 60, 0.2, "the scheduler to refuse the lake",
               lambda why: pytest.fail(f"{why}\n{proc.describe()}"))
    text = log.read_text(errors="replace")
    assert "no-such-bucket" in text and re.search(r"(?i)bucket|not found|does not exist", text), text
    assert s3.secret not in text


def test_datagen_writes_a_lake_to_the_store(s3, tpch_lake_small, cluster_factory, tmp_path):
    env = {**os.environ, **s3.env()}
    out = subprocess.run([h.binary("lakelink"), "datagen", "tpch", "--scale", "0.01", "--out", f"s3://{BUCKET}/generated"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"written to s3://{BUCKET}/generated" in out.stderr, out.stderr
    keys = [o["Key"] for o in s3.client.list_objects_v2(Bucket=BUCKET, Prefix="generated/")["Contents"]]
    assert "generated/_lakelink/catalog.toml" in keys, keys
    c = cluster_factory("s3-datagen", f"s3://{BUCKET}/generated", executors=1, env=s3.env())
    with c.connection(rpc_timeout=120) as conn:
        expected = h.parquet_dataset(tpch_lake_small, "lineitem").count_rows()
        assert h.scalar(conn, "SELECT count(*) FROM lineitem") == expected
    # A store that refuses: a clear error naming the object, the process survives to say so.
    bad = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    out = subprocess.run([h.binary("lakelink"), "datagen", "tpch", "--scale", "0.01", "--out", f"s3://{BUCKET}/x"],
                         env=bad, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and f"s3://{BUCKET}/x/" in out.stderr, out.stderr
    assert s3.secret not in out.stderr


def test_every_lake_layout_on_the_store(s3, cluster_factory):
    prefix = "layouts-" + secrets.token_hex(4)
    s3.put_table(f"{prefix}/single.parquet", range(2))
    s3.put_table(f"{prefix}/folder/part-0.parquet", range(3))
    s3.put_table(f"{prefix}/folder/part-1.parquet", range(3, 5))
    s3.put_table(f"{prefix}/events/year=2024/part-0.parquet", range(2))
    s3.put_table(f"{prefix}/events/year=2025/part-0.parquet", range(1))
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/tags.csv", Body=b"id,tag\n7,x\n8,y\n")
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/notes.json", Body=b'{"id": 1}\n{"id": 2}\n{"id": 3}\n')
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/README.txt", Body=b"not a table")
    s3.client.put_object(Bucket=BUCKET, Key=f"{prefix}/_SUCCESS", Body=b"")
    c = cluster_factory("s3-layouts", f"s3://{BUCKET}/{prefix}", executors=1, env=s3.env())
    with c.connection(rpc_timeout=120) as conn:
        tables = sorted(r["table_name"] for r in h.query(
            conn, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").to_pylist())
        assert tables == ["events", "folder", "notes", "single", "tags"], tables
        assert h.scalar(conn, "SELECT count(*) FROM single") == 2
        assert h.scalar(conn, "SELECT sum(id) FROM folder") == 10
        rows = h.query(conn, "SELECT year, count(*) AS n FROM events GROUP BY year ORDER BY year").to_pylist()
        assert rows == [{"year": "2024", "n": 2}, {"year": "2025", "n": 1}], rows
        assert h.scalar(conn, "SELECT tag FROM tags WHERE id = 8") == "y"
        assert h.scalar(conn, "SELECT count(*) FROM notes") == 3


def test_store_settings_from_the_config_files_lake_table(s3, cluster_factory, tmp_path):
    prefix = "config-" + secrets.token_hex(4)
    s3.put_table(f"{prefix}/t/part-0.parquet", range(4))
    config = tmp_path / "lakelink.toml"
    config.write_text("[lake]\n" + "".join(f'{k.lower()} = "{v}"\n' for k, v in s3.env().items()))
    config.chmod(0o644)
    # Others may read the secret: refused at start, with the reason.
    port, cport = h.free_ports(2)
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_text(secrets.token_hex(24) + "\n")
    secret_file.chmod(0o600)
    res = subprocess.run([h.binary("lakelink-scheduler"), "--lake", f"s3://{BUCKET}/{prefix}", "--bind", "127.0.0.1",
                          "--port", str(port), "--cluster-port", str(cport), "--cluster-secret-file", str(secret_file)],
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                              "LAKELINK_CONFIG": str(config)},
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode != 0 and "chmod 600" in res.stderr, res.stderr
    assert s3.secret not in res.stderr
    config.chmod(0o600)
    c = cluster_factory("s3-config", f"s3://{BUCKET}/{prefix}", executors=1, env={"LAKELINK_CONFIG": str(config)})
    with c.connection(rpc_timeout=120) as conn:
        assert h.scalar(conn, "SELECT sum(id) FROM t") == 6
