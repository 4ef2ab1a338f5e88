#!/usr/bin/env python3
"""Execution accuracy of `nl_query` (plain English -> SQL) over Flight SQL.

For every question of a development set (benches/nl/devset.json) the runner
runs the gold SQL and `SELECT * FROM nl_query('<question>')` on a LakeLink
server through ADBC and compares the two results: same number of rows; rows
compared as tuples of values, ignoring column names and allowing the generated
result to hold the gold columns in any order (columns are matched by their
value multisets); floats within a relative 1e-6, decimals and integers compared
numerically, dates and strings exactly; in order when the question says so,
else as multisets.

    python benches/nl_accuracy.py --host grpc://127.0.0.1:50050 \
        --devset benches/nl/devset.json [--setup "SET lakelink.llm.x = 'y'" ...] \
        [--label pipeline] [--out results.json] [--ids q01,q02]
    python benches/nl_accuracy.py --self-test
    python benches/nl_accuracy.py --validate-lake ~/.cache/lakelink/test-lakes/tpch-sf0.01

`--validate-lake DIR` runs only the gold SQL, with the `datafusion` Python
package (same engine as the server) over a lake of one folder per table, and
reports row counts, empty results and ties that would make an ordered or top-N
answer ambiguous.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

REL_TOL = 1e-6
ABS_TOL = 1e-9
DIFFICULTIES = ("easy", "medium", "hard")
DEFAULT_DEVSET = Path(__file__).resolve().parent / "nl" / "devset.json"
TPCH_TABLES = ("customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier")

# --------------------------------------------------------------------------
# Value and result comparison
# --------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool)


def norm(v: Any) -> Any:
    """One representation per value: bytes as text, a midnight timestamp as its date."""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, dt.datetime):
        if v.tzinfo is None and v.time() == dt.time(0):
            return v.date()
        return v
    return v


def _ulp(v: Any) -> float:
    """One unit in the last place of a decimal (a decimal is exact only to its scale)."""
    if isinstance(v, decimal.Decimal) and v.is_finite():
        exp = v.as_tuple().exponent
        if isinstance(exp, int) and exp < 0:
            return 10.0 ** exp
    return 0.0


def values_equal(a: Any, b: Any, rel_tol: float = REL_TOL) -> bool:
    a, b = norm(a), norm(b)
    if a is None or b is None:
        return a is None and b is None
    if _is_number(a) and _is_number(b):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        fa, fb = float(a), float(b)
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        if math.isinf(fa) or math.isinf(fb):
            return fa == fb
        tol = max(rel_tol * max(abs(fa), abs(fb)), ABS_TOL, _ulp(a), _ulp(b))
        return abs(fa - fb) <= tol
    if _is_number(a) or _is_number(b):
        return False
    if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    return a == b


def rows_equal(r1: Sequence[Any], r2: Sequence[Any], rel_tol: float = REL_TOL) -> bool:
    return len(r1) == len(r2) and all(values_equal(x, y, rel_tol) for x, y in zip(r1, r2))


def _value_key(v: Any):
    v = norm(v)
    if v is None:
        return (0, 0)
    if isinstance(v, bool):
        return (1, int(v))
    if _is_number(v):
        f = float(v)
        return (2, math.inf if math.isnan(f) else f)
    if isinstance(v, str):
        return (3, v)
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return (4, v.isoformat())
    return (5, repr(v))


def _row_key(row: Sequence[Any]):
    # Exact values first, numbers last, so rows that differ only within the
    # float tolerance land next to each other on both sides.
    exact = [_value_key(v) for v in row if not _is_number(norm(v))]
    approx = [_value_key(v) for v in row if _is_number(norm(v))]
    return (exact, approx)


def column_multiset_equal(a: Sequence[Any], b: Sequence[Any], rel_tol: float = REL_TOL) -> bool:
    if len(a) != len(b):
        return False
    sa, sb = sorted(a, key=_value_key), sorted(b, key=_value_key)
    return all(values_equal(x, y, rel_tol) for x, y in zip(sa, sb))


def rows_multiset_equal(g: list[tuple], e: list[tuple], rel_tol: float = REL_TOL) -> bool:
    if len(g) != len(e):
        return False
    gs, es = sorted(g, key=_row_key), sorted(e, key=_row_key)
    if all(rows_equal(x, y, rel_tol) for x, y in zip(gs, es)):
        return True
    if len(g) > 5000:
        return False
    # Tolerance-equal floats can sort differently on the two sides: match greedily.
    unused = list(range(len(gs)))
    for row in es:
        hit = next((i for i in unused if rows_equal(gs[i], row, rel_tol)), None)
        if hit is None:
            return False
        unused.remove(hit)
    return True


def _fmt_row(row: Sequence[Any]) -> str:
    return "(" + ", ".join(str(norm(v)) for v in row) + ")"


def _first_diff(got: list[tuple], exp: list[tuple], rel_tol: float) -> str:
    for i, (x, y) in enumerate(zip(got, exp)):
        if not rows_equal(x, y, rel_tol):
            return f"row {i}: got {_fmt_row(x)}, expected {_fmt_row(y)}"
    return ""


def compare_results(gold: list[list[Any]], gen: list[list[Any]], order_matters: bool,
                    allow_extra_columns: bool = False, rel_tol: float = REL_TOL,
                    max_assignments: int = 2000) -> tuple[bool, str, list[int] | None]:
    """Compare two results given as lists of columns (each a list of Python values).

    Returns (ok, reason, mapping) where mapping[j] is the generated column that
    matched gold column j.
    """
    ng, nc = len(gold), len(gen)
    g_rows = len(gold[0]) if gold else 0
    c_rows = len(gen[0]) if gen else 0
    if g_rows != c_rows:
        return False, f"row count: got {c_rows}, expected {g_rows}", None
    if nc < ng or (nc > ng and not allow_extra_columns):
        return False, f"column count: got {nc}, expected {ng}", None
    if g_rows == 0:
        return True, "both empty", list(range(ng))

    candidates: list[list[int]] = []
    for j in range(ng):
        cands = [k for k in range(nc) if column_multiset_equal(gold[j], gen[k], rel_tol)]
        cands.sort(key=lambda k: (k != j, k))  # same position first
        if not cands:
            return False, f"no generated column holds the values of gold column {j + 1}", None
        candidates.append(cands)

    gold_rows = list(zip(*gold))
    tried = 0
    first_mapping: list[int] | None = None
    order_only = False

    def search(j: int, used: list[int]):
        nonlocal tried, first_mapping, order_only
        if tried >= max_assignments:
            return None
        if j == ng:
            tried += 1
            if first_mapping is None:
                first_mapping = list(used)
            rows = list(zip(*(gen[k] for k in used)))
            if order_matters:
                if all(rows_equal(x, y, rel_tol) for x, y in zip(rows, gold_rows)):
                    return list(used)
                if rows_multiset_equal(rows, gold_rows, rel_tol):
                    order_only = True
                return None
            return list(used) if rows_multiset_equal(rows, gold_rows, rel_tol) else None
        for k in candidates[j]:
            if k in used:
                continue
            found = search(j + 1, used + [k])
            if found is not None:
                return found
        return None

    mapping = search(0, [])
    if mapping is not None:
        return True, "", mapping
    if first_mapping is None:
        return False, "no one-to-one matching of gold columns to generated columns", None
    if order_only:
        return False, "same rows in a different order", first_mapping
    rows = list(zip(*(gen[k] for k in first_mapping)))
    if not order_matters:
        rows, gold_rows = sorted(rows, key=_row_key), sorted(gold_rows, key=_row_key)
    return False, "rows differ: " + _first_diff(rows, gold_rows, rel_tol), first_mapping


def table_columns(table) -> list[list[Any]]:
    return [c.to_pylist() for c in table.columns]


# --------------------------------------------------------------------------
# Dev set
# --------------------------------------------------------------------------

_IDENT = re.compile(r"\b(?:[lopcsnr]|ps)_[a-z]+\b", re.IGNORECASE)


def load_devset(path: Path) -> list[dict]:
    items = json.loads(Path(path).read_text())
    problems = lint_devset(items)
    if problems:
        raise SystemExit(f"{path}: " + "; ".join(problems))
    return items


def lint_devset(items: list[dict]) -> list[str]:
    problems = []
    seen = set()
    for i, q in enumerate(items):
        where = q.get("id", f"entry {i}")
        for key, typ in (("id", str), ("difficulty", str), ("question", str),
                         ("gold_sql", str), ("order_matters", bool), ("notes", str)):
            if not isinstance(q.get(key), typ):
                problems.append(f"{where}: {key} missing or not {typ.__name__}")
        if q.get("id") in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(q.get("id"))
        if q.get("difficulty") not in DIFFICULTIES:
            problems.append(f"{where}: difficulty {q.get('difficulty')!r}")
        text = q.get("question", "")
        if _IDENT.search(text):
            problems.append(f"{where}: question names a column ({_IDENT.search(text).group(0)})")
        if ";" in q.get("gold_sql", "").rstrip().rstrip(";"):
            problems.append(f"{where}: gold_sql holds more than one statement")
    return problems


def sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def order_by_columns(sql: str) -> list[str] | None:
    """Top-level ORDER BY items that are plain names, lower case; None if any is not."""
    top, depth = [], 0
    for ch in sql:
        depth += ch == "("
        top.append(ch if depth == 0 else " ")
        depth -= ch == ")"
    top_s = "".join(top)
    matches = list(re.finditer(r"\border\s+by\b", top_s, re.IGNORECASE))
    if not matches:
        return None
    rest = re.split(r"\blimit\b", sql[matches[-1].end():], flags=re.IGNORECASE)[0]
    names = []
    for item in rest.split(","):
        m = re.match(r"^\s*([A-Za-z_][\w.]*)\s*(asc|desc)?\s*$", item, re.IGNORECASE)
        if not m:
            return None
        names.append(m.group(1).split(".")[-1].lower())
    return names


def top_level_limit(sql: str) -> int | None:
    m = re.search(r"\blimit\s+(\d+)\s*;?\s*$", sql, re.IGNORECASE)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------
# Flight SQL (ADBC)
# --------------------------------------------------------------------------


def connect(uri: str, args):
    import adbc_driver_flightsql.dbapi as flight_sql

    t = str(int(args.timeout))
    db_kwargs = {
        "adbc.flight.sql.rpc.timeout_seconds.query": t,
        "adbc.flight.sql.rpc.timeout_seconds.fetch": t,
        "adbc.flight.sql.rpc.timeout_seconds.update": t,
    }
    if args.token:
        db_kwargs["adbc.flight.sql.authorization_header"] = f"Bearer {args.token}"
    if args.user:
        db_kwargs["username"] = args.user
        db_kwargs["password"] = args.password or ""
    return flight_sql.connect(uri, db_kwargs=db_kwargs, autocommit=True)


def error_text(exc: BaseException) -> str:
    parts = [str(exc).strip()]
    details = getattr(exc, "details", None)
    if details:
        for k, v in details:
            k = k.decode(errors="replace") if isinstance(k, bytes) else str(k)
            v = v.decode(errors="replace") if isinstance(v, bytes) else v
            if k.lower() not in ("date", "content-type", "grpc-status", "grpc-message"):
                parts.append(f"{k}={v}")
    return " | ".join(p for p in parts if p) or type(exc).__name__


def timed_query(conn, sql: str) -> dict:
    """Run sql; return the table and the seconds to the first batch, first row and end."""
    import pyarrow as pa

    t0 = time.perf_counter()
    first_batch = first_row = None
    with conn.cursor() as cur:
        cur.execute(sql)
        reader = cur.fetch_record_batch()
        batches = []
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            now = time.perf_counter() - t0
            if first_batch is None:
                first_batch = now
            if first_row is None and batch.num_rows > 0:
                first_row = now
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=reader.schema)
    total = time.perf_counter() - t0
    return {"table": table, "first_batch_s": first_batch if first_batch is not None else total,
            "first_row_s": first_row if first_row is not None else total, "total_s": total}


def model_calls_between(conn, start_ms: int, end_ms: int) -> dict:
    """Model calls recorded in system.model_calls between two wall-clock instants.

    The client does not learn the server's query_id, so calls are correlated by
    time: this is right only while no other client uses the server's models.
    """
    t = timed_query(conn, (
        "SELECT query_id, function, count(*) AS calls, sum(latency_ms) AS latency_ms, "
        "sum(CASE WHEN cache_hit THEN 1 ELSE 0 END) AS cache_hits, "
        "sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens "
        f"FROM system.model_calls WHERE time >= to_timestamp_millis({start_ms}) "
        f"AND time <= to_timestamp_millis({end_ms}) GROUP BY query_id, function"))["table"]
    groups = t.to_pylist()
    return {
        "model_ms": sum(float(g["latency_ms"] or 0) for g in groups),
        "calls": sum(int(g["calls"] or 0) for g in groups),
        "cache_hits": sum(int(g["cache_hits"] or 0) for g in groups),
        "query_ids": sorted({g["query_id"] for g in groups}),
        "by_function": groups,
    }


class Server:
    def __init__(self, args):
        self.args = args
        self.conn = None
        self.model_calls_ok = not args.no_model_calls
        self.model_calls_error: str | None = None

    def open(self) -> None:
        self.close()
        self.conn = connect(self.args.host, self.args)
        for stmt in self.args.setup or []:
            with self.conn.cursor() as cur:
                cur.execute(stmt)
                try:
                    cur.fetchall()
                except Exception:  # noqa: BLE001 - a SET returns no result set
                    pass

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
            self.conn = None

    def healthy(self) -> bool:
        try:
            return timed_query(self.conn, "SELECT 1")["table"].num_rows == 1
        except Exception:  # noqa: BLE001
            return False

    def run(self, sql: str) -> dict:
        try:
            return timed_query(self.conn, sql)
        except Exception:
            if not self.healthy():  # a broken connection: reconnect for the next query
                try:
                    self.open()
                except Exception:  # noqa: BLE001 - the next query reports it
                    pass
            raise


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = max(0, math.ceil(p / 100 * len(s)) - 1)  # nearest rank
    return s[k]


def short(text: str | None, n: int) -> str:
    text = re.sub(r"\s+", " ", text or "")
    return text if len(text) <= n else text[: n - 1] + "…"


def run_question(server: Server, q: dict, args) -> dict:
    rec: dict[str, Any] = {"id": q["id"], "difficulty": q["difficulty"], "question": q["question"],
                           "order_matters": q["order_matters"], "status": None, "detail": ""}
    try:
        gold = server.run(q["gold_sql"])
        rec["gold_rows"] = gold["table"].num_rows
        rec["gold_total_s"] = round(gold["total_s"], 4)
    except Exception as exc:  # noqa: BLE001
        rec.update(status="gold_error", detail=error_text(exc))
        return rec

    nl_sql = q["gold_sql"] if args.gold_as_generated else f"SELECT * FROM nl_query({sql_string(q['question'])})"
    start_ms = int(time.time() * 1000)
    try:
        gen = server.run(nl_sql)
    except Exception as exc:  # noqa: BLE001
        gen = None
        rec.update(status="error", detail=error_text(exc))
    end_ms = int(time.time() * 1000)
    if gen is not None:
        rec.update(rows=gen["table"].num_rows, columns=gen["table"].column_names,
                   first_batch_s=round(gen["first_batch_s"], 4),
                   first_row_s=round(gen["first_row_s"], 4), total_s=round(gen["total_s"], 4))
        ok, reason, mapping = compare_results(table_columns(gold["table"]), table_columns(gen["table"]),
                                              q["order_matters"], args.allow_extra_columns)
        rec.update(status="ok" if ok else "wrong", detail=reason, column_mapping=mapping)
        if not ok and gen["table"].num_rows <= 20:
            rec["generated_result"] = [[str(norm(v)) for v in r]
                                       for r in zip(*table_columns(gen["table"]))]
    if server.model_calls_ok:
        try:
            rec["model"] = model_calls_between(server.conn, start_ms - 50, end_ms + 50)
        except Exception as exc:  # noqa: BLE001
            server.model_calls_ok = False
            server.model_calls_error = error_text(exc)
    if not args.gold_as_generated:
        try:
            t = server.run(
                "SELECT sql, attempts, model_calls, model_ms, total_ms, outcome, retrieved_tables FROM system.nl_tasks "
                f"WHERE question = {sql_string(q['question'])} AND NOT cache_hit ORDER BY time DESC LIMIT 1")["table"]
            if t.num_rows:
                task = t.to_pylist()[0]
                task["compiler_ms"] = round(float(task["total_ms"]) - float(task["model_ms"]), 1)
                rec["nl_task"] = task
        except Exception as exc:  # noqa: BLE001 - an older server has no system.nl_tasks
            rec["nl_task_error"] = short(error_text(exc), 200)
    if not args.no_nl_sql and not args.gold_as_generated:
        try:
            t = server.run(f"SELECT nl_sql({sql_string(q['question'])})")["table"]
            rec["generated_sql"] = t.column(0)[0].as_py() if t.num_rows and t.num_columns else None
        except Exception as exc:  # noqa: BLE001
            rec["generated_sql_error"] = short(error_text(exc), 300)
    return rec


def summarize(results: list[dict]) -> dict:
    def block(rs: list[dict]) -> dict:
        scored = [r for r in rs if r["status"] != "gold_error"]
        c = Counter(r["status"] for r in rs)
        return {"questions": len(rs), "scored": len(scored), "ok": c["ok"], "wrong": c["wrong"],
                "error": c["error"], "gold_error": c["gold_error"],
                "accuracy": round(c["ok"] / len(scored), 4) if scored else None}

    ran = [r for r in results if "first_row_s" in r]
    lat = {}
    for key in ("first_row_s", "total_s"):
        vals = [r[key] for r in ran]
        lat[key] = {"median": round(statistics.median(vals), 4) if vals else None,
                    "p90": round(percentile(vals, 90), 4) if vals else None, "n": len(vals)}
    # Questions whose generated query ran or that spent model calls at all.
    model = [r["model"]["model_ms"] for r in results
             if r.get("model") and (r["model"]["calls"] or r["status"] in ("ok", "wrong"))]
    # The compiler's own time: compile time less model time (retrieval,
    # prompting, checking), per question that was compiled (not cached).
    compiler = [r["nl_task"]["compiler_ms"] for r in results if r.get("nl_task")]
    return {
        "compiler_ms": {"median": round(statistics.median(compiler), 1) if compiler else None,
                        "p90": round(percentile(compiler, 90), 1) if compiler else None, "n": len(compiler)},
        "overall": block(results),
        "by_difficulty": {d: block([r for r in results if r["difficulty"] == d])
                          for d in DIFFICULTIES if any(r["difficulty"] == d for r in results)},
        "latency": lat,
        "model_ms": {"median": round(statistics.median(model), 1) if model else None,
                     "p90": round(percentile(model, 90), 1) if model else None, "n": len(model)},
    }


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_row(r: dict) -> None:
    rows = f"{r.get('gold_rows', '-')}/{r.get('rows', '-')}"
    model = r.get("model", {}).get("model_ms") if r.get("model") else None
    print(f"{r['id']:<5} {r['difficulty']:<6} {r['status']:<10} {rows:>9} "
          f"{fmt_s(r.get('first_row_s')):>8} {fmt_s(r.get('total_s')):>8} "
          f"{'-' if model is None else f'{model:.0f}':>8}  {short(r['detail'], 70)}", flush=True)


def print_summary(s: dict) -> None:
    def line(name: str, b: dict) -> str:
        acc = "-" if b["accuracy"] is None else f"{100 * b['accuracy']:.1f}%"
        return (f"  {name:<8} {acc:>6}  ok {b['ok']}/{b['scored']}  wrong {b['wrong']}  "
                f"error {b['error']}" + (f"  gold_error {b['gold_error']}" if b["gold_error"] else ""))

    print("\nexecution accuracy")
    print(line("overall", s["overall"]))
    for d, b in s["by_difficulty"].items():
        print(line(d, b))
    fr, tt = s["latency"]["first_row_s"], s["latency"]["total_s"]
    print(f"nl_query time to first row: median {fmt_s(fr['median'])} s, p90 {fmt_s(fr['p90'])} s "
          f"(n={fr['n']}); total: median {fmt_s(tt['median'])} s, p90 {fmt_s(tt['p90'])} s")
    m = s["model_ms"]
    if m["n"]:
        print(f"model time per question: median {m['median']} ms, p90 {m['p90']} ms (n={m['n']})")
    c = s.get("compiler_ms", {})
    if c.get("n"):
        print(f"compiler time beyond the model: median {c['median']} ms, p90 {c['p90']} ms (n={c['n']})")


def run_server(args, items: list[dict]) -> int:
    server = Server(args)
    try:
        server.open()
        timed_query(server.conn, "SELECT 1")
    except Exception as exc:  # noqa: BLE001
        print(f"cannot connect to {args.host} or run --setup: {error_text(exc)}", file=sys.stderr)
        server.close()
        return 2
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    print(f"{'id':<5} {'diff':<6} {'status':<10} {'rows g/n':>9} {'first s':>8} {'total s':>8} "
          f"{'model ms':>8}  detail")
    results = []
    try:
        for q in items:
            r = run_question(server, q, args)
            results.append(r)
            print_row(r)
    except KeyboardInterrupt:
        print("interrupted: summarizing the questions run so far", file=sys.stderr)
    finally:
        server.close()
    summary = summarize(results)
    print_summary(summary)
    if server.model_calls_error:
        print(f"(system.model_calls not read: {short(server.model_calls_error, 200)})")
    if args.out:
        doc = {"label": args.label, "host": args.host, "devset": str(args.devset), "started": started,
               "setup": args.setup or [], "allow_extra_columns": args.allow_extra_columns,
               "gold_as_generated": args.gold_as_generated,
               "model_calls_error": server.model_calls_error, "summary": summary, "results": results}
        Path(args.out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------
# --validate-lake: the gold SQL on the `datafusion` Python package
# --------------------------------------------------------------------------


def validate_lake(lake: Path, items: list[dict], partitions: int) -> list[dict]:
    from datafusion import SessionConfig, SessionContext

    ctx = SessionContext(SessionConfig().with_target_partitions(partitions))
    for t in TPCH_TABLES:
        path = lake / t
        ctx.register_parquet(t, str(path if path.is_dir() else lake / f"{t}.parquet"))
    out = []
    print(f"lake {lake}")
    for q in items:
        rec = {"id": q["id"], "difficulty": q["difficulty"], "warnings": []}
        t0 = time.perf_counter()
        try:
            table = ctx.sql(q["gold_sql"]).to_arrow_table()
        except Exception as exc:  # noqa: BLE001
            rec.update(status="error", detail=str(exc).splitlines()[0])
            print(f"{q['id']:<5} ERROR {rec['detail']}")
            out.append(rec)
            continue
        rec.update(status="ok", rows=table.num_rows, seconds=round(time.perf_counter() - t0, 3))
        cols = table_columns(table)
        rows = list(zip(*cols))
        if not rows:
            rec["warnings"].append("empty result")
        keys = order_by_columns(q["gold_sql"])
        names = [n.lower() for n in table.column_names]
        if q["order_matters"] and keys is None:
            rec["warnings"].append("order_matters without a top-level ORDER BY of plain names")
        if keys and all(k in names for k in keys):
            idx = [names.index(k) for k in keys]
            ks = [tuple(r[i] for i in idx) for r in rows]
            ties = sum(1 for a, b in zip(ks, ks[1:]) if rows_equal(a, b, 0.0))
            if ties:
                rec["warnings"].append(f"{ties} adjacent rows tie on ORDER BY {keys}")
            limit = top_level_limit(q["gold_sql"])
            if limit is not None and len(rows) == limit:
                more_sql = re.sub(r"\blimit\s+\d+\s*;?\s*$", f"LIMIT {limit + 1}", q["gold_sql"],
                                  flags=re.IGNORECASE)
                more = list(zip(*table_columns(ctx.sql(more_sql).to_arrow_table())))
                if len(more) > limit and rows_equal(tuple(more[limit][i] for i in idx), ks[-1], 0.0):
                    rec["warnings"].append(f"row {limit + 1} ties with row {limit}: top-{limit} ambiguous")
        elif keys:
            rec["warnings"].append(f"ORDER BY {keys} not all in the output: ties unchecked")
        # The gold result must match itself with columns reversed and rows shuffled.
        if cols and rows:
            gen = [list(reversed(c)) for c in reversed(cols)] if not q["order_matters"] else cols[::-1]
            ok, reason, _ = compare_results(cols, gen, q["order_matters"])
            if not ok:
                rec["warnings"].append(f"self-compare failed: {reason}")
        preview = _fmt_row(rows[0]) if rows else ""
        print(f"{q['id']:<5} {q['difficulty']:<6} rows {table.num_rows:>5}  {rec['seconds']:>7.2f} s  "
              f"{short(preview, 60)}" + ("  WARN " + "; ".join(rec["warnings"]) if rec["warnings"] else ""),
              flush=True)
        out.append(rec)
    return out


# --------------------------------------------------------------------------
# --self-test
# --------------------------------------------------------------------------


def self_test(devset: Path | None) -> int:
    D = decimal.Decimal
    checks = 0

    def check(cond: bool, what: str) -> None:
        nonlocal checks
        assert cond, what
        checks += 1

    # values
    check(values_equal(1.0, 1.0 + 1e-9), "float within 1e-6")
    check(not values_equal(1.0, 1.001), "float outside 1e-6")
    check(values_equal(D("12.50"), 12.5), "decimal vs float")
    check(values_equal(D("3"), 3), "decimal vs int")
    check(values_equal(3, 3.0), "int vs float")
    check(not values_equal(3, 4), "ints exact")
    check(values_equal(D("0.049996"), 0.04999623), "decimal exact only to its scale")
    check(not values_equal(D("0.049996"), 0.0500), "decimal scale is not a blanket pass")
    check(values_equal(dt.date(1995, 3, 1), dt.datetime(1995, 3, 1)), "midnight timestamp is its date")
    check(not values_equal(dt.date(1995, 3, 1), "1995-03-01"), "date vs string")
    check(not values_equal("GERMANY", "germany"), "strings exact")
    check(values_equal(None, None) and not values_equal(None, 0), "nulls")
    check(not values_equal(True, 1), "bool vs int")
    check(values_equal(float("nan"), float("nan")), "nan")

    gold = [["GERMANY", "FRANCE", "PERU"], [D("10.00"), D("20.00"), D("30.00")]]
    # same result, other column names and types
    ok, _, m = compare_results(gold, [["GERMANY", "FRANCE", "PERU"], [10.0, 20.0, 30.0]], True)
    check(ok and m == [0, 1], "identity")
    # columns swapped
    ok, _, m = compare_results(gold, [[10.0, 20.0, 30.0], ["GERMANY", "FRANCE", "PERU"]], True)
    check(ok and m == [1, 0], "columns in another order")
    # rows in another order: fine unordered, wrong ordered
    shuffled = [["PERU", "GERMANY", "FRANCE"], [30, 10, 20]]
    check(compare_results(gold, shuffled, False)[0], "multiset")
    ok, reason, _ = compare_results(gold, shuffled, True)
    check(not ok and "order" in reason, f"ordered: {reason}")
    # a wrong value
    ok, reason, _ = compare_results(gold, [["GERMANY", "FRANCE", "PERU"], [10, 20, 31]], False)
    check(not ok, "wrong value")
    # value multisets match per column but the pairing is wrong
    ok, reason, _ = compare_results(gold, [["GERMANY", "FRANCE", "PERU"], [20, 10, 30]], False)
    check(not ok and "rows differ" in reason, f"pairing: {reason}")
    # row and column counts
    check(not compare_results(gold, [["GERMANY", "FRANCE"], [10, 20]], False)[0], "row count")
    check(not compare_results(gold, [gold[0]], False)[0], "too few columns")
    extra = gold + [[1, 2, 3]]
    check(not compare_results(gold, extra, False)[0], "extra column rejected by default")
    check(compare_results(gold, extra, False, allow_extra_columns=True)[0], "extra column allowed")
    # two columns with the same multiset: needs the search over assignments
    g2 = [[1, 2, 3], [3, 1, 2]]
    check(compare_results(g2, [[3, 1, 2], [1, 2, 3]], True)[0], "ambiguous column multisets")
    check(not compare_results(g2, [[1, 2, 3], [1, 2, 3]], True)[0], "ambiguous multisets, wrong rows")
    # scalar answers, duplicates, nulls, empty
    check(compare_results([[D("123.4567")]], [[123.4567000001]], False)[0], "scalar")
    check(compare_results([[1, 1, 2], ["a", "a", "b"]], [["a", "b", "a"], [1, 2, 1]], False)[0], "duplicate rows")
    check(not compare_results([[1, 1, 2]], [[1, 2, 2]], False)[0], "duplicate counts matter")
    check(compare_results([[None, 1]], [[1, None]], False)[0], "null in multiset")
    check(compare_results([[], []], [[], []], True)[0], "both empty")
    check(not compare_results([[], []], [[]], True)[0], "empty, other column count")
    # floats that differ inside the tolerance and sort differently
    g3 = [["x", "y"], [1.0000000001, 1.0]]
    check(compare_results(g3, [["y", "x"], [1.0000000000, 0.99999999999]], False)[0], "near-equal floats")
    # helpers
    check(sql_string("Bob's orders") == "'Bob''s orders'", "quote doubling")
    check(order_by_columns("SELECT a, (SELECT 1 ORDER BY z) FROM t ORDER BY b DESC, a LIMIT 5") == ["b", "a"],
          "order by parse")
    check(top_level_limit("SELECT * FROM t ORDER BY a LIMIT 10") == 10, "limit parse")
    check(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == 9, "p90")
    check(lint_devset([{"id": "x", "difficulty": "easy", "question": "sum of l_quantity", "gold_sql": "SELECT 1",
                        "order_matters": False, "notes": ""}]) != [], "lint catches a column name")
    if devset is not None and devset.exists():
        items = json.loads(devset.read_text())
        problems = lint_devset(items)
        check(not problems, "; ".join(problems))
        check(len(items) >= 40, "at least 40 questions")
        print(f"devset {devset}: {len(items)} questions, "
              + ", ".join(f"{d} {n}" for d, n in Counter(q['difficulty'] for q in items).items()))
    print(f"self-test: {checks} passed, 0 failed")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="grpc://127.0.0.1:50050", help="Flight SQL URI of the scheduler")
    p.add_argument("--devset", type=Path, default=DEFAULT_DEVSET)
    p.add_argument("--setup", action="append", metavar="SQL",
                   help="statement run once on the connection first (repeatable), e.g. SET lakelink.llm.x = 'y'")
    p.add_argument("--label", default="", help="name of this configuration, stored in --out")
    p.add_argument("--out", help="write per-question results and the summary to this JSON file")
    p.add_argument("--ids", help="comma-separated question ids to run (default all)")
    p.add_argument("--difficulty", choices=DIFFICULTIES, help="run only questions of this difficulty")
    p.add_argument("--timeout", type=float, default=600, help="seconds per Flight SQL call")
    p.add_argument("--token", help="bearer token")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--allow-extra-columns", action="store_true",
                   help="accept a generated result with more columns than the gold one")
    p.add_argument("--no-nl-sql", action="store_true", help="do not call nl_sql() for the generated SQL")
    p.add_argument("--no-model-calls", action="store_true", help="do not read system.model_calls")
    p.add_argument("--gold-as-generated", action="store_true",
                   help="run each gold query in place of nl_query (checks the runner end to end: expect 100%%)")
    p.add_argument("--self-test", action="store_true", help="test the comparison logic and the dev set, then exit")
    p.add_argument("--validate-lake", action="append", type=Path, metavar="DIR",
                   help="run the gold SQL with the datafusion package over this lake (repeatable)")
    p.add_argument("--partitions", type=int, default=2, help="target partitions for --validate-lake")
    args = p.parse_args(argv)

    if args.self_test:
        return self_test(args.devset)
    items = load_devset(args.devset)
    if args.ids:
        wanted = [i.strip() for i in args.ids.split(",") if i.strip()]
        unknown = set(wanted) - {q["id"] for q in items}
        if unknown:
            p.error(f"unknown ids: {', '.join(sorted(unknown))}")
        items = [q for q in items if q["id"] in wanted]
    if args.difficulty:
        items = [q for q in items if q["difficulty"] == args.difficulty]
    if args.validate_lake:
        report = {}
        for lake in args.validate_lake:
            lake = lake.expanduser()
            report[str(lake)] = validate_lake(lake, items, args.partitions)
        bad = [(lake, r["id"]) for lake, rs in report.items() for r in rs
               if r["status"] != "ok" or r["warnings"]]
        print(f"\n{sum(len(v) for v in report.values())} gold runs, {len(bad)} with errors or warnings")
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        return 1 if any(r["status"] != "ok" for rs in report.values() for r in rs) else 0
    return run_server(args, items)


if __name__ == "__main__":
    sys.exit(main())
