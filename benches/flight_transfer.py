"""Result transfer over Flight SQL: rows/s and MB/s of large results fetched by
the ADBC driver from a running LakeLink scheduler, next to pyarrow reading the
same Parquet files directly.

    python benches/flight_transfer.py --host grpc://127.0.0.1:50050 --lake DIR \
        [--tables lineitem,orders] [--iterations 2] [--json OUT.json]

Each table is fetched whole (`SELECT * FROM table`); the result is checked
against the local read (row count, and every column's values after sorting by
all columns). MB are the Arrow in-memory bytes of the result.
"""

import argparse
import json
import os
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.parquet as pq


def best_of(n: int, f):
    best, result = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        result = f()
        best = min(best, time.perf_counter() - t)
    return best, result


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
            local_s, local = best_of(args.iterations, lambda: pq.read_table(Path(args.lake) / table))

            def fetch():
                cur.execute(f"SELECT * FROM {table}")
                return cur.fetch_arrow_table()

            flight_s, remote = best_of(args.iterations, fetch)
            if remote.num_rows != local.num_rows or not same_data(remote, local):
                raise SystemExit(f"{table}: the Flight SQL result differs from the Parquet files")
            mb = remote.nbytes / 1e6
            for name, secs in (("pyarrow, local Parquet", local_s), ("ADBC over Flight SQL", flight_s)):
                print(f"{table:<10} {name:<24} {remote.num_rows:>11,} {secs:>8.2f} "
                      f"{remote.num_rows / secs:>12,.0f} {mb / secs:>8.1f}")
            print(f"{table:<10} Flight SQL / local read: {flight_s / local_s:.2f}x (target: 2x or less)")
            rows_out.append({"lake": args.lake, "table": table, "rows": remote.num_rows, "mb": round(mb, 1),
                             "pyarrow_s": round(local_s, 3), "flight_sql_s": round(flight_s, 3),
                             "flight_rows_per_s": round(remote.num_rows / flight_s),
                             "flight_mb_per_s": round(mb / flight_s, 1),
                             "ratio": round(flight_s / local_s, 2)})
            del local, remote
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "flight-transfer", "results": rows_out}, indent=1))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
