"""Process, client and comparison helpers for the LakeLink end-to-end suite.

Everything here drives the real binaries as separate processes and talks to
them only through public clients (ADBC Flight SQL, the `lakelink` CLI).
"""

from __future__ import annotations

import contextlib
import ctypes
import decimal
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pytest

DEFAULT_BIN_DIR = "/root/.cache/lakelink/target/debug"
BINARIES = ("lakelink", "lakelink-scheduler", "lakelink-executor")
TPCH_TABLES = (
    "customer",
    "lineitem",
    "nation",
    "orders",
    "part",
    "partsupp",
    "region",
    "supplier",
)

# What `lakelink datagen tpch` writes for the NL compiler: descriptions and joins.
NL_CATALOG = Path("_lakelink") / "catalog.toml"

# Deadlines (seconds). The brief's readiness contract: port up "within a few
# seconds", queries working within 60 s of start, polled every 0.3 s.
PORT_DEADLINE = float(os.environ.get("LAKELINK_PORT_DEADLINE", "30"))
READY_DEADLINE = float(os.environ.get("LAKELINK_READY_DEADLINE", "60"))
READY_POLL = 0.3
DATAGEN_DEADLINE = float(os.environ.get("LAKELINK_DATAGEN_DEADLINE", "900"))
# Per-RPC deadlines for ADBC so that no client call can hang forever.
DEFAULT_RPC_TIMEOUT = float(os.environ.get("LAKELINK_RPC_TIMEOUT", "600"))

# LAKELINK_TEST_TLS=1 starts every cluster with TLS (a CA made for the run)
# and LAKELINK_TEST_AUTH=1 every cluster without credentials of its own with
# a bearer token: the suite then runs as a secured deployment is used.
TLS_BY_DEFAULT = os.environ.get("LAKELINK_TEST_TLS") == "1"
AUTH_BY_DEFAULT = os.environ.get("LAKELINK_TEST_AUTH") == "1"

# Every cluster started in this session: (name, log dir). Printed at the end.
STARTED_LOG_DIRS: list[tuple[str, Path]] = []


# --------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------


@dataclass
class TlsFiles:
    """A CA and a certificate it signed for 127.0.0.1 and localhost (PEM)."""
    ca: Path
    cert: Path
    key: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca.read_bytes()


def make_tls_files(folder: Path, name: str = "ca") -> TlsFiles:
    """A fresh CA (`name`) and a server certificate signed by it, by openssl."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", f"/CN=LakeLink test {name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", "/CN=127.0.0.1", "-keyout", f"{name}-server.key", "-out", f"{name}-server.csr")
    (folder / f"{name}-ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
        "basicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", f"{name}-server.csr", "-CA", f"{name}.pem", "-CAkey", f"{name}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}-server.pem", "-extfile", f"{name}-ext.cnf")
    return TlsFiles(folder / f"{name}.pem", folder / f"{name}-server.pem", folder / f"{name}-server.key")


# --------------------------------------------------------------------------
# Flight SQL messages written by hand (for plain Flight clients)
# --------------------------------------------------------------------------

TICKET_TYPE = "type.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery"
COMMAND_TYPE = "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def proto_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def any_message(type_url: str, value: bytes) -> bytes:
    """A protobuf `Any` (field 1 type_url, field 2 value)."""
    return proto_field(1, type_url.encode()) + proto_field(2, value)


def statement_descriptor(sql: str):
    """The FlightDescriptor of a Flight SQL `CommandStatementQuery`."""
    from pyarrow import flight

    return flight.FlightDescriptor.for_command(any_message(COMMAND_TYPE, proto_field(1, sql.encode())))


# --------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------


def bin_dir() -> Path:
    return Path(os.environ.get("LAKELINK_BIN_DIR", DEFAULT_BIN_DIR))


def missing_binaries() -> list[Path]:
    d = bin_dir()
    return [d / b for b in BINARIES if not os.access(d / b, os.X_OK)]


def require_binaries() -> None:
    missing = missing_binaries()
    if missing:
        pytest.fail(
            "LakeLink binaries not found: "
            + ", ".join(str(m) for m in missing)
            + ". Build them first (`cargo build` in /work/main, target dir "
            + f"{DEFAULT_BIN_DIR.rsplit('/', 1)[0]}) or point LAKELINK_BIN_DIR "
            + "at the directory holding lakelink, lakelink-scheduler and "
            + "lakelink-executor.",
            pytrace=False,
        )


def binary(name: str) -> str:
    require_binaries()
    return str(bin_dir() / name)


# --------------------------------------------------------------------------
# Ports and processes
# --------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """n distinct free loopback TCP ports (all held open until all are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def hostname() -> str:
    """This host's name as LakeLink's trail writes it."""
    return socket.gethostname() or "localhost"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError):
        with socket.create_connection((host, port), timeout=0.5):
            return True
    return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: SIGKILL the child if pytest dies (e.g. a hard timeout)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def tail(path: Path, lines: int = 60) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(data[-lines:])


