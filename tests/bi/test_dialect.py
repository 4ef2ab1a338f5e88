"""The SQLAlchemy URIs docs/bi.md gives for Superset, through the dialect
Superset uses (flightsql-dbapi), without a browser: each works with the right
credential and TLS trust, and each way around them is refused.

Each connection runs in a child process: gRPC reads the CA it trusts
(GRPC_DEFAULT_SSL_ROOTS_FILE_PATH) once per process, as Superset does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r'''
import json, sys
from sqlalchemy import create_engine, inspect, text
try:
    engine = create_engine(sys.argv[1])
    with engine.connect() as c:
        rows = c.execute(text("SELECT count(*) FROM nation")).fetchall()
        columns = {col["name"]: str(col["type"]) for col in inspect(c).get_columns("lineitem")}
        tables = inspect(c).get_table_names()
    print(json.dumps({"ok": True, "nations": rows[0][0], "tables": tables, "columns": columns}))
except Exception as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
'''


def connect(uri: str, ca: str | None) -> dict:
    env = dict(os.environ)
    env.pop("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", None)
    if ca:
        env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = ca
    out = subprocess.run([sys.executable, "-c", CHILD, uri], env=env, capture_output=True, text=True,
                         timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the child printed no answer:\n{out.stdout}\n{out.stderr[-2000:]}"
    return json.loads(lines[-1])


def test_password_and_token_uris_over_tls(cluster):
    ca = str(cluster.tls_files.ca)
    base = f"127.0.0.1:{cluster.port}"
    for uri in (f"datafusion://{cluster.user}:{cluster.password}@{base}",
                f"datafusion://{base}?token={cluster.token}"):
        got = connect(uri, ca)
        assert got["ok"], (uri.replace(cluster.password, "***"), got)
        assert got["nations"] == 25
        assert {"lineitem", "orders", "nation"} <= set(got["tables"])
        # Prices are DECIMAL, which the engine spec turns into numbers.
        assert got["columns"]["l_extendedprice"].startswith("DECIMAL"), got["columns"]


def test_wrong_or_missing_credentials_and_plaintext_are_refused(cluster):
    ca = str(cluster.tls_files.ca)
    base = f"127.0.0.1:{cluster.port}"
    refused = {
        "a wrong password": f"datafusion://{cluster.user}:not-{cluster.password}@{base}",
        "a wrong token": f"datafusion://{base}?token=tok-{'0' * 32}",
        "no credential": f"datafusion://{base}",
    }
    for why, uri in refused.items():
        got = connect(uri, ca)
        assert not got["ok"], why
        assert "nations" not in got
        assert "nauthenticated" in got["error"] or "UNAUTHENTICATED" in got["error"], (why, got)
    # Plain TCP to the TLS port, and TLS without trusting the cluster's CA.
    for why, uri, trust in (("plaintext", f"datafusion://{cluster.user}:{cluster.password}@{base}?insecure=true", ca),
                            ("an untrusted CA", f"datafusion://{cluster.user}:{cluster.password}@{base}", None)):
        got = connect(uri, trust)
        assert not got["ok"], why
        assert "nations" not in got
