"""A lake on an object store against the same files on local disk, same run.

1. TPC-H: the 22 queries on two clusters started side by side (a scheduler
   and two executors each, release build): one over the local folder, one
   over the same files uploaded to moto's S3 server on this machine. Each
   query runs alternately on both, best of N; per-query times and the
   geometric mean of the ratios (store / local) are printed. Results are
   checked equal (row counts).
2. Catalog: a lake of TABLES x FILES small Parquet files on the S3 server.
   The time of a small query (`SELECT count(*) FROM tNNNN`), p50 over many
   tables, with the listing cached (`--lake-refresh 600`: planning lists
   nothing) and with a listing of the whole lake before every statement
   (`--lake-refresh 0`), plus the time of `REFRESH LAKE` itself.

    python benches/object_store.py --lake DIR [--iterations 2] [--tables 1000]
        [--files 10] [--bin-dir DIR] [--json OUT.json]

moto keeps objects in its own process and serves them over HTTP on
loopback: what it shows is the cost of reading a lake through the S3 API
(requests, ranges, listings), not a real store's latency or bandwidth.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
import lakelink_harness as h  # noqa: E402
from test_object_store import BUCKET, S3  # noqa: E402

QUERY_DIR = Path(__file__).resolve().parent.parent / "tests" / "testdata" / "tpch"


def timed(conn, sql: str, run=h.query) -> tuple[float, int]:
    t = time.perf_counter()
    rows = run(conn, sql).num_rows
    return time.perf_counter() - t, rows


def tpch(args, s3: S3, work: Path) -> dict:
    t = time.perf_counter()
    files = s3.upload_folder(args.lake, "tpch")
    print(f"uploaded {files} files of {args.lake} to the S3 server in {time.perf_counter() - t:.1f} s")
    clusters = {
        "local": h.Cluster("local", args.lake, work / "local", token=None, tls=False),
        "s3": h.Cluster("s3", f"s3://{BUCKET}/tpch", work / "s3", token=None, tls=False, env=s3.env()),
    }
    best = {name: {} for name in clusters}
    try:
        for c in clusters.values():
            c.start()
        conns = {name: c.connect(rpc_timeout=1800) for name, c in clusters.items()}
        for n in range(1, 23):
            sql = (QUERY_DIR / f"q{n}.sql").read_text()
            rows = {}
            for _ in range(args.iterations):
                for name, conn in conns.items():
                    secs, rows[name] = timed(conn, sql, h.adbc_run)
                    best[name][n] = min(best[name].get(n, math.inf), secs)
            assert rows["local"] == rows["s3"], f"q{n}: {rows}"
            ratio = best["s3"][n] / best["local"][n]
            print(f"  q{n:<3} local {best['local'][n]:7.3f} s   s3 {best['s3'][n]:7.3f} s   {ratio:5.2f}x")
        for conn in conns.values():
            conn.close()
    finally:
        for c in clusters.values():
            c.stop()
    ratios = [best["s3"][n] / best["local"][n] for n in range(1, 23)]
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
    total = {name: sum(b.values()) for name, b in best.items()}
    print(f"TPC-H 22 queries: local {total['local']:.2f} s, s3 {total['s3']:.2f} s; "
          f"geomean ratio s3/local {geomean:.2f}x")
    return {"best_seconds": best, "total_seconds": total, "geomean_ratio": round(geomean, 3)}


def catalog(args, s3: S3, work: Path) -> dict:
    prefix = "catalog"
    keys = [f"{prefix}/t{t:04d}/part-{f}.parquet" for t in range(args.tables) for f in range(args.files)]
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_table(k, range(2)), keys))
    print(f"uploaded {len(keys)} files ({args.tables} tables x {args.files}) in {time.perf_counter() - t:.1f} s")
    sample = [f"t{t:04d}" for t in range(0, args.tables, max(1, args.tables // 40))]
    report = {"tables": args.tables, "files": args.files, "queries": len(sample)}
    for mode, refresh in [("cached listing", "600"), ("listing per statement", "0")]:
        c = h.Cluster(f"catalog-{refresh}", f"s3://{BUCKET}/{prefix}", work / f"catalog-{refresh}", token=None,
                      tls=False, env=s3.env(), scheduler_args=["--lake-refresh", refresh])
        try:
            t = time.perf_counter()
            c.start()
            started = time.perf_counter() - t
            with c.connect(rpc_timeout=600) as conn:
                first = [timed(conn, f"SELECT count(*) FROM {name}")[0] for name in sample]
                again = [timed(conn, f"SELECT count(*) FROM {name}")[0] for name in sample]
                refresh_s = min(timed(conn, "REFRESH LAKE")[0] for _ in range(3))
        finally:
            c.stop()
        row = {"start_s": round(started, 2), "first_query_p50_s": round(statistics.median(first), 4),
               "repeat_query_p50_s": round(statistics.median(again), 4), "refresh_lake_s": round(refresh_s, 3)}
        report[mode] = row
        print(f"  {mode:<22} first query of a table p50 {row['first_query_p50_s'] * 1000:7.1f} ms, "
              f"repeated p50 {row['repeat_query_p50_s'] * 1000:7.1f} ms, REFRESH LAKE {refresh_s * 1000:7.1f} ms")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", required=True, type=Path)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--bin-dir", default=os.environ.get("LAKELINK_BIN_DIR", h.DEFAULT_BIN_DIR))
    ap.add_argument("--skip-tpch", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ["LAKELINK_BIN_DIR"] = args.bin_dir
    work = Path(tempfile.mkdtemp(prefix="lakelink-store-bench-"))
    s3 = S3(work)
    report = {"lake": str(args.lake), "bin_dir": args.bin_dir, "iterations": args.iterations}
    try:
        if not args.skip_tpch:
            report["tpch"] = tpch(args, s3, work)
        report["catalog"] = catalog(args, s3, work)
    finally:
        s3.proc.stop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
