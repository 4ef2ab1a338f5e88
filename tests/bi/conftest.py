"""Fixtures of the BI suite: a LakeLink cluster as a secured deployment runs it
(TLS with its own CA, a password user), Apache Superset from PyPI on loopback
(its own metadata database in a temporary folder, LakeLink's engine spec from
clients/superset installed), and headless Debian Chromium driven by Playwright.

Environment (ci/bi.sh sets them):
  LAKELINK_BIN_DIR            the LakeLink binaries (as for tests/python)
  LAKELINK_TEST_LAKE_CACHE    optional folder keeping generated lakes
  LAKELINK_BI_SCREENSHOTS     where screenshots go (default: the test's temporary folder)
  LAKELINK_CHROMIUM           the browser (default /usr/bin/chromium)
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

import lakelink_harness as h  # noqa: E402

SF = 0.01
CHROMIUM = os.environ.get("LAKELINK_CHROMIUM", "/usr/bin/chromium")
# As the machine's browser tests run it: no sandbox as root, and no background
# connections to Google's hosts (the network is closed).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

# Superset's configuration for the run. SQL Lab's default 30 s limit is too short
# for a first model call (the model process loads the models first), and the web
# client's 60 s as well; both are raised the same way docs/bi.md tells users to.
SUPERSET_CONFIG = '''
import os
SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]
SQLALCHEMY_DATABASE_URI = "sqlite:///" + os.environ["SUPERSET_HOME"] + "/superset.db"
SQLLAB_TIMEOUT = 600
SUPERSET_WEBSERVER_TIMEOUT = 600
'''


@pytest.fixture(scope="session")
def lake(tmp_path_factory) -> Path:
    h.require_binaries()
    d = tmp_path_factory.mktemp("lake")
    return h.generate_tpch_lake(SF, d / "lake", d / "datagen.log")


@pytest.fixture(scope="session")
def cluster(lake, tmp_path_factory):
    """Scheduler + 2 executors, TLS on every port, one password user and a
    static token."""
    c = h.Cluster("bi", lake, tmp_path_factory.mktemp("cluster-bi"), tls=True,
                  user="analyst", password="pw-" + secrets.token_hex(12),
                  token="tok-" + secrets.token_hex(16))
    try:
        yield c.start()
    finally:
        c.stop()


@dataclass
class Superset:
    url: str
    admin: str
    password: str
    home: Path
    proc: h.Proc


def _superset_cli(env: dict[str, str], log: Path, *args: str) -> None:
    exe = str(Path(sys.executable).parent / "superset")
    with open(log, "ab") as fh:
        fh.write(("$ superset " + " ".join(args) + "\n").encode())
        fh.flush()
        res = subprocess.run([exe, *args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, timeout=600)
    if res.returncode != 0:
        pytest.fail(f"`superset {' '.join(args)}` exited with {res.returncode}:\n{h.tail(log)}",
                    pytrace=False)


@pytest.fixture(scope="session")
def superset(cluster, tmp_path_factory):
    """Superset on a free loopback port; it trusts the cluster's CA through gRPC's
    GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, as docs/bi.md describes."""
    home = tmp_path_factory.mktemp("superset")
    (home / "superset_config.py").write_text(SUPERSET_CONFIG)
    env = dict(os.environ)
    env.update({
        "SUPERSET_HOME": str(home),
        "SUPERSET_CONFIG_PATH": str(home / "superset_config.py"),
        "SUPERSET_SECRET_KEY": secrets.token_hex(32),
        "FLASK_APP": "superset",
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(cluster.tls_files.ca),
    })
    log = home / "superset-setup.log"
    admin, password = "admin", "adm-" + secrets.token_hex(8)
    _superset_cli(env, log, "db", "upgrade")
    _superset_cli(env, log, "fab", "create-admin", "--username", admin, "--firstname", "Ada",
                  "--lastname", "Admin", "--email", "admin@example.com", "--password", password)
    _superset_cli(env, log, "init")
    port = h.free_ports(1)[0]
    exe = str(Path(sys.executable).parent / "superset")
    proc = h.Proc("superset", [exe, "run", "-h", "127.0.0.1", "-p", str(port), "--with-threads"],
                  home / "superset.log", env={k: env[k] for k in env if k.startswith(("SUPERSET", "FLASK", "GRPC"))})
    proc.start(home)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not proc.alive():
            pytest.fail(f"superset exited before answering:\n{proc.describe()}", pytrace=False)
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    h.wait_for(healthy, 120, 0.5, "superset answering /health",
               lambda why: pytest.fail(f"{why}\n{proc.describe()}", pytrace=False))
    try:
        yield Superset(url, admin, password, home, proc)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: install Debian's chromium (ci/setup.sh does)",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    d = Path(os.environ.get("LAKELINK_BI_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def page(browser, screenshots, request):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(60_000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        # The last picture of every page open at the end, for a failing run.
        for i, p in enumerate(context.pages):
            try:
                p.screenshot(path=str(screenshots / f"{request.node.name}-last-{i}.png"))
            except Exception:  # noqa: BLE001 - a closed page has nothing to show
                pass
        context.close()

