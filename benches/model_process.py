"""The host's model process against local models inside every process.

Starts a scheduler and two executor processes over a lake of ROWS rows with
DISTINCT distinct ticket texts, runs

    SELECT llm_classify(text, 'bug', 'feature', 'praise'), count(*) FROM tickets GROUP BY 1

with the real local model (answer cache off), once with the local models in
each process (`LAKELINK_LLM_MODEL_PROCESS=false`, how LakeLink ran before
the model process) and once through the host's model process, and prints
for each: wall time, model calls, and the memory of the host's LakeLink
processes (scheduler, executors, model process) sampled every 0.2 s: peak
RSS and peak PSS (shared pages divided among their users) summed over the
processes, and the peak per process.

    python benches/model_process.py --bin-dir ~/.cache/lakelink/target/release \
        --rows 10000000 --distinct 1000 --out benches/results/model-process.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
import lakelink_harness as h  # noqa: E402

KINDS = ["crashes when I open the settings page", "please add a dark mode to the dashboard",
         "the support team was wonderful, thank you", "error 500 when uploading a large file",
         "could you support exporting reports to Excel", "I love how fast the new search is"]
PRODUCTS = ["mobile app", "web portal", "billing page", "report builder", "admin console"]

QUERY = "SELECT llm_classify(text, 'bug', 'feature', 'praise') AS label, count(*) AS n FROM tickets GROUP BY 1"


def write_lake(root: Path, rows: int, distinct: int) -> Path:
    lake = root / "lake"
    (lake / "tickets").mkdir(parents=True, exist_ok=True)
    texts = [f"Ticket {i} about the {PRODUCTS[i % len(PRODUCTS)]}: {KINDS[i % len(KINDS)]}."
             for i in range(distinct)]
    files = 4
    per_file = rows // files
    for f in range(files):
        column = pa.array([texts[(f * per_file + i) % distinct] for i in range(per_file)])
        pq.write_table(pa.table({"text": column.dictionary_encode().cast(pa.string())}),
                       lake / "tickets" / f"part-{f}.parquet", row_group_size=1 << 20)
    return lake


def memory(pid: int) -> tuple[int, int]:
    """RSS and PSS of a process, bytes (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    fields = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1]) * 1024
    return fields.get("Rss", 0), fields.get("Pss", 0)


def model_pids(runtime: Path) -> list[int]:
    marker = f"LAKELINK_RUNTIME_DIR={runtime}".encode()
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"lakelink-model") and marker in env:
            out.append(int(proc.name))
    return out


class Sampler(threading.Thread):
    def __init__(self, named: dict[str, int], runtime: Path):
        super().__init__(daemon=True)
        self.named, self.runtime = named, runtime
        self.stop_flag = threading.Event()
        self.peak_rss = self.peak_pss = 0
        self.per_process: dict[str, int] = {}

    def run(self):
        while not self.stop_flag.is_set():
            pids = dict(self.named)
            for i, pid in enumerate(sorted(model_pids(self.runtime))):
                pids[f"model-process-{i}"] = pid
            rss = pss = 0
            for name, pid in pids.items():
                r, p = memory(pid)
                rss, pss = rss + r, pss + p
                self.per_process[name] = max(self.per_process.get(name, 0), r)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            time.sleep(0.2)


def run_mode(name: str, lake: Path, work: Path, in_process: bool) -> dict:
    runtime = work / "runtime"
    env = {
        "LAKELINK_RUNTIME_DIR": str(runtime),
        "LAKELINK_LLM_CACHE": "false",
        "LAKELINK_LLM_CACHE_DIR": str(work / "cache"),
        "LAKELINK_LLM_TRAIL_DIR": str(work / "trail"),
        "LAKELINK_LLM_MODEL_PROCESS": "false" if in_process else "true",
        "RUST_LOG": "warn",
    }
    cluster = h.Cluster(name, lake, work / "cluster", env=env)
    cluster.start()
    try:
        with cluster.connection(rpc_timeout=3600) as conn:
            # Loads the model wherever this mode keeps it: every file holds
            # this text, so both executors ask for it.
            first = f"Ticket 0 about the {PRODUCTS[0]}: {KINDS[0]}."
            h.query(conn, "SELECT llm_classify(text, 'bug', 'feature', 'praise') FROM tickets "
                          f"WHERE text = '{first}'")
            named = {p.name: p.pid for p in cluster.procs()}
            sampler = Sampler(named, runtime)
            sampler.start()
            started = time.monotonic()
            result = h.query(conn, QUERY)
            wall = time.monotonic() - started
            sampler.stop_flag.set()
            sampler.join()
            calls = h.scalar(conn, "SELECT count(*) FROM system.model_calls WHERE NOT cache_hit "
                                   "AND function = 'llm_classify'")
        counts = dict(zip(result.column("label").to_pylist(), result.column("n").to_pylist()))
        return {"mode": name, "wall_s": wall, "model_calls": calls, "labels": counts,
                "peak_rss_bytes": sampler.peak_rss, "peak_pss_bytes": sampler.peak_pss,
                "peak_rss_per_process": sampler.per_process}
    finally:
        cluster.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin-dir", default=os.environ.get("LAKELINK_BIN_DIR", h.DEFAULT_BIN_DIR))
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--distinct", type=int, default=1000)
    p.add_argument("--out")
    args = p.parse_args()
    os.environ["LAKELINK_BIN_DIR"] = args.bin_dir
    with tempfile.TemporaryDirectory(prefix="lakelink-model-bench-") as tmp:
        root = Path(tmp)
        lake = write_lake(root, args.rows, args.distinct)
        runs = [run_mode("models in each process", lake, root / "in-process", True),
                run_mode("host model process", lake, root / "model-process", False)]
    mib = 1024 * 1024
    print(f"\nllm_classify over {args.rows:,} rows / {args.distinct:,} distinct, local model, cache off")
    print("| mode | wall s | model calls | peak RSS sum MiB | peak PSS sum MiB | peak RSS per process MiB |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in runs:
        per = ", ".join(f"{k} {v / mib:.0f}" for k, v in sorted(r["peak_rss_per_process"].items()))
        print(f"| {r['mode']} | {r['wall_s']:.1f} | {r['model_calls']} | {r['peak_rss_bytes'] / mib:.0f} "
              f"| {r['peak_pss_bytes'] / mib:.0f} | {per} |")
    before, after = runs
    print(f"\nwall: model process / in each process = {after['wall_s'] / before['wall_s']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": args.rows, "distinct": args.distinct, "runs": runs},
                                             indent=2))


if __name__ == "__main__":
    main()
