"""The `llm_*` SQL functions end to end: ADBC -> scheduler -> two executor
processes -> an OpenAI-compatible HTTP endpoint.

The only test double is the model itself: a scripted OpenAI-compatible chat
server on a loopback port, written here with the standard library. It answers
the way a model following LakeLink's prompts would, counts every request, and
can be switched to answer HTTP 500.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import adbc_driver_manager
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lakelink_harness as h

# Every query of this file is small; no call may hang for long.
RPC_TIMEOUT = 120

# --------------------------------------------------------------------------
# The lake: reviews/ with two files, 100 rows and 10 distinct texts each, and
# no text in both files.
# --------------------------------------------------------------------------

DISTINCT = 20
ROWS_PER_FILE = 100


def review_text(k: int) -> str:
    return f"review {k}: a {'good' if k % 3 == 0 else 'poor'} product"


def make_lake(root: Path) -> Path:
    lake = root / "lake"
    (lake / "reviews").mkdir(parents=True)
    schema = pa.schema([("id", pa.int32()), ("review", pa.string()), ("stars", pa.int32())])
    for part in range(2):
        ids = [part * ROWS_PER_FILE + i for i in range(ROWS_PER_FILE)]
        ks = [part * 10 + i % 10 for i in range(ROWS_PER_FILE)]
        table = pa.table({
            "id": pa.array(ids, pa.int32()),
            "review": pa.array([review_text(k) for k in ks], pa.string()),
            "stars": pa.array([5 if k % 3 == 0 else 1 for k in ks], pa.int32()),
        }, schema=schema)
        pq.write_table(table, lake / "reviews" / f"part-{part}.parquet")
    texts = [set(pq.read_table(lake / "reviews" / f"part-{p}.parquet")["review"].to_pylist())
             for p in range(2)]
    assert len(texts[0]) == len(texts[1]) == 10 and not texts[0] & texts[1]
    return lake


# --------------------------------------------------------------------------
# The scripted model
# --------------------------------------------------------------------------

_ITEM = re.compile(r"<item (\d+)>\n(.*?)\n</item \1>", re.DOTALL)


def rows_of(user: str) -> list[str] | None:
    """The row texts of a user message; None for a single `<data>` row."""
    if user.startswith("<data>\n") and user.rstrip().endswith("</data>"):
        return None
    return [m.group(2) for m in sorted(_ITEM.finditer(user), key=lambda m: int(m.group(1)))]


def filter_labels(system: str):
    """llm_filter's condition and its negation when `system` is its prompt
    (the two as labels), else None."""
    m = re.search(r"labels: (.*?)\.\nAnswer", system, re.S)
    if m:
        for lead in ("it is not the case that ", "not the case that "):
            condition, sep, negated = m.group(1).partition(", " + lead)
            if sep and negated == condition:
                return condition, lead + condition
    return None


def answer_row(system: str, row: str) -> str:
    labels = filter_labels(system)
    if labels:
        return labels[0] if "good" in row else labels[1]
    m = re.search(r"Classify the text into exactly one of these labels: (.*?)\.\n", system)
    if m:
        labels = [label.strip() for label in m.group(1).split(",")]
        return next((label for label in labels if label in row), "none")
    return "unscripted request"


def bag_of_words(text: str, dim: int = 384) -> list[float]:
    """A deterministic embedding: words hashed into `dim` buckets (as the
    Rust model double does), so texts sharing words are close."""
    v = [0.0] * dim
    for word in re.split(r"[^0-9a-z]+", text.lower()):
        if word:
            h = 1469598103934665603
            for b in word.encode():
                h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
            v[h % dim] += 1.0
    return v


class ScriptedModel:
    """An OpenAI-compatible /v1/chat/completions and /v1/embeddings server on
    HOST:<port> (127.0.0.1 unless given), answering each chat request after
    `delay` seconds."""

    def __init__(self, host: str = "127.0.0.1"):
        self.mode = "ok"  # or "500"
        self.delay = 0.0
        self.lock = threading.Lock()
        self.chats: list[dict] = []  # every request: system, user, model, status
        self.embedded = 0  # texts embedded
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (e.g. its task was cancelled)

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") == "/v1/embeddings":
                    inputs = json.loads(raw).get("input", [])
                    with model.lock:
                        model.embedded += len(inputs)
                    data = [{"index": i, "embedding": bag_of_words(t)} for i, t in enumerate(inputs)]
                    self._send(200, {"data": data, "usage": {"prompt_tokens": 4 * len(inputs)}})
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                status, body = model.answer(raw)
                if model.delay:
                    time.sleep(model.delay)
                self._send(status, body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client hanging up mid-request is not a test failure

        self.server = Server((host, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="scripted-model")

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.server.server_address[0]}:{self.port}/v1"

    def start(self) -> "ScriptedModel":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def answer(self, raw: bytes) -> tuple[int, dict]:
        req = json.loads(raw)
        messages = {m["role"]: m["content"] for m in req.get("messages", [])}
        system, user = messages.get("system", ""), messages.get("user", "")
        with self.lock:
            mode = self.mode
            self.chats.append({"system": system, "user": user, "model": req.get("model"),
                               "status": 500 if mode == "500" else 200})
        if mode == "500":
            return 500, {"error": {"message": "scripted failure", "type": "server_error"}}
        rows = rows_of(user)
        if rows is None:
            row = user[len("<data>\n"):user.rstrip().rfind("\n</data>")]
            text = answer_row(system, row)
        else:
            text = "\n".join(f"{i}: {answer_row(system, r)}" for i, r in enumerate(rows, 1))
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        if req.get("logprobs"):
            # A closed answer: the scripted word is the one candidate, at 0.9.
            first = (text.split() or [""])[0]
            top = [{"token": first, "logprob": math.log(0.9)}]
            choice["logprobs"] = {"content": [{"token": first, "logprob": math.log(0.9), "top_logprobs": top}]}
        return 200, {
            "id": f"chatcmpl-{len(self.chats)}",
            "object": "chat.completion",
            "model": req.get("model"),
            "choices": [choice],
            "usage": {"prompt_tokens": len((system + user).split()),
                      "completion_tokens": len(text.split())},
        }

    # What the tests look at -------------------------------------------------

    def count(self) -> int:
        with self.lock:
            return len(self.chats)

    def since(self, start: int) -> list[dict]:
        with self.lock:
            return list(self.chats[start:])

    def row_chats(self, start: int = 0) -> list[dict]:
        """The requests since `start` that asked about rows: all but the
        calibration requests (the content-free row `N/A`, asked once per
        prompt in each process by llm_filter and llm_classify)."""
        return [c for c in self.since(start) if not is_calibration(c)]


def is_calibration(chat: dict) -> bool:
    return "\nN/A\n" in chat["user"]


# The trail's calibration requests (one per prompt in each process).
CALIBRATION = "outcome LIKE 'ok (calibration: %'"


@pytest.fixture
def model():
    m = ScriptedModel().start()
    try:
        yield m
    finally:
        m.stop()


# --------------------------------------------------------------------------
# Cluster and session helpers
# --------------------------------------------------------------------------


@pytest.fixture
def llm_cluster(cluster_factory, tmp_path, monkeypatch):
    """One scheduler and two executors over the reviews lake, with this test's
    own model cache and call trail (the harness passes os.environ on)."""
    lake = make_lake(tmp_path)
    monkeypatch.setenv("LAKELINK_LLM_CACHE_DIR", str(tmp_path / "llm-cache"))
    monkeypatch.setenv("LAKELINK_LLM_TRAIL_DIR", str(tmp_path / "llm-trail"))
    # The scheduler lets sessions point base_url at the scripted server.
    monkeypatch.setenv("LAKELINK_LLM_ALLOW_SESSION_ENDPOINTS", "true")
    cluster = cluster_factory("llm", lake, executors=2)
    assert len(cluster.executors) == 2 and all(e.alive() for e in cluster.executors)
    return cluster


def connection(cluster: h.Cluster):
    return cluster.connection(rpc_timeout=RPC_TIMEOUT)


def run_statement(conn, sql: str) -> pa.Table:
    """Runs `sql` through the DB-API cursor (which prepares every statement,
    SET included) and reads its result."""
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def set_setting(conn, sql: str) -> None:
    t = run_statement(conn, sql)
    assert t.num_rows == 1, f"{sql!r} answered {t}"


def point_at(conn, model: ScriptedModel, *extra: str) -> None:
    """Points this connection's session at the scripted model."""
    statements = [
        "SET lakelink.llm.backend = 'openai'",
        f"SET lakelink.llm.base_url = '{model.base_url}'",
        "SET lakelink.llm.model = 'scripted'",
        "SET lakelink.llm.batch_size = 1",
        *extra,
    ]
    for sql in statements:
        set_setting(conn, sql)


