#!/usr/bin/env python3
"""TPC-H: LakeLink next to its peers, on the same lake and the same machine.

    python benches/tpch_peers.py --scales 1,10 --needle-scale 30 --out benches/results/tpch.json

Systems (``--systems``, default all five):

  lakelink-cluster   a scheduler and two executors (one task slot each) as separate
                     processes; ``lakelink-tpch --host`` sends the queries over Flight SQL
  lakelink-embedded  ``lakelink-tpch --lake``: scheduler + 2 executors in one process
  datafusion         ``lakelink-tpch --lake --engine datafusion``: plain DataFusion
  duckdb             DuckDB (PyPI ``duckdb``), threads=2, views over read_parquet()
  spark              Spark local[2] (PyPI ``pyspark``), parquet folders as temp views

Every system runs the same SQL files (tests/testdata/tpch/q1..q22.sql and
benches/queries/needle.sql) as its own child process, so its peak memory (VmHWM)
can be read. Each query runs ``--iterations`` times in that process: the first
run is reported as "cold", the best of all runs as the time. Each system writes
every query's result as an Arrow IPC file, and every result is compared with
DuckDB's; a wrong result is a failure, not a time. See benches/README.md.

The DuckDB and Spark children are this same file in worker mode:
``tpch_peers.py worker duckdb|spark --lake DIR ...`` (the same options as
lakelink-tpch: --queries, --iterations, --query-dir, --sql-file, --json,
--results-dir).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUERY_DIR = REPO / "tests" / "testdata" / "tpch"
NEEDLE_SQL = REPO / "benches" / "queries" / "needle.sql"
TABLES = ["lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region"]
SYSTEMS = ["lakelink-cluster", "lakelink-embedded", "datafusion", "duckdb", "spark"]
LAKELINK_SYSTEMS = ["lakelink-cluster", "lakelink-embedded"]
TPCH = [f"q{i}" for i in range(1, 23)]
NEEDLE = "needle"
NEEDLE_SCALE_QUERIES = ["q1", "q6", NEEDLE]

# Spark SQL rewrites: query -> [(text in the query, replacement)]. Only for what
# Spark SQL truly rejects; every pair must match its query or the run fails, so
# a stale entry is noticed. Spark 4.3.0 parses and runs all 22 queries and the
# needle unchanged (checked at SF 0.1 against DuckDB's results), so it is empty.
SPARK_REWRITES: dict[str, list[tuple[str, str]]] = {}

TARGETS = {  # name -> threshold, see summarize()
    "cluster_vs_datafusion_max": 1.3,
    "cluster_vs_duckdb_max": 2.0,
    "spark_vs_cluster_min": 3.0,
    "needle_max_s": 5.0,
}

REL_TOL = 1e-6
KB = 1024


def log(msg: str) -> None:
    print(f"[tpch_peers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------
# Processes and their peak memory
# ---------------------------------------------------------------------------


def vm_hwm_kb(pid: int | str) -> int | None:
    """The RSS high-water mark of a live process, from /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, depth) of every live process below `root` (scanning /proc for parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [(root, 0)]
    while todo:
        pid, depth = todo.pop()
        for c in children.get(pid, []):
            out.append((c, depth + 1))
            todo.append((c, depth + 1))
    return out


# Runs a command as its child and writes the child's ru_maxrss (kB) to a file.
# Started as `python3 -S`, so it is small: a child's ru_maxrss starts from its
# parent's RSS at fork (Linux carries the pre-exec high-water mark over), which
# for a fork of this orchestrator (pyarrow loaded) would hide children below
# ~130 MB. SIGTERM is passed on to the child.
LAUNCHER = r"""
import os, signal, sys
out, cmd = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        sys.stderr.write(f"cannot run {cmd[0]}: {e}\n")
        sys.stderr.flush()
    os._exit(127)
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
signal.signal(signal.SIGINT, lambda *_: os.kill(pid, signal.SIGINT))
_, status, ru = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(str(ru.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


class Watched:
    """A child process (in its own process group, started through LAUNCHER) whose
    peak RSS is tracked: VmHWM of it and of every descendant, sampled while it
    runs, and its ru_maxrss when it ends (exact even for a short-lived process)."""

    def __init__(self, name: str, cmd: list, log_path: Path, env: dict | None = None,
                 cwd: Path | None = None, child_labels: dict[str, str] | None = None):
        self.name = name
        self.child_labels = child_labels or {}
        self.cmd = [str(c) for c in cmd]
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._rss_file = log_path.with_suffix(".maxrss")
        self._rss_file.unlink(missing_ok=True)
        self._log = open(log_path, "ab")
        self._log.write(("$ " + " ".join(self.cmd) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(self._rss_file), *self.cmd],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid  # the launcher's, which is also the process group's id
        self.peaks: dict[str, int] = {}  # label -> kB
        self._saw_grandchildren = False
        self.returncode: int | None = None
        self.timed_out = False

    def _note(self, label: str, kb: int | None) -> None:
        if kb is not None:
            self.peaks[label] = max(self.peaks.get(label, 0), kb)

    def sample(self) -> None:
        if self.returncode is not None:
            return
        for pid, depth in descendants(self.pid):
            if depth == 1:
                self._note(self.name, vm_hwm_kb(pid))
            else:  # e.g. Spark's JVM; short-lived helpers (shell wrappers) under 64 MiB are left out
                self._saw_grandchildren = True
                comm, kb = proc_comm(pid), vm_hwm_kb(pid)
                if comm in self.child_labels:
                    self._note(self.child_labels[comm], kb)
                elif kb is not None and kb >= 64 * KB:
                    self._note(f"{self.name}/{comm}", kb)

    def _reap(self, block: bool) -> bool:
        if self.returncode is not None:
            return True
        try:
            pid, status, _ = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, None
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status) if status is not None else -1
        self.proc.returncode = self.returncode
        # ru_maxrss is the max over the process and its reaped descendants, so it is
        # the process's own only if it had none (a Spark worker reaps its JVM).
        with contextlib.suppress(OSError, ValueError):
            if not self._saw_grandchildren:
                self._note(self.name, int(self._rss_file.read_text()))
        self._rss_file.unlink(missing_ok=True)
        self._log.close()
        return True

    def alive(self) -> bool:
        return not self._reap(block=False)

    def wait(self, timeout_s: float, idle_s: float | None = None, poll_s: float = 0.25) -> int:
        """Waits for the end; stops the process after `timeout_s`, or after `idle_s`
        without new output in its log (the query runners print a line per query)."""
        now = time.monotonic()
        deadline, last_out, size = now + timeout_s, now, -1
        while True:
            self.sample()
            if self._reap(block=False):
                return self.returncode  # type: ignore[return-value]
            now = time.monotonic()
            with contextlib.suppress(OSError):
                if self.log_path.stat().st_size != size:
                    size, last_out = self.log_path.stat().st_size, now
            if now > deadline or (idle_s is not None and now - last_out > idle_s):
                self.timed_out = True
                self.stop()
                return self.returncode  # type: ignore[return-value]
            time.sleep(poll_s)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to this child's own process group, SIGKILL after `grace_s`."""
        self.sample()
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self._reap(block=False):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._reap(block=True)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


# ---------------------------------------------------------------------------
# Result files and their comparison with DuckDB's
# ---------------------------------------------------------------------------


def read_arrow(path: Path):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with pa.memory_map(str(path)) as src:
        try:
            return ipc.open_file(src).read_all()
        except pa.ArrowInvalid:
            pass
    with pa.memory_map(str(path)) as src:
        return ipc.open_stream(src).read_all()


def read_result(path: Path):
    """A result file; lakelink-tpch writes an empty file for a result without batches."""
    import pyarrow as pa

    if path.stat().st_size == 0:
        return pa.table({})
    return read_arrow(path)


def write_arrow(table, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as w:
        w.write_table(table)


def strip_sql_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", lambda m: " " * len(m.group()), sql, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", lambda m: " " * len(m.group()), sql)


def top_level(sql: str) -> str:
    """`sql` with everything inside parentheses (and string literals) blanked, same length."""
    out, depth, in_str = [], 0, False
    for ch in sql:
        if in_str:
            out.append(" ")
            if ch == "'":
                in_str = False
            continue
        if ch == "'" and depth == 0:
            in_str = True
            out.append(" ")
        elif ch == "(":
            depth += 1
            out.append(" ")
        elif ch == ")":
            depth -= 1
            out.append(" ")
        else:
            out.append(ch if depth == 0 else " ")
    return "".join(out)


def order_spec(sql: str, columns: list[str]) -> tuple[list[int] | None, int | None, str]:
    """The outermost ORDER BY of `sql` as result column indexes, and its LIMIT.
    Returns (None, limit, note) when there is no ORDER BY or a key is no output column."""
    text = strip_sql_comments(sql).strip().rstrip(";")
    flat = top_level(text)
    limit_m = re.search(r"\blimit\s+(\d+)\s*$", flat, re.IGNORECASE)
    limit = int(limit_m.group(1)) if limit_m else None
    matches = list(re.finditer(r"\border\s+by\b", flat, re.IGNORECASE))
    if not matches:
        return None, limit, "no ORDER BY: compared as a multiset"
    start = matches[-1].end()
    end = limit_m.start() if limit_m else len(text)
    keys, depth, cur = [], 0, ""
    for ch in text[start:end]:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            keys.append(cur)
            cur = ""
        else:
            cur += ch
    keys.append(cur)
    lower = [c.lower() for c in columns]
    idx = []
    for key in keys:
        k = re.sub(r"\s+(asc|desc)?\s*(nulls\s+(first|last))?\s*$", "", key.strip(), flags=re.IGNORECASE)
        k = re.sub(r"\s+(asc|desc)$", "", k.strip(), flags=re.IGNORECASE).strip().strip('"').lower()
        if k.isdigit() and 1 <= int(k) <= len(columns):
            idx.append(int(k) - 1)
        elif k in lower:
            idx.append(lower.index(k))
        elif k.split(".")[-1] in lower:
            idx.append(lower.index(k.split(".")[-1]))
        else:
            return None, limit, f"ORDER BY key {k!r} is no output column: compared as a multiset"
    return idx, limit, ""


def decimal_unit(arrow_type) -> float:
    import pyarrow.types as pt

    if pt.is_decimal(arrow_type):
        return 10.0 ** -arrow_type.scale
    return 0.0


def _num(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float, Decimal)):
        return float(v)
    return None


