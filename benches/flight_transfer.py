"""Result transfer over Flight SQL: rows/s and MB/s of a large result fetched by
the ADBC driver from a running LakeLink scheduler, next to pyarrow reading the
same Parquet files directly.

    python benches/flight_transfer.py --host grpc://127.0.0.1:50050 --lake DIR [--table lineitem]
"""

import argparse
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.parquet as pq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="grpc://127.0.0.1:50050")
    ap.add_argument("--lake", required=True)
    ap.add_argument("--table", default="lineitem")
    ap.add_argument("--iterations", type=int, default=2)
    args = ap.parse_args()

    path = Path(args.lake) / args.table
    best_local = best_flight = float("inf")
    for _ in range(args.iterations):
        t = time.perf_counter()
        local = pq.read_table(path)
        best_local = min(best_local, time.perf_counter() - t)

    with flightsql.connect(args.host) as conn, conn.cursor() as cur:
        for _ in range(args.iterations):
            t = time.perf_counter()
            cur.execute(f"SELECT * FROM {args.table}")
            remote = cur.fetch_arrow_table()
            best_flight = min(best_flight, time.perf_counter() - t)

    assert remote.num_rows == local.num_rows, (remote.num_rows, local.num_rows)
    mb = remote.nbytes / 1e6
    print(f"{'reader':<28} {'rows':>10} {'seconds':>8} {'rows/s':>12} {'MB/s':>8}")
    for name, secs in (("pyarrow, local Parquet", best_local), ("ADBC over Flight SQL", best_flight)):
        print(f"{name:<28} {remote.num_rows:>10} {secs:>8.2f} {remote.num_rows / secs:>12,.0f} {mb / secs:>8.1f}")
    print(f"Flight SQL / local read: {best_flight / best_local:.2f}x")


if __name__ == "__main__":
    main()