@dataclass
class Proc:
    name: str
    cmd: list[str]
    log: Path
    popen: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, cwd: Path) -> "Proc":
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.env)
        with open(self.log, "ab") as fh:
            fh.write(("$ " + " ".join(self.cmd) + "\n").encode())
            fh.flush()
            self.popen = subprocess.Popen(
                self.cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(cwd),
                env=env,
                preexec_fn=_die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def describe(self, lines: int = 60) -> str:
        rc = None if self.popen is None else self.popen.poll()
        state = "running" if rc is None else f"exited with code {rc}"
        return f"--- {self.name} ({state}); last lines of {self.log}:\n{tail(self.log, lines)}"

    def kill(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self, grace: float = 10.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout=30)


# --------------------------------------------------------------------------
# Lakes
# --------------------------------------------------------------------------


def generate_tpch_lake(scale: float, out: Path, log: Path) -> Path:
    """`lakelink datagen tpch --scale SF --out DIR`; returns DIR.

    If LAKELINK_TEST_LAKE_CACHE is set, lakes are kept there and reused; a
    cached lake written before datagen wrote the NL catalog
    (`_lakelink/catalog.toml`) is generated again.
    """
    cache = os.environ.get("LAKELINK_TEST_LAKE_CACHE")
    if cache:
        out = Path(cache) / f"tpch-sf{scale:g}"
        if (out / ".complete").exists() and (out / NL_CATALOG).exists():
            return out
        (out / ".complete").unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    cmd = [binary("lakelink"), "datagen", "tpch", "--scale", f"{scale:g}", "--out", str(out)]
    started = time.monotonic()
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        try:
            res = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=DATAGEN_DEADLINE, preexec_fn=_die_with_parent,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"`{' '.join(cmd)}` did not finish within {DATAGEN_DEADLINE:.0f} s;"
                f" log tail:\n{tail(log)}", pytrace=False)
    if res.returncode != 0:
        pytest.fail(
            f"`{' '.join(cmd)}` exited with {res.returncode}; log tail:\n{tail(log)}",
            pytrace=False)
    missing = [t for t in TPCH_TABLES if not list((out / t).glob("*.parquet"))]
    if missing:
        pytest.fail(
            f"datagen wrote no Parquet files for {missing} under {out} "
            f"(expected {out}/<table>/part-N.parquet); log tail:\n{tail(log)}",
            pytrace=False)
    if not (out / NL_CATALOG).exists():
        pytest.fail(f"datagen wrote no {out / NL_CATALOG}; log tail:\n{tail(log)}", pytrace=False)
    if cache:
        (out / ".complete").write_text("ok\n")
    print(f"[lakelink-tests] datagen SF {scale:g} -> {out} in {time.monotonic() - started:.1f} s")
    return out


def table_path(lake: Path, table: str) -> Path:
    """A lake table is a folder <table>/ or a single file <table>.parquet."""
    folder = lake / table
    if folder.is_dir():
        return folder
    return lake / f"{table}.parquet"


def parquet_dataset(lake: Path, table: str):
    import pyarrow.dataset as ds

    return ds.dataset(str(table_path(lake, table)), format="parquet")