def error_of(conn, sql: str, run=h.query) -> str:
    with pytest.raises(adbc_driver_manager.Error) as info:
        t = run(conn, sql)
        pytest.fail(f"{sql!r} unexpectedly answered: {t}", pytrace=False)
    return h.error_text(info.value)


def show(conn, key: str) -> str:
    t = h.query(conn, f"SHOW {key}")
    rows = t.to_pylist()
    assert t.num_rows == 1 and {"name", "value"} <= set(t.column_names), t
    assert rows[0]["name"] == key, rows
    return rows[0]["value"]


def all_reviews(lake: Path) -> dict[int, str]:
    t = h.parquet_dataset(lake, "reviews").to_table(columns=["id", "review"])
    return dict(zip(t["id"].to_pylist(), t["review"].to_pylist()))


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------

FILTER_SQL = ("SELECT id, review, llm_filter(review, 'the review is positive') AS ok "
              "FROM reviews ORDER BY id")


def test_llm_filter_dedupe_cache_trail_and_session_scope(llm_cluster, model):
    expected = all_reviews(llm_cluster.lake)
    assert len(expected) == 2 * ROWS_PER_FILE and len(set(expected.values())) == DISTINCT

    with connection(llm_cluster) as conn, connection(llm_cluster) as other:
        point_at(conn, model)

        # First run: one chat request per distinct text, answers per row.
        t = h.query(conn, FILTER_SQL)
        assert t.num_rows == 200, t.num_rows
        rows = t.to_pylist()
        assert [r["id"] for r in rows] == sorted(expected)
        for r in rows:
            assert r["review"] == expected[r["id"]]
            assert r["ok"] == ("good" in r["review"]), r
        assert sum(r["ok"] for r in rows) == sum("good" in v for v in expected.values())

        chats = model.row_chats()
        assert len(chats) == DISTINCT, (
            f"expected exactly {DISTINCT} chat requests (one per distinct text), "
            f"got {len(chats)}")
        asked = sorted(c["user"] for c in chats)
        assert asked == sorted(f"<data>\n{review_text(k)}\n</data>" for k in range(DISTINCT)), asked
        assert all("the review is positive" in c["system"] for c in chats)
        assert {c["model"] for c in chats} == {"scripted"}

        # Second run: the same answers, all from the disk cache.
        again = h.query(conn, FILTER_SQL)
        assert again.to_pylist() == rows
        asked = model.count()
        assert len(model.row_chats()) == DISTINCT, (
            f"the repeated query asked the model again: {len(model.row_chats()) - DISTINCT} new requests")
        assert asked - DISTINCT <= 2, "more than one calibration request per executor"

        # The trail holds the 20 model calls (and the 20 cache hits), and
        # the calibration requests apart.
        misses = h.scalar(conn, "SELECT count(*) FROM system.model_calls "
                                f"WHERE function = 'llm_filter' AND NOT cache_hit AND NOT {CALIBRATION}")
        assert misses == DISTINCT, misses
        calls = h.query(conn, "SELECT function, rows, cache_hit, outcome, model, backend "
                              f"FROM system.model_calls WHERE NOT cache_hit AND NOT {CALIBRATION}").to_pylist()
        assert len(calls) == DISTINCT, calls
        for c in calls:
            assert c["function"] == "llm_filter" and c["rows"] == 1, c
            # The trail's model column is the model's id: backend:model@url.
            assert c["backend"] == "openai" and c["outcome"] == "ok", c
            assert c["model"] == f"openai:scripted@{model.base_url}", c
        # The requests were made by the executor processes (host:pid), and the
        # usage the endpoint reported was recorded (a token per word of each
        # answer).
        pids = {str(e.pid) for e in llm_cluster.executors}
        procs = h.query(conn, "SELECT process, count(*) AS n, sum(completion_tokens) AS out, "
                              "min(prompt_tokens) AS pin FROM system.model_calls "
                              f"WHERE NOT cache_hit AND NOT {CALIBRATION} GROUP BY process").to_pylist()
        assert {p["process"].rsplit(":", 1)[-1] for p in procs} <= pids, (procs, pids)
        assert sum(p["n"] for p in procs) == DISTINCT
        words = sum(len(answer_row(chats[0]["system"], review_text(k)).split()) for k in range(DISTINCT))
        assert sum(p["out"] for p in procs) == words and min(p["pin"] for p in procs) > 0, procs
        hits = h.scalar(conn, "SELECT count(*) FROM system.model_calls "
                              "WHERE function = 'llm_filter' AND cache_hit")
        assert hits >= 1, "the cached run left no cache-hit record in system.model_calls"

        # Settings belong to the connection that made them.
        assert show(conn, "lakelink.llm.backend") == "openai"
        assert show(other, "lakelink.llm.backend") == "local"
        assert show(conn, "lakelink.llm.backend") == "openai"
    assert model.count() == asked


