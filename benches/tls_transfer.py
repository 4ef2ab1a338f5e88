"""The cost of TLS on result transfer: the same lake served by two clusters
started side by side on this machine, one plaintext and one with TLS on
every port (a CA made for the run), each with a token; ADBC fetches the
same table whole from each, alternately, and the best of each is printed.

    python benches/tls_transfer.py --lake DIR [--table lineitem] [--iterations 3]
        [--bin-dir DIR] [--result-endpoints scheduler|executors] [--json OUT.json]

Rows and bytes are checked equal between the two; MB are the Arrow
in-memory bytes of the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
import lakelink_harness as h  # noqa: E402


def fetch(cluster: h.Cluster, sql: str) -> tuple[float, int, int]:
    with cluster.connection() as conn:
        t = time.perf_counter()
        table = h.query(conn, sql)
        return time.perf_counter() - t, table.num_rows, table.nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", required=True, type=Path)
    ap.add_argument("--table", default="lineitem")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--bin-dir", default=os.environ.get("LAKELINK_BIN_DIR", h.DEFAULT_BIN_DIR))
    ap.add_argument("--result-endpoints", default="scheduler", choices=["scheduler", "executors"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ["LAKELINK_BIN_DIR"] = args.bin_dir
    sql = f"SELECT * FROM {args.table}"
    work = Path(tempfile.mkdtemp(prefix="lakelink-tls-bench-"))
    token = "tok-" + os.urandom(16).hex()
    clusters = {
        mode: h.Cluster(mode, args.lake, work / mode, tls=(mode == "tls"), token=token,
                        scheduler_args=["--result-endpoints", args.result_endpoints])
        for mode in ("plaintext", "tls")
    }
    best = {mode: float("inf") for mode in clusters}
    shape = {}
    try:
        for c in clusters.values():
            c.start()
        for _ in range(args.iterations):
            for mode, c in clusters.items():
                secs, rows, nbytes = fetch(c, sql)
                best[mode] = min(best[mode], secs)
                shape[mode] = (rows, nbytes)
    finally:
        for c in clusters.values():
            c.stop()
    assert shape["plaintext"] == shape["tls"], f"the two results differ: {shape}"
    rows, nbytes = shape["tls"]
    report = {"table": args.table, "rows": rows, "mb": round(nbytes / 1e6, 1), "bin_dir": args.bin_dir,
              "result_endpoints": args.result_endpoints, "iterations": args.iterations}
    print(f"{sql}: {rows:,} rows, {nbytes / 1e6:.1f} MB (Arrow), best of {args.iterations}, "
          f"results through the {args.result_endpoints}")
    for mode, secs in best.items():
        report[mode] = {"seconds": round(secs, 3), "rows_per_s": round(rows / secs), "mb_per_s": round(nbytes / 1e6 / secs, 1)}
        print(f"  {mode:<10} {secs:7.2f} s  {rows / secs:>12,.0f} rows/s  {nbytes / 1e6 / secs:8.1f} MB/s")
    report["tls_cost"] = round(best["tls"] / best["plaintext"], 3)
    print(f"  TLS takes {report['tls_cost']:.2f}x the plaintext time")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
