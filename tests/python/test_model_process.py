"""The host's model process, end to end with the real local model: a
scheduler and two executor processes share one `lakelink-model` process;
killing its worker mid-query (SIGKILL, and SIGSEGV as a native fault raises
it) fails that query with a clear error, leaves every cluster process alive,
and the next query is answered by a restarted worker.

Each cluster here has its own runtime folder (LAKELINK_RUNTIME_DIR), so it
gets a model process of its own and no other test's calls are in flight when
the worker dies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import adbc_driver_manager
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lakelink_harness as h
from test_nl import MISSING_MODELS

pytestmark = pytest.mark.skipif(
    bool(MISSING_MODELS),
    reason="the default local models are missing; fetch them with scripts/fetch-models.sh")

RPC_TIMEOUT = 600
ADJECTIVES = ["sturdy", "flimsy", "elegant", "noisy", "compact", "bulky", "shiny", "dull",
              "cheap", "pricey"]
THINGS = ["kettle", "lamp", "chair", "backpack", "blender", "jacket"]


def review_lake(root: Path) -> Path:
    lake = root / "lake"
    (lake / "dup").mkdir(parents=True)
    # 600 distinct reviews: a query that asks the model for a good while.
    texts = [f"Review {i}: the {ADJECTIVES[i % 10]} {THINGS[i % 6]} "
             f"{'works great, I love it' if i % 2 else 'broke after a day, awful'}."
             for i in range(600)]
    pq.write_table(pa.table({"id": list(range(600)), "review": texts}), lake / "reviews.parquet")
    # The same four reviews in two files: each executor reads one.
    same = ["I love this kettle.", "The lamp broke at once.", "Great chair, very comfy.",
            "Terrible backpack, it ripped."]
    for part in range(2):
        pq.write_table(pa.table({"review": same}), lake / "dup" / f"part-{part}.parquet")
    return lake


def start_cluster(tmp_path: Path, name: str, runtime: Path | None = None,
                  extra_env: dict[str, str] | None = None) -> tuple[h.Cluster, dict[str, str]]:
    env = {
        "LAKELINK_RUNTIME_DIR": str(runtime or tmp_path / "runtime"),
        "LAKELINK_LLM_CACHE_DIR": str(tmp_path / "llm-cache"),
        "LAKELINK_LLM_TRAIL_DIR": str(tmp_path / "llm-trail"),
        **(extra_env or {}),
    }
    cluster = h.Cluster(name, review_lake(tmp_path), tmp_path / "cluster", env=env,
                        executor_args=["--concurrent-tasks", "1"])
    cluster.start()
    return cluster, env


def model_status(env: dict[str, str]) -> dict:
    """`lakelink-model status` for the cluster's model process."""
    out = subprocess.run([str(h.bin_dir() / "lakelink-model"), "status"], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def model_processes(env: dict[str, str]) -> list[int]:
    """Pids of `lakelink-model` processes started for this runtime folder."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"lakelink-model") and (
                f"LAKELINK_RUNTIME_DIR={env['LAKELINK_RUNTIME_DIR']}".encode() in environ):
            found.append(int(proc.name))
    return found


def fault(pid: int, sig: signal.Signals) -> None:
    """Ends the worker: SIGKILL from outside, or a real segmentation fault
    inside it: gdb moves one of its threads to address 0, whose execution
    faults (a signal sent with kill() would not do: Rust's runtime handles
    the first SIGSEGV, and only a fault that happens again ends the process,
    as a real one does)."""
    if sig == signal.SIGKILL:
        os.kill(pid, sig)
        return
    out = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "set $pc = 0", "-ex", "detach"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def best_kernels() -> str:
    """The llama.cpp CPU kernels this CPU runs best, from the kernel's own
    flags in /proc/cpuinfo (which it clears for what the OS does not save);
    never the AMX ones."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    avx512 = {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
    for name, needs in [
            ("zen4", avx512 | {"avx512vbmi", "avx512_vnni", "avx512_bf16"}),
            ("cooperlake", avx512 | {"avx512_vnni", "avx512_bf16"}),
            ("icelake", avx512 | {"avx512vbmi", "avx512_vnni"}),
            ("cascadelake", avx512 | {"avx512_vnni"}),
            ("cannonlake", avx512 | {"avx512vbmi"}),
            ("skylakex", avx512),
            ("alderlake", {"avx_vnni"})]:
        if needs <= flags:
            return name
    return "haswell"


def classify_one(conn) -> str:
    return h.scalar(conn, "SELECT llm_classify('I love it, it works perfectly', 'happy', 'unhappy')")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_a_dead_model_worker_fails_only_the_query_in_flight(tmp_path, binaries, sig):
    cluster, env = start_cluster(tmp_path, f"model-kill-{sig.name}")
    try:
        with cluster.connection(rpc_timeout=RPC_TIMEOUT) as conn:
            h.query(conn, "SET lakelink.llm.cache = false")
            assert classify_one(conn) in ("happy", "unhappy")  # loads the model
            before = model_status(env)
            assert before["worker_pid"] > 0, before

            outcome: dict = {}

            def long_query():
                # A client of its own, opened, used and closed on this
                # thread: the query that dies is another client's.
                try:
                    with cluster.connection(rpc_timeout=RPC_TIMEOUT) as doomed:
                        h.query(doomed, "SET lakelink.llm.cache = false")
                        outcome["rows"] = h.query(
                            doomed, "SELECT id, llm_classify(review, 'happy', 'unhappy') FROM reviews")
                except adbc_driver_manager.Error as e:
                    outcome["error"] = h.error_text(e)

            runner = threading.Thread(target=long_query)
            runner.start()
            time.sleep(2.0)
            assert runner.is_alive(), f"the query ended before the worker was killed: {outcome}"
            fault(before["worker_pid"], sig)
            runner.join(timeout=120)
            assert not runner.is_alive(), "the query hung after its model worker died"
            assert "error" in outcome, f"the query survived its model worker's death: {outcome}"
            number = {signal.SIGKILL: 9, signal.SIGSEGV: 11}[sig]
            assert f"the local model process exited (signal {number}); restarted" in outcome["error"], (
                outcome["error"])

            # Nothing else died: scheduler and executors serve the other
            # client's next query.
            for p in cluster.procs():
                assert p.alive(), p.describe()
            assert classify_one(conn) in ("happy", "unhappy")
            after = model_status(env)
            assert after["supervisor_pid"] == before["supervisor_pid"], (before, after)
            assert after["worker_pid"] not in (0, before["worker_pid"]), (before, after)
            assert after["restarts"] == before["restarts"] + 1, (before, after)
            assert after["last_exit"] == f"signal {number}", after
    finally:
        cluster.stop()


def test_one_model_process_serves_the_executors_and_a_shared_input_is_computed_once(tmp_path, binaries):
    cluster, env = start_cluster(tmp_path, "model-shared")
    try:
        with cluster.connection(rpc_timeout=RPC_TIMEOUT) as conn:
            h.query(conn, "SET lakelink.llm.cache = false")
            # Calibration would add a content-free request per process.
            h.query(conn, "SET lakelink.llm.calibrate = false")
            classify_one(conn)
            before = model_status(env)
            assert before["cpu_kernels"] == best_kernels(), before
            earlier = h.scalar(conn, "SELECT count(*) FROM system.model_calls "
                                     "WHERE function = 'llm_classify' AND NOT cache_hit")
            rows = h.query(conn, "SELECT llm_classify(review, 'happy', 'unhappy') AS c FROM dup")
            assert rows.num_rows == 8
            after = model_status(env)
            calls = h.query(conn, "SELECT process, served_by, shared FROM system.model_calls "
                                  "WHERE function = 'llm_classify' AND NOT cache_hit ORDER BY time").to_pylist()
        # One model process on this host: one supervisor, one worker, and
        # every call of both executors (and the scheduler's) served by it.
        pids = model_processes(env)
        assert len(pids) == 2 and before["supervisor_pid"] in pids and before["worker_pid"] in pids, (
            pids, before)
        executor_pids = {p.pid for p in cluster.executors}
        served = {c["served_by"] for c in calls}
        assert served == {f"{h.hostname()}:{after['worker_pid']}"}, calls
        callers = {int(c["process"].rsplit(":", 1)[1]) for c in calls[earlier:]}
        assert callers <= executor_pids, (executor_pids, calls)
        # Both executors read each of the four reviews: the cluster's ledger
        # of model calls lets one of them ask (joining identical requests in
        # flight is the supervisor's own test), and the worker computes each once.
        computed = after["computed"] - before["computed"]
        assert computed == 4 and len(calls) - earlier == 4, (before, after, calls)
    finally:
        cluster.stop()


def test_the_worker_loads_the_cpu_kernels_the_operator_names_and_refuses_the_amx_ones(tmp_path, binaries):
    # The AVX2 kernels, which every x86-64-v3 CPU runs, give the same answer.
    cluster, env = start_cluster(tmp_path / "avx2", "kernels-avx2",
                                 extra_env={"LAKELINK_CPU_KERNELS": "haswell"})
    try:
        with cluster.connection(rpc_timeout=RPC_TIMEOUT) as conn:
            h.query(conn, "SET lakelink.llm.cache = false")
            assert classify_one(conn) == "happy"
            assert model_status(env)["cpu_kernels"] == "haswell"
    finally:
        cluster.stop()
    # The AMX kernels are never loaded, even when named: the model's calls
    # fail with why, and everything else keeps working.
    cluster, env = start_cluster(tmp_path / "amx", "kernels-amx",
                                 extra_env={"LAKELINK_CPU_KERNELS": "sapphirerapids"})
    try:
        with cluster.connection(rpc_timeout=RPC_TIMEOUT) as conn:
            with pytest.raises(adbc_driver_manager.Error) as failed:
                classify_one(conn)
            assert "LAKELINK_CPU_KERNELS=sapphirerapids is not one of LakeLink's CPU kernels" in (
                h.error_text(failed.value))
            assert h.scalar(conn, "SELECT count(*) FROM reviews") == 600
            assert model_status(env)["cpu_kernels"].startswith("none: LAKELINK_CPU_KERNELS=sapphirerapids")
            for p in cluster.procs():
                assert p.alive(), p.describe()
    finally:
        cluster.stop()


ATTACK = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("refused:", e.strerror); sys.exit(0)
def send(m):
    b = json.dumps(m).encode(); s.sendall(struct.pack("<I", len(b)) + b)
try:
    send({"Hello": {"version": 1, "client": "intruder"}})
    send({"Call": {"id": 1, "call": {"Complete": {"model": "/etc/shadow", "prompt": {
        "system": "", "user": "hi", "max_tokens": 4, "sample": None}}}, "reuse": False}})
except (BrokenPipeError, ConnectionResetError):
    print("closed"); sys.exit(0)  # the supervisor hung up before the call was sent
s.settimeout(10)
try:
    data = s.recv(4096)
except OSError as e:
    data = b""
print("answered" if data else "closed")
"""


def test_another_user_cannot_reach_the_model_process(tmp_path, binaries):
    """The socket is a door: other users of the host get nothing through it,
    neither through the folder (mode 0700) nor, with the folder and socket
    opened up by mistake, past the supervisor's check of the peer's user."""
    # Under a folder other users may pass through (pytest's own is private),
    # so that only LakeLink's own protections stand in the way.
    base = Path(tempfile.mkdtemp(prefix="lakelink-door-"))
    base.chmod(0o755)
    cluster, env = start_cluster(tmp_path, "model-door", runtime=base / "runtime")
    try:
        with cluster.connection(rpc_timeout=RPC_TIMEOUT) as conn:
            classify_one(conn)
        runtime = Path(env["LAKELINK_RUNTIME_DIR"])
        assert runtime.stat().st_mode & 0o777 == 0o700
        sockets = list(runtime.glob("model-*.sock"))
        assert len(sockets) == 1, sockets
        sock = sockets[0]
        assert sock.stat().st_mode & 0o777 == 0o600

        def attack() -> str:
            out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                  "/usr/bin/python3", "-c", ATTACK, str(sock)],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return out.stdout.strip()

        assert attack().startswith("refused"), "another user reached the model socket"
        runtime.chmod(0o755)
        sock.chmod(0o666)
        try:
            assert attack() == "closed", "the supervisor answered another user's call"
        finally:
            runtime.chmod(0o700)
            sock.chmod(0o600)
        with cluster.connection(rpc_timeout=RPC_TIMEOUT) as conn:
            assert classify_one(conn) in ("happy", "unhappy")
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