def lake_tables(lake: Path) -> dict[str, Path]:
    """The lake's tables; like the scheduler, names starting with `.` or `_`
    (such as the `_lakelink` metadata folder) are not tables."""
    out = {}
    for entry in sorted(lake.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir():
            out[entry.name] = entry
        elif entry.suffix == ".parquet":
            out[entry.stem] = entry
    return out


# --------------------------------------------------------------------------
# ADBC
# --------------------------------------------------------------------------


def adbc_connect(uri: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, rpc_timeout: float | None = None,
                 extra: dict[str, str] | None = None):
    import adbc_driver_flightsql.dbapi as flight_sql

    t = str(int(rpc_timeout or DEFAULT_RPC_TIMEOUT))
    db_kwargs = {
        "adbc.flight.sql.rpc.timeout_seconds.query": t,
        "adbc.flight.sql.rpc.timeout_seconds.fetch": t,
        "adbc.flight.sql.rpc.timeout_seconds.update": t,
    }
    if token is not None:
        db_kwargs["adbc.flight.sql.authorization_header"] = f"Bearer {token}"
    if username is not None:
        db_kwargs["username"] = username
    if password is not None:
        db_kwargs["password"] = password
    if extra:
        db_kwargs.update(extra)
    return flight_sql.connect(uri, db_kwargs=db_kwargs, autocommit=True)


def query(conn, sql: str, parameters: Sequence[Any] | None = None) -> pa.Table:
    with conn.cursor() as cur:
        if parameters is None:
            cur.execute(sql)
        else:
            cur.execute(sql, parameters=parameters)
        return cur.fetch_arrow_table()


def scalar(conn, sql: str, parameters: Sequence[Any] | None = None) -> Any:
    t = query(conn, sql, parameters)
    assert t.num_rows == 1 and t.num_columns >= 1, f"expected one row from {sql!r}, got {t}"
    return t.column(0)[0].as_py()


def error_text(exc: BaseException) -> str:
    """The full text of an ADBC/driver error, including server detail."""
    parts = [str(exc)]
    for attr in ("sqlstate", "vendor_code"):
        v = getattr(exc, attr, None)
        if v:
            parts.append(f"{attr}={v}")
    details = getattr(exc, "details", None)
    if details:
        for k, v in details:
            if isinstance(v, bytes):
                v = v.decode(errors="replace")
            parts.append(f"{k}={v}")
    return " | ".join(parts)


_GENERIC_ONLY = re.compile(
    r"^\s*(internal|unknown|error|internal error|unknown error|status: internal)\s*$",
    re.IGNORECASE)


def server_message(text: str) -> str:
    """Strip the ADBC driver's framing ("INTERNAL: [FlightSQL] ... (Internal; Op)")."""
    m = re.search(r"\[FlightSQL\]\s*(.*)", text, re.DOTALL)
    msg = m.group(1) if m else text
    msg = re.sub(r"\s*\((Internal|Unknown|InvalidArgument|NotFound|Unauthenticated|"
                 r"Unavailable|Cancelled|DeadlineExceeded|[A-Za-z]+);\s*[A-Za-z]+\)\s*$", "", msg)
    return msg.strip()


def assert_informative(text: str) -> None:
    msg = server_message(text)
    assert msg and not _GENERIC_ONLY.match(msg), (
        f"error message carries no information about the cause: {text!r}")


def wait_for(predicate, deadline_s: float, poll: float, what: str, on_fail) -> None:
    deadline = time.monotonic() + deadline_s
    last_exc = None
    while True:
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - collected for the failure message
            last_exc = exc
        if time.monotonic() > deadline:
            on_fail(f"{what} not reached within {deadline_s:.0f} s"
                    + (f"; last error: {error_text(last_exc)}" if last_exc else ""))
        time.sleep(poll)


# --------------------------------------------------------------------------
# Clusters
# --------------------------------------------------------------------------


@dataclass
class Cluster:
    name: str
    lake: Path
    workdir: Path
    executors_wanted: int = 2
    token: str | None = None
    user: str | None = None
    password: str | None = None
    port: int = 0
    cluster_port: int = 0
    scheduler_args: list[str] = field(default_factory=list)
    executor_args: list[str] = field(default_factory=list)
    # Extra environment of every process of the cluster.
    env: dict[str, str] = field(default_factory=dict)
    tls: bool = TLS_BY_DEFAULT
    scheduler: Proc | None = None
    executors: list[Proc] = field(default_factory=list)
    tls_files: TlsFiles | None = None

    def __post_init__(self) -> None:
        if AUTH_BY_DEFAULT and self.token is None and self.user is None:
            self.token = "tok-" + secrets.token_hex(16)

    @property
    def uri(self) -> str:
        return f"{'grpc+tls' if self.tls else 'grpc'}://127.0.0.1:{self.port}"

    def tls_options(self) -> dict[str, str]:
        """ADBC options trusting this cluster's CA (none without TLS)."""
        if self.tls_files is None:
            return {}
        return {"adbc.flight.sql.client_option.tls_root_certs": self.tls_files.ca_pem.decode()}

    def shell_args(self, token: bool = True) -> list[str]:
        """`lakelink` arguments reaching this cluster (address, CA, and its
        token unless `token` is false)."""
        args = ["--host", self.uri]
        if self.tls_files is not None:
            args += ["--tls-ca", str(self.tls_files.ca)]
        if token and self.token is not None:
            args += ["--token", self.token]
        return args

    def flight_headers(self) -> list[tuple[bytes, bytes]]:
        """The call headers of this cluster's token, if it has one."""
        return [(b"authorization", f"Bearer {self.token}".encode())] if self.token else []

    def member_port_uri(self, port: int) -> str:
        """The URI of one of this cluster's ports on loopback."""
        return f"{'grpc+tls' if self.tls else 'grpc+tcp'}://127.0.0.1:{port}"

    def flight_client(self, uri: str | bytes | None = None, **kwargs):
        """A pyarrow Flight client of `uri` (default the scheduler), trusting the CA."""
        from pyarrow import flight

        if isinstance(uri, bytes):
            uri = uri.decode()
        if hasattr(uri, "uri"):  # a flight.Location
            uri = uri.uri.decode()
        uri = (uri or self.uri).replace("grpc://", "grpc+tcp://")
        if self.tls_files is not None:
            kwargs["tls_root_certs"] = self.tls_files.ca_pem
        return flight.FlightClient(uri, **kwargs)

    def procs(self) -> list[Proc]:
        return [p for p in [self.scheduler, *self.executors] if p is not None]

    def logs(self, lines: int = 60) -> str:
        return "\n".join(p.describe(lines) for p in self.procs())

    def fail(self, why: str) -> None:
        report = f"cluster {self.name!r}: {why}\n{self.logs()}"
        self.stop()
        pytest.fail(report, pytrace=False)

    def credentials(self) -> dict:
        if self.token is not None:
            return {"token": self.token}
        if self.user is not None:
            return {"username": self.user, "password": self.password}
        return {}

    def connect(self, **kwargs):
        creds = self.credentials() if not kwargs.keys() & {"token", "username", "password"} else {}
        extra = {**self.tls_options(), **kwargs.pop("extra", {})}
        return adbc_connect(self.uri, **{**creds, **kwargs}, extra=extra)

    @contextlib.contextmanager
    def connection(self, **kwargs):
        """`connect` for a `with` block: the connection is closed at its end."""
        conn = self.connect(**kwargs)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def start(self) -> "Cluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        STARTED_LOG_DIRS.append((self.name, self.workdir))
        ports = free_ports(2 + 2 * self.executors_wanted)
        self.port, self.cluster_port = ports[0], ports[1]
        # The cluster secret every process of this cluster presents.
        self.secret_file = self.workdir / "cluster.secret"
        if not self.secret_file.exists():
            self.secret_file.write_text(secrets.token_hex(24) + "\n")
            self.secret_file.chmod(0o600)
        cmd = [binary("lakelink-scheduler"), "--lake", str(self.lake), "--port", str(self.port),
               "--cluster-port", str(self.cluster_port), "--cluster-secret-file", str(self.secret_file),
               "--bind", "127.0.0.1"]
        if self.token is not None:
            cmd += ["--auth-token", self.token]
        if self.user is not None:
            cmd += ["--user", self.user, "--password", self.password]
        tls_args: list[str] = []
        if self.tls:
            self.tls_files = self.tls_files or make_tls_files(self.workdir / "tls")
            tls_args = ["--tls-cert", str(self.tls_files.cert), "--tls-key", str(self.tls_files.key),
                        "--tls-ca", str(self.tls_files.ca)]
        cmd += tls_args + self.scheduler_args
        self.scheduler = Proc("scheduler", cmd, self.workdir / "scheduler.log", env=self.env).start(self.workdir)
        self._wait_port(self.scheduler, self.port)
        for i in range(self.executors_wanted):
            fport, gport = ports[2 + 2 * i], ports[3 + 2 * i]
            ecmd = [binary("lakelink-executor"), "--scheduler", f"127.0.0.1:{self.cluster_port}",
                    "--cluster-secret-file", str(self.secret_file),
                    "--port", str(fport), "--grpc-port", str(gport), "--bind", "127.0.0.1"]
            edir = self.workdir / f"executor-{i}"
            edir.mkdir(exist_ok=True)
            ecmd += ["--work-dir", str(edir / "work")]
            ecmd += tls_args + self.executor_args
            ex = Proc(f"executor-{i}", ecmd, self.workdir / f"executor-{i}.log", env=self.env).start(edir)
            ex.flight_port = fport  # type: ignore[attr-defined]
            ex.work_dir = edir / "work"  # type: ignore[attr-defined]
            self.executors.append(ex)
        for ex in self.executors:
            self._wait_port(ex, ex.flight_port)  # type: ignore[attr-defined]
        self.wait_ready()
        # Give the second executor a moment to register too.
        time.sleep(1.0)
        print(f"[lakelink-tests] cluster {self.name!r} up at {self.uri}, logs in {self.workdir}")
        return self

    def _wait_port(self, proc: Proc, port: int) -> None:
        def ok():
            if not proc.alive():
                self.fail(f"{proc.name} exited before listening on port {port}")
            return port_open(port)

        wait_for(ok, PORT_DEADLINE, 0.1, f"{proc.name} listening on 127.0.0.1:{port}", self.fail)

    def wait_ready(self, deadline_s: float = READY_DEADLINE) -> None:
        """Poll `SELECT 1` until it answers (an executor has registered)."""
        def ok():
            for p in self.procs():
                if not p.alive():
                    self.fail(f"{p.name} exited while waiting for readiness")
            conn = self.connect(rpc_timeout=30)
            try:
                return scalar(conn, "SELECT 1") == 1
            finally:
                conn.close()

        wait_for(ok, deadline_s, READY_POLL, "`SELECT 1` answering", self.fail)

    def stop(self) -> None:
        for p in reversed(self.procs()):
            with contextlib.suppress(Exception):
                p.stop()


# --------------------------------------------------------------------------
# SQL text helpers
# --------------------------------------------------------------------------


def strip_sql_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.DOTALL)
    return "\n".join(re.sub(r"--.*$", "", line) for line in sql.splitlines())