def test_llm_classify_labels(llm_cluster, model):
    expected = all_reviews(llm_cluster.lake)
    with connection(llm_cluster) as conn:
        point_at(conn, model)
        t = h.query(conn, "SELECT id, review, llm_classify(review, 'good', 'poor') AS label "
                          "FROM reviews ORDER BY id")
        rows = t.to_pylist()
        assert len(rows) == 200
        for r in rows:
            assert r["review"] == expected[r["id"]]
            assert r["label"] == ("good" if "good" in r["review"] else "poor"), r
        chats = model.since(0)
        # Each process that classifies first asks once for a content-free
        # row (`N/A`): the labels' probabilities are calibrated against it.
        calibration = [c for c in chats if "\nN/A\n" in c["user"]]
        assert 1 <= len(calibration) <= 2, len(calibration)
        assert len(chats) - len(calibration) == DISTINCT, len(chats)
        assert all("Classify the text into exactly one of these labels: good, poor." in c["system"]
                   for c in chats), chats[0]["system"]
        assert h.scalar(conn, "SELECT count(*) FROM system.model_calls "
                              "WHERE function = 'llm_classify' AND NOT cache_hit AND outcome = 'ok'") == DISTINCT


ERRORS_SQL = ("SELECT count(*) FROM system.model_calls "
              "WHERE function = 'llm_filter' AND NOT cache_hit AND outcome LIKE 'error:%HTTP 500%'")


