"""Fixtures for the LakeLink end-to-end suite.

Environment:
  LAKELINK_BIN_DIR           where lakelink, lakelink-scheduler and lakelink-executor
                             live (default /root/.cache/lakelink/target/debug)
  LAKELINK_TEST_LAKE_CACHE   optional folder to keep generated TPC-H lakes between runs
  LAKELINK_TPCH_QUERIES      folder of q1.sql..q22.sql (default ../testdata/tpch)
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import lakelink_harness as h  # noqa: E402

SMALL_SF = 0.01  # TPC-H, catalog, parameters, errors, CLI
BIG_SF = 0.2  # the >= 1M-row fetch (lineitem ~1.2M rows)


def pytest_sessionstart(session):
    missing = h.missing_binaries()
    if missing:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = ("\n[lakelink-tests] MISSING BINARIES: "
               + ", ".join(map(str, missing))
               + "\n[lakelink-tests] Every test that needs a cluster will FAIL. Build with "
               "`cargo build` (bins: lakelink, lakelink-scheduler, lakelink-executor) or set "
               "LAKELINK_BIN_DIR.\n")
        if tr is not None:
            tr.write_line(msg, red=True, bold=True)
        else:
            print(msg)


def pytest_terminal_summary(terminalreporter):
    if h.STARTED_LOG_DIRS:
        terminalreporter.section("lakelink process logs")
        for name, d in h.STARTED_LOG_DIRS:
            terminalreporter.write_line(f"{name}: {d}")


@pytest.fixture(scope="session")
def binaries():
    h.require_binaries()
    return h.bin_dir()


@pytest.fixture(scope="session")
def tpch_lake_small(binaries, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lake-sf001")
    return h.generate_tpch_lake(SMALL_SF, d / "lake", d / "datagen.log")


@pytest.fixture(scope="session")
def tpch_lake_big(binaries, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lake-sf02")
    return h.generate_tpch_lake(BIG_SF, d / "lake", d / "datagen.log")


@contextlib.contextmanager
def _running(cluster: h.Cluster):
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def cluster(tpch_lake_small, tmp_path_factory):
    """Scheduler + 2 executors over the SF 0.01 lake, no auth."""
    c = h.Cluster("small", tpch_lake_small, tmp_path_factory.mktemp("cluster-small"))
    with _running(c):
        yield c


@pytest.fixture(scope="session")
def big_cluster(tpch_lake_big, tmp_path_factory):
    """Scheduler + 2 executors over the SF 0.2 lake, no auth."""
    c = h.Cluster("big", tpch_lake_big, tmp_path_factory.mktemp("cluster-big"))
    with _running(c):
        yield c


@pytest.fixture(scope="session")
def auth_secrets():
    # "lakeuser:pw-<16 hex>" is 28 bytes: not a multiple of 3, so the Basic header
    # needs base64 padding, which the ADBC Go driver leaves out (RawStdEncoding).
    return {"token": "tok-" + secrets.token_hex(16), "user": "lakeuser",
            "password": "pw-" + secrets.token_hex(8)}


@pytest.fixture(scope="session")
def auth_cluster(tpch_lake_small, tmp_path_factory, auth_secrets):
    """One cluster started with both --auth-token and --user/--password."""
    c = h.Cluster("auth", tpch_lake_small, tmp_path_factory.mktemp("cluster-auth"),
                  token=auth_secrets["token"], user=auth_secrets["user"],
                  password=auth_secrets["password"])
    with _running(c):
        yield c


@pytest.fixture
def cluster_factory(binaries, tmp_path_factory):
    """Start throw-away clusters inside one test; all are stopped afterwards."""
    started: list[h.Cluster] = []

    def make(name: str, lake: Path, executors: int = 2, **auth) -> h.Cluster:
        c = h.Cluster(name, lake, tmp_path_factory.mktemp(f"cluster-{name}"),
                      executors_wanted=executors, **auth)
        started.append(c)
        return c.start()

    try:
        yield make
    finally:
        for c in started:
            c.stop()


@pytest.fixture
def conn(cluster):
    c = cluster.connect()
    try:
        yield c
    finally:
        with contextlib.suppress(Exception):
            c.close()


@pytest.fixture
def big_conn(big_cluster):
    c = big_cluster.connect()
    try:
        yield c
    finally:
        with contextlib.suppress(Exception):
            c.close()