def _norm(v):
    if isinstance(v, dt.datetime) and v.time() == dt.time(0) and v.tzinfo is None:
        return v.date()
    if isinstance(v, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            return v.decode()
    return v


def values_equal(a, b, unit: float) -> bool:
    """Equal, with numbers allowed to differ by a relative 1e-6 or by one unit in
    the last decimal place of the coarser decimal column (Q1's averages)."""
    if a is None or b is None:
        return a is None and b is None
    na, nb = _num(a), _num(b)
    if na is not None and nb is not None:
        if na == nb:
            return True
        if math.isnan(na) or math.isnan(nb):
            return math.isnan(na) and math.isnan(nb)
        tol = max(REL_TOL * max(abs(na), abs(nb)), unit * (1 + 1e-9), 1e-12)
        return abs(na - nb) <= tol
    return _norm(a) == _norm(b)


def rows_equal(r1, r2, units) -> bool:
    return all(values_equal(a, b, u) for a, b, u in zip(r1, r2, units))


def _sort_key(row):
    out = []
    for v in row:
        v = _norm(v)
        n = _num(v)
        if v is None:
            out.append((0, 0))
        elif n is not None:
            out.append((1, n))
        elif isinstance(v, str):
            out.append((2, v))
        elif isinstance(v, (dt.date, dt.datetime)):
            out.append((3, v.isoformat()))
        else:
            out.append((4, repr(v)))
    return out


def multiset_equal(ref_rows, got_rows, units) -> bool:
    a, b = sorted(ref_rows, key=_sort_key), sorted(got_rows, key=_sort_key)
    if all(rows_equal(x, y, units) for x, y in zip(a, b)):
        return True
    if len(a) > 3000:
        return False
    left = list(b)  # near-equal numbers can sort differently: match greedily
    for x in a:
        for i, y in enumerate(left):
            if rows_equal(x, y, units):
                del left[i]
                break
        else:
            return False
    return True


def table_rows(table) -> list[tuple]:
    cols = [c.to_pylist() for c in table.columns]
    return list(zip(*cols)) if cols else []


def show_row(row) -> str:
    return "(" + ", ".join(str(_norm(v)) for v in row) + ")"


def compare_results(ref, got, sql: str) -> tuple[bool, str]:
    """Compares `got` with the reference `ref` (DuckDB's). Rows that tie on the
    ORDER BY keys may come in any order; without ORDER BY the rows are a multiset.
    With a LIMIT, the last tie group is compared on its sort keys only (which
    tied rows make the cut is up to the engine)."""
    if got.num_rows == 0 and ref.num_rows == 0:
        return True, ""
    if got.num_columns != ref.num_columns:
        return False, f"{got.num_columns} columns, expected {ref.num_columns}"
    if got.num_rows != ref.num_rows:
        return False, f"{got.num_rows} rows, expected {ref.num_rows}"
    units = [max(decimal_unit(r.type), decimal_unit(g.type)) for r, g in zip(ref.schema, got.schema)]
    ref_rows, got_rows = table_rows(ref), table_rows(got)
    keys, limit, note = order_spec(sql, ref.column_names)
    n = len(ref_rows)
    if keys is None:
        ok = multiset_equal(ref_rows, got_rows, units)
        return ok, ("" if ok else "rows differ (as a multiset)") + (f"; {note}" if note and not ok else "")
    key_units = [units[k] for k in keys]

    def key_of(row):
        return tuple(row[k] for k in keys)

    i = 0
    while i < n:
        j = i + 1
        while j < n and rows_equal(key_of(ref_rows[i]), key_of(ref_rows[j]), key_units):
            j += 1
        if limit is not None and j == n and n == limit:
            ok = multiset_equal([key_of(r) for r in ref_rows[i:j]], [key_of(r) for r in got_rows[i:j]],
                                key_units)
        else:
            ok = multiset_equal(ref_rows[i:j], got_rows[i:j], units)
        if not ok:
            return False, (f"row {i + 1} differs: {show_row(got_rows[i])[:200]} "
                           f"expected {show_row(ref_rows[i])[:200]}")
        i = j
    return True, ""


# ---------------------------------------------------------------------------
# Worker mode: DuckDB and Spark in a child process (same CLI as lakelink-tpch)
# ---------------------------------------------------------------------------


def query_list(queries: list[str], query_dir: Path, sql_file: Path | None) -> list[tuple[str, str]]:
    out = [(f"q{q}", (query_dir / f"q{q}.sql").read_text()) for q in queries]
    if sql_file is not None:
        out.append((sql_file.stem, sql_file.read_text()))
    return out


def spark_sql(name: str, sql: str) -> str:
    for old, new in SPARK_REWRITES.get(name, []):
        if old not in sql:
            raise ValueError(f"Spark rewrite for {name} no longer matches: {old!r}")
        sql = sql.replace(old, new)
    return sql


def _atomic_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def worker_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tpch_peers.py worker")
    ap.add_argument("engine", choices=["duckdb", "spark"])
    ap.add_argument("--lake", required=True, type=Path)
    ap.add_argument("--queries", default="", help="default: all 22, or none when --sql-file is given")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--query-dir", type=Path, default=QUERY_DIR)
    ap.add_argument("--sql-file", type=Path)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--results-dir", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spark-memory", default="8g")
    ap.add_argument("--spark-conf", action="append", default=[])
    ap.add_argument("--tmp-dir", type=Path)
    a = ap.parse_args(argv)
    nums = [q.strip() for q in a.queries.split(",") if q.strip()]
    if not nums and a.sql_file is None:
        nums = [str(i) for i in range(1, 23)]
    queries = query_list(nums, a.query_dir, a.sql_file)
    out: dict = {"engine": a.engine, "lake": str(a.lake), "results": []}
    tables = [t for t in TABLES if (a.lake / t).is_dir()]

    started = time.perf_counter()
    if a.engine == "duckdb":
        import duckdb

        con = duckdb.connect()
        con.execute(f"SET threads = {a.threads}")
        if a.tmp_dir:
            con.execute(f"SET temp_directory = '{a.tmp_dir}'")
        for t in tables:
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{a.lake / t}/*.parquet')")

        def run(name: str, sql: str):
            res = con.execute(sql)
            fetch = getattr(res, "to_arrow_table", None) or getattr(res, "fetch_arrow_table")
            return fetch()

        def memory() -> dict:
            return {"duckdb (python)": vm_hwm_kb("self")}

        def close() -> None:
            con.close()

        out["version"] = duckdb.__version__
    else:
        import pyspark
        from pyspark.sql import SparkSession

        b = (SparkSession.builder.master(f"local[{a.threads}]").appName("lakelink-tpch-peers")
             .config("spark.driver.memory", a.spark_memory)
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false"))
        if a.tmp_dir:
            b = b.config("spark.local.dir", str(a.tmp_dir))
        for kv in a.spark_conf:
            k, _, v = kv.partition("=")
            b = b.config(k, v)
        spark = b.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        for t in tables:
            spark.read.parquet(str(a.lake / t)).createOrReplaceTempView(t)
        jvm_pid = int(spark._jvm.java.lang.ProcessHandle.current().pid())

        def run(name: str, sql: str):
            return spark.sql(spark_sql(name, sql)).toArrow()

        def memory() -> dict:
            return {"spark driver (python)": vm_hwm_kb("self"), "spark JVM": vm_hwm_kb(jvm_pid)}

        def close() -> None:
            spark.stop()

        out["version"] = pyspark.__version__
        out["rewrites"] = {k: v for k, v in SPARK_REWRITES.items()}
    out["session_start_s"] = time.perf_counter() - started
    out["memory_kb"] = memory()
    _atomic_json(a.json, out)

    for name, sql in queries:
        sql = sql.strip().rstrip(";").strip()
        times, rows, error, table = [], None, None, None
        for _ in range(max(1, a.iterations)):
            t0 = time.perf_counter()
            try:
                table = run(name, sql)
            except Exception as exc:  # noqa: BLE001 - reported per query
                error = f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
                break
            times.append(time.perf_counter() - t0)
            rows = table.num_rows
        if table is not None and a.results_dir is not None and error is None:
            write_arrow(table, a.results_dir / f"{name}.arrow")
        srt = sorted(times)
        out["results"].append({
            "query": int(name[1:]) if re.fullmatch(r"q\d+", name) else name,
            "rows": rows, "times_s": times,
            "best_s": srt[0] if srt else None,
            "median_s": srt[len(srt) // 2] if srt else None,
            "error": error,
        })
        out["memory_kb"] = memory()
        _atomic_json(a.json, out)
        print(f"{name:<8} rows={rows} times={[round(t, 3) for t in times]} error={error and error[:200]}",
              flush=True)
    out["memory_kb"] = memory()
    _atomic_json(a.json, out)
    close()
    return 0


# ---------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------


def scale_label(s: str | float) -> str:
    return f"{float(s):g}"


def default_bin_dir() -> Path:
    if os.environ.get("LAKELINK_BIN_DIR"):
        return Path(os.environ["LAKELINK_BIN_DIR"])
    cache = Path(os.environ.get("LAKELINK_CACHE", Path.home() / ".cache" / "lakelink"))
    target = Path(os.environ.get("CARGO_TARGET_DIR", cache / "target"))
    return target / "release"


def ensure_lake(args, scale: str) -> Path:
    lake = args.data_dir / f"tpch-sf{scale}"
    marker = lake / ".complete"
    if marker.exists():
        log(f"SF{scale}: lake {lake} is complete, not generating it again")
        return lake
    if lake.exists():
        log(f"SF{scale}: {lake} has no .complete marker: removing the partial lake")
        shutil.rmtree(lake)
    lake.parent.mkdir(parents=True, exist_ok=True)
    cmd = [args.bin_dir / "lakelink", "datagen", "tpch", "--scale", scale, "--out", lake]
    log(f"SF{scale}: generating the lake: {' '.join(map(str, cmd))}")
    t0 = time.perf_counter()
    p = Watched("datagen", cmd, args.data_dir / "logs" / f"datagen-sf{scale}.log")
    rc = p.wait(timeout_s=24 * 3600)
    if rc != 0:
        raise SystemExit(f"datagen failed (exit {rc}); log: {p.log_path}\n{p.tail()}")
    missing = [t for t in TABLES if not (lake / t).is_dir()]
    if missing:
        raise SystemExit(f"datagen wrote no folder for {missing} in {lake}")
    marker.write_text(json.dumps({"scale": scale, "generator": str(cmd[0]),
                                  "seconds": round(time.perf_counter() - t0, 1),
                                  "written": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    log(f"SF{scale}: lake written in {time.perf_counter() - t0:.0f} s")
    return lake


class Cluster:
    """A scheduler and two executors (one task slot each) as separate processes."""

    def __init__(self, args, lake: Path, workdir: Path):
        self.args, self.lake, self.workdir = args, lake, workdir
        self.procs: list[Watched] = []
        self.port = 0

    @property
    def uri(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def start(self) -> None:
        b = self.args.bin_dir
        ports = free_ports(6)
        self.port, cluster_port = ports[0], ports[5]
        secret = self.workdir / "cluster.secret"
        secret.write_text(os.urandom(24).hex() + "\n")
        secret.chmod(0o600)
        self.procs.append(Watched("scheduler", [b / "lakelink-scheduler", "--lake", self.lake, "--port",
                                                self.port, "--cluster-port", cluster_port,
                                                "--cluster-secret-file", secret, "--bind", "127.0.0.1"],
                                  self.workdir / "scheduler.log"))
        self._wait_port(self.procs[0], self.port)
        for i in range(2):
            work = self.workdir / f"executor-{i}-work"
            work.mkdir(parents=True, exist_ok=True)
            self.procs.append(Watched(
                f"executor-{i}",
                [b / "lakelink-executor", "--scheduler", f"127.0.0.1:{cluster_port}",
                 "--cluster-secret-file", secret, "--bind", "127.0.0.1",
                 "--port", ports[1 + 2 * i], "--grpc-port", ports[2 + 2 * i], "--concurrent-tasks", 1,
                 "--work-dir", work],
                self.workdir / f"executor-{i}.log"))
        for i, p in enumerate(self.procs[1:]):
            self._wait_port(p, ports[1 + 2 * i])
        self._wait_ready()
        time.sleep(1.0)  # let the second executor register too

    def _check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited (code {p.returncode}); log {p.log_path}:\n{p.tail()}")

    def _wait_port(self, p: Watched, port: int, deadline_s: float = 60) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            self._check_alive()
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{p.name} not listening on {port} after {deadline_s:.0f} s")

    def _wait_ready(self, deadline_s: float = 180) -> None:
        import warnings

        import adbc_driver_flightsql.dbapi as flightsql

        warnings.filterwarnings("ignore", message="Cannot disable autocommit")
        end, last = time.monotonic() + deadline_s, None
        while time.monotonic() < end:
            self._check_alive()
            try:
                with flightsql.connect(self.uri) as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    if cur.fetchone()[0] == 1:
                        return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last = exc
            time.sleep(0.5)
        raise RuntimeError(f"`SELECT 1` not answered within {deadline_s:.0f} s: {last}")

    def stop(self) -> dict[str, int]:
        peaks: dict[str, int] = {}
        for p in self.procs:
            p.sample()  # VmHWM before stopping: exact for these long-lived processes
        for p in reversed(self.procs):
            p.stop()
            peaks.update(p.peaks)
        for i in range(2):
            shutil.rmtree(self.workdir / f"executor-{i}-work", ignore_errors=True)
        return peaks


def merge_peaks(into: dict[str, int], new: dict[str, int | None]) -> None:
    for k, v in new.items():
        if v is not None:
            into[k] = max(into.get(k, 0), int(v))


def run_batch(args, system: str, lake: Path, queries: list[str], workdir: Path, tag: str) -> dict:
    """Runs `queries` (q1…, needle) on one system in one child process."""
    nums = [q[1:] for q in queries if q in TPCH]
    needle = NEEDLE in queries
    json_path = workdir / f"{tag}.json"
    results_dir = workdir / "results"
    # Without --queries, lakelink-tpch (and the workers) run all 22, or only the --sql-file if given.
    common = ["--queries", ",".join(nums)] if nums else []
    common += ["--iterations", args.iterations, "--query-dir", args.query_dir,
               "--json", json_path, "--results-dir", results_dir]
    if needle:
        common += ["--sql-file", args.needle_sql]
    json_path.unlink(missing_ok=True)
    batch: dict = {"memory_kb": {}, "error": None}
    idle = 180 + args.query_timeout * max(1, args.iterations)  # longest silence: start-up + one query
    timeout = idle * len(queries)
    tpch = args.bin_dir / "lakelink-tpch"
    cluster = None
    t0 = time.perf_counter()
    try:
        if system == "lakelink-cluster":
            cluster = Cluster(args, lake, workdir / f"{tag}-cluster")
            cluster.start()
            cmd = [tpch, "--host", cluster.uri, *common]
        elif system == "lakelink-embedded":
            cmd = [tpch, "--lake", lake, *common]
        elif system == "datafusion":
            cmd = [tpch, "--lake", lake, "--engine", "datafusion", *common]
        else:
            tmp = args.data_dir / "tmp" / system
            tmp.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, Path(__file__).resolve(), "worker", system, "--lake", lake, *common,
                   "--threads", 2, "--tmp-dir", tmp]
            if system == "spark":
                cmd += ["--spark-memory", args.spark_memory]
                for kv in args.spark_conf:
                    cmd += ["--spark-conf", kv]
        # The labels match what the DuckDB / Spark workers report about themselves.
        label = {"duckdb": "duckdb (python)", "spark": "spark driver (python)"}.get(system, "lakelink-tpch")
        client = Watched(label, cmd, workdir / f"{tag}.log", child_labels={"java": "spark JVM"})
        rc = client.wait(timeout, idle_s=idle)
        merge_peaks(batch["memory_kb"], client.peaks)
        if client.timed_out:
            batch["error"] = (f"stopped: no query finished within {idle:.0f} s, or all not within "
                              f"{timeout:.0f} s (log {client.log_path})")
        elif rc != 0:
            batch["error"] = f"exit code {rc} (log {client.log_path}): {client.tail(5)}"
    except Exception as exc:  # noqa: BLE001 - a failed start is reported, the run goes on
        batch["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if cluster is not None:
            merge_peaks(batch["memory_kb"], cluster.stop())
    batch["wall_s"] = time.perf_counter() - t0
    data = {}
    if json_path.exists():
        with contextlib.suppress(ValueError):
            data = json.loads(json_path.read_text())
    merge_peaks(batch["memory_kb"], data.get("memory_kb") or {})
    for k in ("session_start_s", "version", "rewrites"):
        if k in data:
            batch[k] = data[k]
    batch["results"] = {}
    for r in data.get("results", []):
        q = r.get("query")
        name = f"q{q}" if isinstance(q, int) or (isinstance(q, str) and q.isdigit()) else str(q)
        if name not in queries:
            continue
        times = r.get("times_s") or []
        batch["results"][name] = {
            "rows": r.get("rows"), "times_s": times,
            "cold_s": times[0] if times else None,
            "best_s": r.get("best_s") if r.get("best_s") is not None else (min(times) if times else None),
            "median_s": r.get("median_s"),
            "error": r.get("error"),
            "result_file": str(results_dir / f"{name}.arrow"),
        }
    return batch


def run_system(args, system: str, lake: Path, queries: list[str], workdir: Path) -> dict:
    """All queries in one process; if that process dies or hangs, the queries it
    did not report are run again one per process, so one crash costs one query."""
    log(f"  {system}: {len(queries)} queries x {args.iterations} iterations")
    batch = run_batch(args, system, lake, queries, workdir, "all")
    out = {"results": batch["results"], "memory_kb": dict(batch["memory_kb"]), "wall_s": batch["wall_s"],
           "errors": [batch["error"]] if batch["error"] else []}
    for k in ("session_start_s", "version", "rewrites"):
        if k in batch:
            out[k] = batch[k]
    missing = [q for q in queries if q not in out["results"]]
    if batch["error"]:
        log(f"  {system}: {batch['error'][:300]}")
    if missing and batch["error"]:
        log(f"  {system}: running the {len(missing)} unreported queries one per process")
        for q in missing:
            b = run_batch(args, system, lake, [q], workdir, f"single-{q}")
            merge_peaks(out["memory_kb"], b["memory_kb"])
            out["wall_s"] += b["wall_s"]
            if q in b["results"]:
                out["results"][q] = b["results"][q]
            else:
                out["results"][q] = {"rows": None, "times_s": [], "cold_s": None, "best_s": None,
                                     "median_s": None, "error": b["error"] or "no result reported"}
    for q in queries:
        out["results"].setdefault(q, {"rows": None, "times_s": [], "cold_s": None, "best_s": None,
                                      "median_s": None, "error": "no result reported"})
    return out


def query_sql(args, q: str) -> str:
    return (args.needle_sql if q == NEEDLE else args.query_dir / f"{q}.sql").read_text()


def check_results(args, runs: dict, reference: dict | None, queries: list[str]) -> None:
    """Sets status ok / wrong / error / unchecked on every system's every query."""
    for system, run in runs.items():
        for q in queries:
            r = run["results"][q]
            r["detail"] = ""
            if r.get("error"):
                r["status"] = "error"
                continue
            if system == "duckdb" or run.get("is_reference"):
                r["status"] = "ok"
                continue
            ref = reference["results"].get(q) if reference else None
            ref_file = Path(ref["result_file"]) if ref and not ref.get("error") else None
            got_file = Path(r["result_file"])
            if ref_file is None or not ref_file.exists():
                r["status"], r["detail"] = "unchecked", "no DuckDB result to compare with"
                continue
            if not got_file.exists():
                r["status"], r["detail"] = "wrong", f"no result file {got_file}"
                continue
            try:
                ok, why = compare_results(read_result(ref_file), read_result(got_file), query_sql(args, q))
            except Exception as exc:  # noqa: BLE001 - an unreadable result is a failure
                ok, why = False, f"cannot compare: {type(exc).__name__}: {exc}"
            r["status"], r["detail"] = ("ok", "") if ok else ("wrong", why)


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def aggregate(scale_out: dict, systems: list[str], queries: list[str]) -> None:
    runs = scale_out["systems"]
    tpch = [q for q in queries if q in TPCH]
    common = [q for q in tpch if all(runs[s]["results"][q].get("status") == "ok" for s in systems)]
    scale_out["common_queries"] = common
    gm = {}
    for s in systems:
        res = runs[s]["results"]
        gm[s] = {"best_s": geomean([res[q]["best_s"] for q in common]) if common else None,
                 "cold_s": geomean([res[q]["cold_s"] for q in common]) if common else None,
                 "correct": sum(res[q].get("status") == "ok" for q in queries),
                 "queries": len(queries)}
    scale_out["geomean"] = gm

    def ratio(a: str, b: str):
        if a in gm and b in gm and gm[a]["best_s"] and gm[b]["best_s"]:
            return gm[a]["best_s"] / gm[b]["best_s"]
        return None

    scale_out["ratios"] = {
        "lakelink-cluster/datafusion": ratio("lakelink-cluster", "datafusion"),
        "lakelink-cluster/duckdb": ratio("lakelink-cluster", "duckdb"),
        "spark/lakelink-cluster": ratio("spark", "lakelink-cluster"),
        "lakelink-embedded/datafusion": ratio("lakelink-embedded", "datafusion"),
    }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def fmt_cell(r: dict) -> str:
    st = r.get("status")
    if st == "error":
        return "ERROR"
    if st == "wrong":
        return "WRONG"
    if r.get("best_s") is None:
        return "-"
    cell = f"{r['best_s']:.3f} ({r['cold_s']:.2f})"
    return cell + ("?" if st == "unchecked" else "")


def print_scale(scale: str, sc: dict, systems: list[str], iterations: int) -> None:
    w = 19
    print()
    print(f"=== TPC-H SF{scale}{' (needle scale)' if sc.get('needle_only') else ''}: best of {iterations} "
          f"(cold) in seconds; WRONG = differs from DuckDB, ERROR = failed, ? = unchecked ===")
    print(f"{'query':<8}" + "".join(f"{s:>{w}}" for s in systems))
    for q in sc["queries"]:
        print(f"{q:<8}" + "".join(f"{fmt_cell(sc['systems'][s]['results'][q]):>{w}}" for s in systems))
    if not sc.get("needle_only"):
        n = len(sc["common_queries"])
        gm = sc["geomean"]
        cells = [f"{gm[s]['best_s']:.3f} ({gm[s]['cold_s']:.2f})" if gm[s]["best_s"] else "-" for s in systems]
        print(f"{'geomean':<8}" + "".join(f"{c:>{w}}" for c in cells)
              + f"   over the {n} queries every system answered correctly")
        print(f"{'correct':<8}" + "".join(f"{str(gm[s]['correct']) + '/' + str(gm[s]['queries']):>{w}}"
                                         for s in systems))
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in sc["ratios"].items() if v is not None)
        if ratios:
            print(f"ratios: {ratios}")
    print("peak RSS (VmHWM), MiB:")
    for s in systems:
        mem = sc["systems"][s]["memory_kb"]
        parts = ", ".join(f"{k} {v / KB:,.0f}" for k, v in mem.items())
        extra = ""
        if sc["systems"][s].get("session_start_s") is not None and s == "spark":
            extra = f"; session start {sc['systems'][s]['session_start_s']:.1f} s (not in query times)"
        print(f"  {s:<18} {parts}{extra}")
    for s in systems:
        for q in sc["queries"]:
            r = sc["systems"][s]["results"][q]
            if r.get("status") in ("wrong", "error"):
                why = r.get("error") or r.get("detail") or ""
                print(f"  {s} {q} {r['status'].upper()}: {why.splitlines()[0][:300] if why else ''}")


def summarize(out: dict, args) -> list[dict]:
    targets = []
    scales = [s for s in out["scales"] if not out["scales"][s].get("needle_only")]
    main = max(scales, key=float) if scales else None
    sc = out["scales"].get(main) if main else None

    def add(name, value, ok, unit="x"):
        shown = "n/a" if value is None else (f"{value:.2f}{unit}" if isinstance(value, float) else str(value))
        targets.append({"target": name, "value": value, "shown": shown,
                        "met": None if ok is None else bool(ok)})

    r = sc["ratios"] if sc else {}
    v = r.get("lakelink-cluster/datafusion")
    add(f"cluster within {TARGETS['cluster_vs_datafusion_max']}x of DataFusion (SF{main} geomean)", v,
        None if v is None else v <= TARGETS["cluster_vs_datafusion_max"])
    v = r.get("lakelink-cluster/duckdb")
    add(f"cluster at most {TARGETS['cluster_vs_duckdb_max']:g}x DuckDB (SF{main} geomean)", v,
        None if v is None else v <= TARGETS["cluster_vs_duckdb_max"])
    v = r.get("spark/lakelink-cluster")
    add(f"Spark at least {TARGETS['spark_vs_cluster_min']:g}x slower than the cluster (SF{main} geomean)", v,
        None if v is None else v >= TARGETS["spark_vs_cluster_min"])
    ll = [s for s in LAKELINK_SYSTEMS if sc and s in sc["systems"]]
    if ll:
        bad = [f"{s}:{q}" for s in ll for q in sc["queries"]
               if sc["systems"][s]["results"][q].get("status") != "ok"]
        total = len(ll) * len(sc["queries"])
        add(f"every query correct at SF{main} ({', '.join(ll)})", f"{total - len(bad)}/{total}"
            + (f" (not: {', '.join(bad)})" if bad else ""), not bad)
    else:
        add(f"every query correct at SF{main}", None, None)
    ns = out.get("needle_scale")
    nsc = out["scales"].get(ns) if ns else None
    v = None
    if nsc and "lakelink-cluster" in nsc["systems"]:
        nr = nsc["systems"]["lakelink-cluster"]["results"].get(NEEDLE, {})
        v = nr.get("best_s") if nr.get("status") == "ok" else None
    add(f"SF{ns or '?'} needle under {TARGETS['needle_max_s']:g} s (cluster, best)", v,
        None if v is None else v < TARGETS["needle_max_s"], unit=" s")
    return targets


def print_summary(targets: list[dict]) -> None:
    print()
    print("=== Targets ===")
    for t in targets:
        mark = {True: "met", False: "NOT MET", None: "n/a"}[t["met"]]
        print(f"  [{mark:^7}] {t['target']}: {t['shown']}")


def versions(args) -> dict:
    v: dict = {"python": sys.version.split()[0]}
    for mod in ("pyarrow", "duckdb", "pyspark", "adbc_driver_flightsql"):
        try:
            m = __import__(mod)
            v[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001 - absent modules are reported as such
            v[mod] = None
    with contextlib.suppress(Exception):
        j = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        v["java"] = (j.stderr or j.stdout).splitlines()[0]
    with contextlib.suppress(Exception):
        v["lakelink_git"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
    bins = {}
    for b in ("lakelink", "lakelink-scheduler", "lakelink-executor", "lakelink-tpch"):
        p = args.bin_dir / b
        if p.exists():
            bins[b] = {"path": str(p), "mtime": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                              time.localtime(p.stat().st_mtime))}
    v["binaries"] = bins
    return v


def machine() -> dict:
    m = {"cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                m["mem_gib"] = round(int(line.split()[1]) / KB / KB, 1)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                m["cpu"] = line.split(":", 1)[1].strip()
                break
    return m


def parse_args(argv: list[str]):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,10", help="scale factors running all 22 queries (default 1,10)")
    ap.add_argument("--needle-scale", default="30",
                    help="scale factor running only Q1, Q6 and the needle query (default 30; 'none' to skip)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from {','.join(SYSTEMS)}")
    ap.add_argument("--iterations", type=int, default=3, help="runs per query; the first is the cold one")
    ap.add_argument("--queries", default="", help="restrict the TPC-H queries, e.g. 1,6,13 (default all 22)")
    ap.add_argument("--out", type=Path, default=REPO / "benches" / "results" / "tpch.json")
    ap.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "lakelink" / "bench-data",
                    help="lakes (tpch-sfN/), per-query results, logs")
    ap.add_argument("--bin-dir", type=Path, default=default_bin_dir(),
                    help="folder of the LakeLink binaries (default $CARGO_TARGET_DIR/release)")
    ap.add_argument("--query-dir", type=Path, default=QUERY_DIR)
    ap.add_argument("--needle-sql", type=Path, default=NEEDLE_SQL)
    ap.add_argument("--query-timeout", type=float, default=600,
                    help="seconds allowed per query run (x iterations, + 180 s start-up) before a "
                         "system's process is stopped and its other queries run one per process")
    ap.add_argument("--spark-memory", default="8g", help="spark.driver.memory (default 8g)")
    ap.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Spark setting (repeatable)")
    a = ap.parse_args(argv)
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    unknown = [s for s in a.systems if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems {unknown}; choose from {SYSTEMS}")
    a.systems = [s for s in SYSTEMS if s in a.systems]  # DuckDB (the reference) before the systems after it
    a.systems.sort(key=lambda s: s != "duckdb")
    a.scales = [scale_label(s) for s in a.scales.split(",") if s.strip()]
    a.needle_scale = None if a.needle_scale.lower() in ("", "none") else scale_label(a.needle_scale)
    a.tpch = [f"q{int(q)}" for q in a.queries.split(",") if q.strip()] if a.queries else list(TPCH)
    for p in ("data_dir", "bin_dir", "query_dir", "needle_sql", "out"):
        setattr(a, p, getattr(a, p).expanduser().resolve())
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    needs_bins = ["lakelink"] + (["lakelink-tpch"] if set(args.systems) & {*LAKELINK_SYSTEMS, "datafusion"}
                                 else [])
    if "lakelink-cluster" in args.systems:
        needs_bins += ["lakelink-scheduler", "lakelink-executor"]
    missing = [b for b in needs_bins if not (args.bin_dir / b).exists()]
    if missing:
        raise SystemExit(f"missing binaries in {args.bin_dir}: {missing} (cargo build --release, or --bin-dir)")

    plan: dict[str, list[str]] = {s: [*args.tpch, NEEDLE] for s in args.scales}
    if args.needle_scale and args.needle_scale not in plan:
        plan[args.needle_scale] = list(NEEDLE_SCALE_QUERIES)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.data_dir / "runs" / stamp
    out: dict = {
        "benchmark": "tpch-peers", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "machine": machine(), "versions": versions(args),
        "settings": {"systems": args.systems, "iterations": args.iterations, "scales": args.scales,
                     "needle_scale": args.needle_scale, "query_dir": str(args.query_dir),
                     "needle_sql": str(args.needle_sql), "data_dir": str(args.data_dir),
                     "bin_dir": str(args.bin_dir), "run_dir": str(run_dir),
                     "spark_memory": args.spark_memory, "spark_conf": args.spark_conf,
                     "spark_rewrites": SPARK_REWRITES, "threads": 2,
                     "timing": "wall time in the system's own process for running the query and "
                               "fetching its whole result as Arrow; cold = first run, best = best of all runs"},
        "needle_scale": args.needle_scale, "scales": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log(f"systems {args.systems}; scales {list(plan)}; logs and results in {run_dir}")

    for scale, queries in plan.items():
        lake = ensure_lake(args, scale)
        sc = {"lake": str(lake), "queries": queries, "needle_only": scale not in args.scales, "systems": {}}
        out["scales"][scale] = sc
        runs = sc["systems"]
        reference = None
        if "duckdb" not in args.systems:  # the reference still has to be computed
            log(f"SF{scale}: DuckDB as the reference only (1 iteration)")
            saved, args.iterations = args.iterations, 1
            reference = run_system(args, "duckdb", lake, queries, run_dir / f"sf{scale}" / "duckdb-reference")
            args.iterations = saved
            reference["is_reference"] = True
            check_results(args, {"duckdb": reference}, None, queries)
            sc["reference"] = reference
        for system in args.systems:
            log(f"SF{scale}: {system}")
            runs[system] = run_system(args, system, lake, queries, run_dir / f"sf{scale}" / system)
            if system == "duckdb":
                reference = runs[system]
            check_results(args, {system: runs[system]}, reference, queries)
            _atomic_json(args.out, out)
        if not sc["needle_only"]:
            aggregate(sc, args.systems, queries)
        print_scale(scale, sc, args.systems, args.iterations)
        _atomic_json(args.out, out)

    out["targets"] = summarize(out, args)
    out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _atomic_json(args.out, out)
    print_summary(out["targets"])
    print(f"\nJSON: {args.out}\nlogs and per-query results: {run_dir}")
    return 0


def markdown_main(argv: list[str]) -> int:
    """`tpch_peers.py markdown RESULTS.json`: the results as Markdown tables
    (the README's results section is this output)."""
    if len(argv) != 1:
        raise SystemExit("usage: tpch_peers.py markdown RESULTS.json")
    out = json.loads(Path(argv[0]).read_text())
    names = {"lakelink-cluster": "LakeLink cluster", "lakelink-embedded": "LakeLink embedded",
             "datafusion": "DataFusion", "duckdb": "DuckDB", "spark": "Spark local[2]"}
    order = [s for s in ("lakelink-cluster", "lakelink-embedded", "datafusion", "duckdb", "spark")
             if any(s in sc["systems"] for sc in out["scales"].values())]

    def cell(r: dict) -> str:
        if r.get("status") not in ("ok", "unchecked") or r.get("best_s") is None:
            return fmt_cell(r)
        return f"{r['best_s']:.3f}" + ("?" if r["status"] == "unchecked" else "")

    for scale, sc in out["scales"].items():
        systems = [s for s in order if s in sc["systems"]]
        print(f"\n**SF {scale}**{' (Q1, Q6 and the needle)' if sc.get('needle_only') else ''}, "
              f"best of {out['settings'].get('iterations', '?')}, seconds:\n")
        print("| query | " + " | ".join(names[s] for s in systems) + " |")
        print("| --- |" + " ---: |" * len(systems))
        for q in sc["queries"]:
            print(f"| {q} | " + " | ".join(cell(sc["systems"][s]["results"][q]) for s in systems) + " |")
        if not sc.get("needle_only"):
            gm = sc["geomean"]
            print("| **geomean** | " + " | ".join(f"**{gm[s]['best_s']:.3f}**" if gm[s]["best_s"] else "-"
                                                 for s in systems) + " |")
            print("| correct | " + " | ".join(f"{gm[s]['correct']}/{gm[s]['queries']}" for s in systems) + " |")
        print("| peak RSS, MiB | " + " | ".join(
            " + ".join(f"{v / KB:,.0f}" for v in sc["systems"][s]["memory_kb"].values() if v) for s in systems)
            + " |")
        ratios = ", ".join(f"{k} **{v:.2f}x**" for k, v in sc.get("ratios", {}).items() if v is not None)
        if ratios:
            print(f"\nGeometric-mean ratios: {ratios}.")
    print("\n| target | measured | |\n| --- | --- | --- |")
    for t in out["targets"]:
        print(f"| {t['target']} | {t['shown']} | {({True: 'met', False: 'not met', None: 'n/a'})[t['met']]} |")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    if sys.argv[1:2] == ["markdown"]:
        sys.exit(markdown_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