def split_statements(sql: str) -> list[str]:
    return [s.strip() for s in strip_sql_comments(sql).split(";") if s.strip()]


def returns_rows(stmt: str) -> bool:
    return re.match(r"^\s*\(*\s*(select|with|values)\b", stmt, re.IGNORECASE) is not None


def _top_level(stmt: str) -> str:
    """The statement with everything inside parentheses blanked out."""
    out, depth = [], 0
    for ch in stmt:
        if ch == "(":
            depth += 1
            out.append(" ")
        elif ch == ")":
            depth -= 1
            out.append(" ")
        else:
            out.append(ch if depth == 0 else " ")
    return "".join(out)


def order_by_keys(stmt: str) -> list[tuple[str, bool]] | None:
    """Top-level ORDER BY items as (column name, descending), None if absent.

    Items that are not plain (possibly qualified) names come back as ("", desc).
    """
    top = _top_level(stmt)
    matches = list(re.finditer(r"\border\s+by\b", top, re.IGNORECASE))
    if not matches:
        return None
    m = matches[-1]
    rest = stmt[m.end():]
    rest = re.split(r"\blimit\b|\boffset\b|\bfetch\b", rest, maxsplit=1, flags=re.IGNORECASE)[0]
    keys = []
    for item in rest.split(","):
        item = item.strip()
        mm = re.match(r"^([A-Za-z_][\w.]*)\s*(asc|desc)?\s*(nulls\s+(first|last))?$", item,
                      re.IGNORECASE)
        if mm:
            keys.append((mm.group(1).split(".")[-1].lower(),
                         (mm.group(2) or "").lower() == "desc"))
        else:
            keys.append(("", "desc" in item.lower().split()))
    return keys


