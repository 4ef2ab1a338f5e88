"""The NL compiler end to end with the real default model: ADBC -> scheduler
(which compiles `nl_query` / `nl_sql` with Qwen2.5-Coder-0.5B through
llama.cpp on this CPU, the `local` backend) -> two executor processes.

No test double: the questions are easy ones that the small model answers
right, and every answer is checked against hand-written gold SQL run over the
same connection. Only two questions reach the model (each takes a few
seconds, plus about half a minute to load the models on the first one);
everything else is served from the compiler's cache.

Skipped when the default local models are not there (fetch them with
scripts/fetch-models.sh).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import pytest

import lakelink_harness as h


def _models_dir() -> Path:
    if os.environ.get("LAKELINK_LLM_MODELS_DIR"):
        return Path(os.environ["LAKELINK_LLM_MODELS_DIR"])
    cache = os.environ.get("LAKELINK_CACHE") or Path.home() / ".cache" / "lakelink"
    return Path(cache) / "models"


MODELS_DIR = _models_dir()
# The default generative model and the embedder retrieval uses.
MODEL_FILES = (
    MODELS_DIR / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    MODELS_DIR / "all-minilm-l6-v2" / "model.safetensors",
    MODELS_DIR / "all-minilm-l6-v2" / "tokenizer.json",
    MODELS_DIR / "all-minilm-l6-v2" / "config.json",
)
MISSING_MODELS = [str(p) for p in MODEL_FILES if not p.is_file()]

pytestmark = pytest.mark.skipif(
    bool(MISSING_MODELS),
    reason="the default local models are missing (" + ", ".join(MISSING_MODELS)
    + "); fetch them with scripts/fetch-models.sh or point LAKELINK_LLM_MODELS_DIR at them")

# A first question loads both models; a debug build is slow. Generous, not endless.
RPC_TIMEOUT = 600

BUILDING_Q = "How many customers are in the building market segment?"
BUILDING_GOLD = "SELECT count(*) FROM customer WHERE c_mktsegment = 'BUILDING'"
# The same question in other case and spacing: the cache key normalizes both.
BUILDING_Q_VARIANT = "how many customers are in   the BUILDING market segment?"
SUPPLIERS_Q = "How many suppliers have a negative account balance?"
SUPPLIERS_GOLD = "SELECT count(*) FROM supplier WHERE s_acctbal < 0"

TASK_COLUMNS = ("time, query_id, function, question, model, strategy, retrieved_tables, "
                "attempts, sql, outcome, cache_hit, model_calls, model_ms, total_ms, process")


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nl_lake(tpch_lake_small) -> Path:
    catalog = tpch_lake_small / h.NL_CATALOG
    assert catalog.is_file(), (
        f"{catalog} is missing: the lake was not written by the current `lakelink datagen`")
    return tpch_lake_small


@pytest.fixture(scope="module")
def nl_cluster(nl_lake, tmp_path_factory):
    """Scheduler + 2 executors with the process defaults (local backend,
    default model) and their own model cache, trail and empty config file."""
    work = tmp_path_factory.mktemp("cluster-nl")
    config = work / "lakelink.toml"
    config.write_text("# no settings: the built-in defaults\n")
    c = h.Cluster("nl", nl_lake, work / "cluster")
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in list(os.environ):
                if name.startswith("LAKELINK_LLM_"):
                    mp.delenv(name)
            mp.setenv("LAKELINK_CONFIG", str(config))
            mp.setenv("LAKELINK_LLM_MODELS_DIR", str(MODELS_DIR))
            mp.setenv("LAKELINK_LLM_CACHE_DIR", str(work / "llm-cache"))
            mp.setenv("LAKELINK_LLM_TRAIL_DIR", str(work / "llm-trail"))
            c.start()  # the processes keep this environment
        assert len(c.executors) == 2 and all(e.alive() for e in c.executors), c.logs()
        yield c
    finally:
        c.stop()


@pytest.fixture
def nl_conn(nl_cluster):
    with nl_cluster.connection(rpc_timeout=RPC_TIMEOUT) as conn:
        yield conn


def tasks(conn, question: str | None = None, function: str | None = None) -> list[dict]:
    where = []
    if question is not None:
        where.append(f"question = {sql_literal(question)}")
    if function is not None:
        where.append(f"function = {sql_literal(function)}")
    sql = (f"SELECT {TASK_COLUMNS} FROM system.nl_tasks"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY time")
    return h.query(conn, sql).to_pylist()


def nl_model_calls(conn) -> int:
    """Model requests the NL compiler made (cache hits are not requests)."""
    return h.scalar(conn, "SELECT count(*) FROM system.model_calls "
                          "WHERE function IN ('nl_query', 'nl_sql') AND NOT cache_hit")


def answer(conn, question: str):
    """`SELECT * FROM nl_query(question)`: (rows, seconds)."""
    started = time.monotonic()
    t = h.query(conn, f"SELECT * FROM nl_query({sql_literal(question)})")
    return h.table_rows(t), time.monotonic() - started


def same_rows(got: list[tuple], want: list[tuple]) -> bool:
    return len(got) == len(want) and all(h.rows_equal(g, w) for g, w in zip(got, want))


@pytest.fixture(scope="module")
def building(nl_cluster):
    """The first `nl_query` of the module (loads the models): what it returned,
    the gold answer, and how long it took."""
    conn = nl_cluster.connect(rpc_timeout=RPC_TIMEOUT)
    try:
        got, seconds = answer(conn, BUILDING_Q)
        gold = h.table_rows(h.query(conn, BUILDING_GOLD))
        print(f"[lakelink-tests] first nl_query (models loaded) took {seconds:.1f} s")
        return {"rows": got, "gold": gold, "seconds": seconds, "tasks": tasks(conn, BUILDING_Q),
                "scheduler_pid": nl_cluster.scheduler.pid}
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_nl_query_answers_a_simple_question(building):
    generated = [t["sql"] for t in building["tasks"]]
    assert len(building["gold"]) == 1 and building["gold"][0][0] > 0, building["gold"]
    assert same_rows(building["rows"], building["gold"]), (
        f"nl_query({BUILDING_Q!r}) answered {building['rows']}, the gold SQL "
        f"{BUILDING_GOLD!r} answers {building['gold']}; generated SQL: {generated}")

    # The trail: the first compile asked the local model once and succeeded.
    first = building["tasks"][0]
    assert first["function"] == "nl_query" and first["outcome"] == "ok", first
    assert first["cache_hit"] is False and first["model_calls"] >= 1, first
    assert first["model"] == "local:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", first
    assert first["strategy"] == "pipeline", first
    assert "customer" in first["retrieved_tables"].split(","), first
    assert re.match(r"(?is)^\s*select\b", first["sql"]) and "customer" in first["sql"].lower(), first
    assert first["total_ms"] >= first["model_ms"] > 0, first
    # Planned on the scheduler: its process name ends in the scheduler's pid.
    assert first["process"].rsplit(":", 1)[-1] == str(building["scheduler_pid"]), first
    # Every later row of the same question came from the cache (the statement
    # is planned more than once: prepare, GetFlightInfo, DoGet).
    assert [t for t in building["tasks"] if not t["cache_hit"]] == [first], building["tasks"]


def test_the_same_question_again_comes_from_the_cache(building, nl_conn):
    assert same_rows(building["rows"], building["gold"]), "see test_nl_query_answers_a_simple_question"
    first_sql = building["tasks"][0]["sql"]
    calls_before = nl_model_calls(nl_conn)
    rows_before = len(tasks(nl_conn, BUILDING_Q))

    again, seconds = answer(nl_conn, BUILDING_Q)
    assert again == building["rows"], (again, building["rows"])
    after = tasks(nl_conn, BUILDING_Q)
    new = after[rows_before:]
    assert new, f"the repeated question left no row in system.nl_tasks: {after}"
    for t in new:
        assert t["cache_hit"] is True and t["model_calls"] == 0, t
        assert t["outcome"] == "ok" and t["sql"] == first_sql and t["model_ms"] == 0, t
    assert sum(not t["cache_hit"] for t in after) == 1, after
    assert nl_model_calls(nl_conn) == calls_before, "the cached question asked the model"
    assert seconds < building["seconds"], (seconds, building["seconds"])

    # Other case and spacing: the same cache entry.
    variant, _ = answer(nl_conn, BUILDING_Q_VARIANT)
    assert variant == building["rows"], variant
    vt = tasks(nl_conn, BUILDING_Q_VARIANT)
    assert vt and all(t["cache_hit"] and t["model_calls"] == 0 and t["sql"] == first_sql
                      for t in vt), vt
    assert nl_model_calls(nl_conn) == calls_before, "the re-spaced question asked the model"


def test_nl_sql_returns_runnable_sql(nl_conn):
    gold = h.table_rows(h.query(nl_conn, SUPPLIERS_GOLD))
    t = h.query(nl_conn, f"SELECT nl_sql({sql_literal(SUPPLIERS_Q)}) AS generated")
    assert t.num_rows == 1 and t.num_columns == 1, t
    sql = t.column(0)[0].as_py()
    assert isinstance(sql, str) and re.match(r"(?is)^\s*select\b", sql), repr(sql)
    assert "supplier" in sql.lower(), sql

    # nl_sql only shows the SQL; running it gives the gold answer.
    got = h.table_rows(h.query(nl_conn, sql))
    assert same_rows(got, gold), f"{sql!r} answered {got}, the gold SQL answers {gold}"

    recorded = tasks(nl_conn, SUPPLIERS_Q, "nl_sql")
    assert recorded and recorded[0]["sql"] == sql and recorded[0]["outcome"] == "ok", recorded

    # nl_query of the same question runs that SQL, from the cache.
    calls = nl_model_calls(nl_conn)
    rows, _ = answer(nl_conn, SUPPLIERS_Q)
    assert same_rows(rows, gold), (rows, gold)
    assert nl_model_calls(nl_conn) == calls, "nl_query asked the model for a question nl_sql compiled"
    assert all(t["cache_hit"] and t["sql"] == sql for t in tasks(nl_conn, SUPPLIERS_Q, "nl_query"))


def test_explain_shows_the_question_and_its_sql(building, nl_conn):
    first_sql = building["tasks"][0]["sql"]
    t = h.query(nl_conn, f"EXPLAIN SELECT * FROM nl_query({sql_literal(BUILDING_Q)})")
    rows = t.to_pylist()
    assert t.column_names == ["plan_type", "plan"], t.schema
    assert rows[0]["plan_type"] == "nl_query", rows
    plan = rows[0]["plan"]
    assert f"question: {BUILDING_Q}" in plan, plan
    assert f"sql: {first_sql}" in plan, plan
    assert "from: cache" in plan, plan  # compiled earlier in this module
    # The rest is the ordinary plan of the generated query.
    kinds = [r["plan_type"] for r in rows[1:]]
    assert "logical_plan" in kinds and "physical_plan" in kinds, kinds
    logical = next(r["plan"] for r in rows if r["plan_type"] == "logical_plan")
    assert "TableScan: customer" in logical, logical
