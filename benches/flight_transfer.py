"""Result transfer over Flight SQL: rows/s and MB/s of large results fetched by
the ADBC driver from a running LakeLink scheduler, next to pyarrow reading the
same Parquet files directly.

    python benches/flight_transfer.py --host grpc://127.0.0.1:50050 --lake DIR \
        [--tables lineitem,orders] [--iterations 2] [--json OUT.json]

Each table is fetched whole (`SELECT * FROM table`); the result is checked
against the local read (row count, and every column's values after sorting by
all columns). MB are the Arrow in-memory bytes of the result.

Two comparisons, since a reader's first large read in a process pays for
fresh memory (page faults) and later ones reuse it:
- warm: best of `--iterations` reads in this process, each after the previous
  result is released;
- first read: best of `--iterations` reads, each in a new process.

Where the time goes: the fetch is split at its first batch (the statement
planned, its job started, and the first batch of the result written, read and
sent) and the rest (the result streamed while the job still computes it).
When the cluster runs on this machine, the CPU seconds that its scheduler and
executors, and this client, spend in each part are printed too (from /proc,
best iteration), so the busy process can be named.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.parquet as pq


def best_of(n: int, f):
    """Best wall time of `n` calls of `f`, which returns (result, detail): the
    best call's detail and the last result. Each call starts after the previous
    result is released, so every call after the first can reuse the memory the
    one before it used (the readers are compared warm)."""
    best, best_detail, result = float("inf"), None, None
    for _ in range(n):
        result = None
        t = time.perf_counter()
        result, detail = f()
        secs = time.perf_counter() - t
        if secs < best:
            best, best_detail = secs, detail
    return best, best_detail, result


COLD_PYARROW = ("import sys, time, pyarrow.parquet as pq; t = time.perf_counter(); "
                "pq.read_table(sys.argv[1]); print(time.perf_counter() - t)")
COLD_FLIGHT = ("import sys, time, adbc_driver_flightsql.dbapi as f; t = time.perf_counter(); "
               "c = f.connect(sys.argv[1]); cur = c.cursor(); cur.execute(sys.argv[2]); "
               "cur.fetch_arrow_table(); print(time.perf_counter() - t); cur.close(); c.close()")


def first_reads(n: int, host: str, path: Path, sql: str) -> tuple[float, float]:
    """Best of `n` first reads, each in a new process (its memory not yet used,
    as for a client's first fetch): pyarrow reading `path`, then ADBC
    connecting to `host` and fetching `sql`, alternately."""
    def child(code: str, *args: str) -> float:
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"first-read child failed: {out.stderr.strip()[-500:]}")
        return float(out.stdout)
    local, flight = float("inf"), float("inf")
    for _ in range(n):
        local = min(local, child(COLD_PYARROW, str(path)))
        flight = min(flight, child(COLD_FLIGHT, host, sql))
    return local, flight


def lakelink_processes(host: str) -> dict[str, int]:
    """Process ids of this client and of the LakeLink scheduler serving `host`
    and its executors, when they run on this machine."""
    port = host.rsplit(":", 1)[-1].strip("/")
    found = {"client": os.getpid()}
    executors = 0
    for proc in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args]
        program = Path(words[0]).name if words else ""
        if program == "lakelink-scheduler" and "--port" in words and words[words.index("--port") + 1] == port:
            found["scheduler"] = int(proc.name)
        elif program == "lakelink-executor" and any(w.endswith(f":{port}") for w in words):
            found[f"executor-{executors}"] = int(proc.name)
            executors += 1
    return found


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def timed_fetch(cur, sql: str, pids: dict[str, int]) -> tuple[pa.Table, dict]:
    """Runs `sql`; returns the result and the split at its first batch (seconds
    and CPU seconds per process on each side of it)."""
    c0, t0 = cpu_seconds(pids), time.perf_counter()
    cur.execute(sql)
    reader = cur.fetch_record_batch()
    batches, c1, t1 = [], None, None
    for batch in reader:
        if t1 is None:
            c1, t1 = cpu_seconds(pids), time.perf_counter()
        batches.append(batch)
    t2, c2 = time.perf_counter(), cpu_seconds(pids)
    t1, c1 = (t1, c1) if t1 is not None else (t2, c2)
    split = {"first_batch_s": round(t1 - t0, 3), "rest_s": round(t2 - t1, 3),
             "first_batch_cpu_s": {k: round(c1[k] - c0[k], 2) for k in c0 if k in c1},
             "rest_cpu_s": {k: round(c2[k] - c1[k], 2) for k in c1 if k in c2}}
    return pa.Table.from_batches(batches, schema=reader.schema), split


def same_data(remote: pa.Table, local: pa.Table) -> bool:
    local = pa.table([c.cast(f.type) for c, f in zip(local.columns, remote.schema)], schema=remote.schema)
    keys = [(name, "ascending") for name in remote.schema.names]
    return remote.sort_by(keys).equals(local.sort_by(keys))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default=os.environ.get("LAKELINK_HOST", "grpc://127.0.0.1:50050"))
    ap.add_argument("--lake", required=True)
    ap.add_argument("--tables", default="lineitem")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    rows_out = []
    print(f"{'table':<10} {'reader':<24} {'rows':>11} {'seconds':>8} {'rows/s':>12} {'MB/s':>8}")
    with flightsql.connect(args.host) as conn, conn.cursor() as cur:
        for table in args.tables.split(","):
            local_s, _, local = best_of(args.iterations, lambda: (pq.read_table(Path(args.lake) / table), None))
            pids = lakelink_processes(args.host)
            flight_s, split, remote = best_of(args.iterations,
                                              lambda: timed_fetch(cur, f"SELECT * FROM {table}", pids))
            if remote.num_rows != local.num_rows or not same_data(remote, local):
                raise SystemExit(f"{table}: the Flight SQL result differs from the Parquet files")
            mb, rows = remote.nbytes / 1e6, remote.num_rows
            del local, remote
            local_cold_s, flight_cold_s = first_reads(args.iterations, args.host, Path(args.lake) / table,
                                                      f"SELECT * FROM {table}")
            for name, secs in (("pyarrow, local Parquet", local_s), ("ADBC over Flight SQL", flight_s)):
                print(f"{table:<10} {name:<24} {rows:>11,} {secs:>8.2f} "
                      f"{rows / secs:>12,.0f} {mb / secs:>8.1f}")
            print(f"{table:<10} Flight SQL / local read: {flight_s / local_s:.2f}x (target: 2x or less)")
            print(f"{table:<10} first read in a new process: Flight SQL {flight_cold_s:.2f} s, pyarrow "
                  f"{local_cold_s:.2f} s, {flight_cold_s / local_cold_s:.2f}x")
            for part, label in (("first_batch", "to the first batch"), ("rest", "the rest")):
                cpu = ", ".join(f"{k} {v:.1f}" for k, v in split[f"{part}_cpu_s"].items())
                print(f"{table:<10}   {label:<18} {split[f'{part}_s']:>6.2f} s   CPU s: {cpu}")
            rows_out.append({"lake": args.lake, "table": table, "rows": rows, "mb": round(mb, 1),
                             "pyarrow_s": round(local_s, 3), "flight_sql_s": round(flight_s, 3),
                             "flight_rows_per_s": round(rows / flight_s),
                             "flight_mb_per_s": round(mb / flight_s, 1),
                             "ratio": round(flight_s / local_s, 2),
                             "first_read": {"pyarrow_s": round(local_cold_s, 3), "flight_sql_s": round(flight_cold_s, 3),
                                            "ratio": round(flight_cold_s / local_cold_s, 2)},
                             **split})
    if args.json:
        # The cluster's scheduler flags (benches/cluster.sh passes them on),
        # e.g. "--result-endpoints executors".
        cluster = os.environ.get("LAKELINK_SCHEDULER_ARGS", "")
        args.json.write_text(json.dumps({"benchmark": "flight-transfer", "scheduler_args": cluster,
                                         "results": rows_out}, indent=1))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