def has_limit(stmt: str) -> bool:
    return re.search(r"\blimit\b", _top_level(stmt), re.IGNORECASE) is not None


# --------------------------------------------------------------------------
# Result comparison
# --------------------------------------------------------------------------

REL_TOL = 1e-6
ABS_TOL = 1e-9


def _norm(v: Any) -> Any:
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return v


def values_equal(a: Any, b: Any) -> bool:
    a, b = _norm(a), _norm(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if math.isnan(a) or math.isnan(b):
                return math.isnan(a) and math.isnan(b)
            return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
        return False
    return a == b


def rows_equal(r1: Sequence[Any], r2: Sequence[Any]) -> bool:
    return len(r1) == len(r2) and all(values_equal(x, y) for x, y in zip(r1, r2))


def table_rows(t: pa.Table) -> list[tuple]:
    cols = [c.to_pylist() for c in t.columns]
    return list(zip(*cols)) if cols else []


def _sort_key(row: Sequence[Any]):
    # Non-float values first (exact), then floats, so that tolerance-equal rows
    # land next to each other.
    exact, approx = [], []
    for v in row:
        v = _norm(v)
        if v is None:
            exact.append((0, ""))
        elif isinstance(v, float):
            approx.append(v)
        else:
            exact.append((1, str(type(v).__name__), v if isinstance(v, (int, str)) else str(v)))
    return (exact, approx)


def _first_row_diff(a: list, b: list, limit: int = 5) -> str:
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
        if not rows_equal(x, y):
            out.append(f"  row {i}: got {x!r}\n         expected {y!r}")
            if len(out) >= limit:
                break
    return "\n".join(out)


def compare_results(got: pa.Table, expected: pa.Table, stmt: str) -> None:
    """Assert got == expected: names, row count, values (floats rel 1e-6).

    Ordered when the statement has a top-level ORDER BY; rows that tie on the
    ORDER BY keys may come in any order (and, under LIMIT, the last tie group
    may hold different rows).
    """
    assert got.column_names == expected.column_names, (
        f"column names differ:\n  got      {got.column_names}\n  expected {expected.column_names}")
    assert got.num_rows == expected.num_rows, (
        f"row count differs: got {got.num_rows}, expected {expected.num_rows}")
    g, e = table_rows(got), table_rows(expected)
    keys = order_by_keys(stmt)
    if keys is None:
        gs, es = sorted(g, key=_sort_key), sorted(e, key=_sort_key)
        assert all(rows_equal(x, y) for x, y in zip(gs, es)), (
            "results differ (compared unordered; sorted rows):\n" + _first_row_diff(gs, es))
        return
    if all(rows_equal(x, y) for x, y in zip(g, e)):
        return
    # Fall back to tie-tolerant comparison when every ORDER BY item is a
    # result column.
    names = [n.lower() for n in got.column_names]
    idx = [names.index(k) for k, _ in keys if k in names]
    if len(idx) != len(keys):
        pytest.fail("results differ (ordered comparison):\n" + _first_row_diff(g, e),
                    pytrace=False)
    gk = [tuple(r[i] for i in idx) for r in g]
    ek = [tuple(r[i] for i in idx) for r in e]
    bad = [i for i, (x, y) in enumerate(zip(gk, ek)) if not rows_equal(x, y)]
    assert not bad, ("ORDER BY key sequence differs:\n"
                     + _first_row_diff(g[bad[0]:bad[0] + 5], e[bad[0]:bad[0] + 5]))
    # Group runs of equal keys and compare them as multisets.
    start = 0
    limited = has_limit(stmt)
    while start < len(g):
        end = start + 1
        while end < len(g) and rows_equal(ek[end], ek[start]):
            end += 1
        last_group = end == len(g)
        if not (limited and last_group):
            gs = sorted(g[start:end], key=_sort_key)
            es = sorted(e[start:end], key=_sort_key)
            assert all(rows_equal(x, y) for x, y in zip(gs, es)), (
                f"rows {start}..{end - 1} (tied on ORDER BY keys) differ:\n"
                + _first_row_diff(gs, es))
        start = end


# --------------------------------------------------------------------------
# Reference engine: the Python `datafusion` package
# --------------------------------------------------------------------------


def reference_context(lake: Path):
    from datafusion import SessionContext

    ctx = SessionContext()
    for name, path in lake_tables(lake).items():
        ctx.register_parquet(name, str(path))
    return ctx


def reference_run(lake: Path, sql: str) -> pa.Table:
    """Run all statements of `sql`; return the last row-returning result."""
    ctx = reference_context(lake)
    result = None
    for stmt in split_statements(sql):
        df = ctx.sql(stmt)
        t = df.to_arrow_table()
        if returns_rows(stmt):
            result = t
    assert result is not None, "no row-returning statement in query text"
    return result


def adbc_run(conn, sql: str) -> pa.Table:
    """Run all statements of `sql` over ADBC; return the last row-returning result."""
    result = None
    for stmt in split_statements(sql):
        t = query(conn, stmt)
        if returns_rows(stmt):
            result = t
    assert result is not None, "no row-returning statement in query text"
    return result


def iter_nonempty(it: Iterable[str]) -> list[str]:
    return [x for x in it if x.strip()]