def test_llm_endpoint_failure_and_on_error_null(llm_cluster, model):
    sql = ("SELECT id, llm_filter(review, 'the reviewer would buy it again') AS ok "
           "FROM reviews ORDER BY id")
    with connection(llm_cluster) as conn:
        point_at(conn, model, "SET lakelink.llm.retries = 0", "SET lakelink.llm.cache = false")
        model.mode = "500"

        text = error_of(conn, sql)
        h.assert_informative(text)
        assert "HTTP 500" in text, text
        assert "on_error" in text, f"the error does not say how to get NULLs instead: {text}"
        failed = model.count()
        # A text's calibration request failed, so its own was not sent.
        assert model.row_chats() == [], model.row_chats()[:1]
        assert 1 <= failed <= DISTINCT, (
            f"with retries = 0 each distinct text costs at most one request; got {failed} requests")
        assert all(c["status"] == 500 for c in model.since(0))
        # The trail records the failures. (Requests still in flight when the
        # failed job is cancelled may be missing, so only bounds here.)
        recorded = h.scalar(conn, ERRORS_SQL)
        assert 1 <= recorded <= failed, (recorded, failed)

        set_setting(conn, "SET lakelink.llm.on_error = 'null'")
        t = h.query(conn, sql)
        assert t.num_rows == 200
        assert t["ok"].null_count == 200, t["ok"].to_pylist()[:10]
        assert t["id"].to_pylist() == list(range(200))
        asked = len(model.since(failed))
        assert asked == DISTINCT, (
            f"expected one request per distinct text (no cache, no retries), got {asked}")

        # Nothing else is affected: plain queries still answer on this connection.
        assert h.scalar(conn, "SELECT count(*) FROM reviews") == 200
        good_rows = sum("good" in v for v in all_reviews(llm_cluster.lake).values())
        assert h.scalar(conn, "SELECT sum(stars) FROM reviews WHERE stars = 5") == 5 * good_rows

        # Every request of the completed on_error = 'null' query is in the
        # trail, under that query's own id.
        per_query = h.query(conn, "SELECT query_id, count(*) AS n, min(time) AS t0 "
                                  "FROM system.model_calls WHERE function = 'llm_filter' "
                                  "AND NOT cache_hit AND outcome LIKE 'error:%HTTP 500%' "
                                  "GROUP BY query_id ORDER BY t0").to_pylist()
        assert len(per_query) == 2, per_query
        # One failed request per text: its calibration request (a failed
        # one is asked again by the next text, and the text's own request
        # is not sent after it).
        assert per_query[-1]["n"] == DISTINCT, per_query

        # The endpoint recovers: the same session gets answers again.
        model.mode = "ok"
        t = h.query(conn, sql)
        assert t["ok"].null_count == 0
        assert t["ok"].to_pylist() == ["good" in review_text(i // 100 * 10 + i % 10)
                                       for i in range(200)]
    assert all(e.alive() for e in llm_cluster.executors), llm_cluster.logs()


def test_bad_llm_settings(llm_cluster, model):
    with connection(llm_cluster) as conn:
        text = error_of(conn, "SET lakelink.llm.nonsense = 1", run_statement)
        h.assert_informative(text)
        assert "unknown setting lakelink.llm.nonsense" in text, text
        assert h.scalar(conn, "SELECT count(*) FROM reviews") == 200

        text = error_of(conn, "SET lakelink.llm.api_key_env = 'X'", run_statement)
        h.assert_informative(text)
        assert "lakelink.llm.api_key_env" in text and "operator" in text, text
        assert h.scalar(conn, "SELECT count(*) FROM reviews") == 200

        # The failed SETs changed nothing; a good SET still works afterwards.
        assert show(conn, "lakelink.llm.backend") == "local"
        point_at(conn, model)
        assert show(conn, "lakelink.llm.backend") == "openai"
        ok = h.scalar(conn, "SELECT count(*) FROM reviews "
                            "WHERE llm_filter(review, 'the review is positive')")
        assert ok == sum("good" in v for v in all_reviews(llm_cluster.lake).values())
        assert len(model.row_chats()) == DISTINCT


def test_set_through_dbapi_execute(llm_cluster):
    """The plain DB-API way, `cursor.execute("SET ...")`, should work too."""
    with connection(llm_cluster) as conn:
        h.query(conn, "SET lakelink.llm.batch_size = 4")
        assert show(conn, "lakelink.llm.batch_size") == "4"


def test_a_cascade_asks_its_sample_once_over_the_executors(cluster_factory, tmp_path, monkeypatch, model):
    """lakelink.llm.cascade_target over two files read by two executors (one
    task slot each): the cascade's sample is asked of the model once for the
    whole query through the cluster's ledger, both executors fit their proxy
    on it, and every answer is right."""
    lake = tmp_path / "lake"
    (lake / "reviews").mkdir(parents=True)
    for part in range(2):
        ks = range(part * 150, part * 150 + 150)
        pq.write_table(pa.table({"id": pa.array(list(ks), pa.int32()),
                                 "review": pa.array([review_text(k) for k in ks], pa.string())}),
                       lake / "reviews" / f"part-{part}.parquet")
    monkeypatch.setenv("LAKELINK_LLM_TRAIL_DIR", str(tmp_path / "llm-trail"))
    monkeypatch.setenv("LAKELINK_LLM_ALLOW_SESSION_ENDPOINTS", "true")
    cluster = cluster_factory("cascade", lake, executors=2, executor_args=["--concurrent-tasks", "1"])
    model.delay = 0.02  # both files are read at once
    sample = 50  # lakelink_udf's cascade::SAMPLE
    with connection(cluster) as conn:
        point_at(conn, model, "SET lakelink.llm.cache = false", "SET lakelink.llm.embedding_model = 'bag-of-words'",
                 "SET lakelink.llm.cascade_target = 0.95")
        sql = "SELECT id FROM reviews WHERE llm_filter(review, 'the review is positive') ORDER BY id"
        ids = [r["id"] for r in h.query(conn, sql).to_pylist()]
        assert ids == [k for k in range(300) if k % 3 == 0]
        # One sample: each executor sampling alone would ask at least 2 x 50.
        asked = model.count()
        assert sample <= asked < 2 * sample, f"{asked} model calls for 300 distinct reviews"
        pids = {str(e.pid) for e in cluster.executors}
        proxies = h.query(conn, "SELECT process, sum(rows) AS decided FROM system.model_calls "
                                "WHERE backend = 'proxy' GROUP BY process").to_pylist()
        assert {p["process"].rsplit(":", 1)[-1] for p in proxies} == pids, (proxies, pids)
        assert sum(p["decided"] for p in proxies) + asked >= 300, proxies


def test_a_value_read_by_two_executors_is_asked_once_within_one_budget(cluster_factory, tmp_path, monkeypatch,
                                                                         model):
    """The cluster's ledger of model calls: two files that share half their
    texts, read by two executors (one task slot each, so each takes a file),
    with no disk cache. Every distinct text is asked once over the cluster,
    both executors ask, and lakelink.llm.max_calls holds for the whole query."""
    lake = tmp_path / "lake"
    (lake / "reviews").mkdir(parents=True)
    shared = [review_text(k) for k in range(5, 10)]
    for part, ks in enumerate([range(0, 10), range(5, 15)]):
        texts = [review_text(k) for k in ks] * 10
        pq.write_table(pa.table({"id": pa.array(range(part * 100, part * 100 + len(texts)), pa.int32()),
                                 "review": pa.array(texts, pa.string())}),
                       lake / "reviews" / f"part-{part}.parquet")
    monkeypatch.setenv("LAKELINK_LLM_TRAIL_DIR", str(tmp_path / "llm-trail"))
    monkeypatch.setenv("LAKELINK_LLM_ALLOW_SESSION_ENDPOINTS", "true")
    cluster = cluster_factory("ledger", lake, executors=2, executor_args=["--concurrent-tasks", "1"])
    distinct = 15
    model.delay = 0.2  # both files are read at once
    with connection(cluster) as conn:
        point_at(conn, model, "SET lakelink.llm.cache = false")
        sql = "SELECT review, llm_filter(review, 'the review is positive') AS ok FROM reviews"
        rows = h.query(conn, sql).to_pylist()
        assert len(rows) == 200 and all(r["ok"] == ("good" in r["review"]) for r in rows)
        asked = [c["user"] for c in model.row_chats()]
        assert len(asked) == distinct, f"{len(asked)} requests for {distinct} distinct texts"
        assert sorted(asked) == sorted(f"<data>\n{review_text(k)}\n</data>" for k in range(distinct))
        assert all(f"<data>\n{t}\n</data>" in asked for t in shared)
        pids = {str(e.pid) for e in cluster.executors}
        askers = h.query(conn, "SELECT DISTINCT process FROM system.model_calls "
                               "WHERE function = 'llm_filter' AND NOT cache_hit").to_pylist()
        assert {a["process"].rsplit(":", 1)[-1] for a in askers} == pids, (askers, pids)

        # Ten calls for the whole query: each executor alone would stay
        # under it (one asks ten texts, the other the rest).
        before = model.count()
        set_setting(conn, "SET lakelink.llm.max_calls = 10")
        err = error_of(conn, sql)
        assert "budget of 10 model calls" in err and "lakelink.llm.max_calls" in err, err
        assert model.count() - before <= 10, model.count() - before
        # The session goes on.
        set_setting(conn, "SET lakelink.llm.max_calls = 100")
        assert len(h.query(conn, sql)) == 200
