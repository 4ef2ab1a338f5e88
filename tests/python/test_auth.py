"""Authentication: bearer token and username/password on one cluster."""

from __future__ import annotations

import subprocess

import adbc_driver_manager
import pytest

import lakelink_harness as h

REFUSED_WORDS = ("unauthenticated", "unauthorized", "permission denied", "invalid credentials",
                 "invalid token", "forbidden")


def _refused(cluster: h.Cluster, **creds) -> str:
    """Connect and query with `creds`; return the error text (fail if it answers)."""
    conn = None
    with pytest.raises(adbc_driver_manager.Error) as info:
        conn = h.adbc_connect(cluster.uri, rpc_timeout=30, extra=cluster.tls_options(), **creds)
        try:
            t = h.query(conn, "SELECT count(*) FROM region")
        finally:
            conn.close()
        pytest.fail(f"query answered without valid credentials ({creds}): {t}", pytrace=False)
    return h.error_text(info.value)


def _answers(cluster: h.Cluster, **creds) -> None:
    conn = h.adbc_connect(cluster.uri, rpc_timeout=60, extra=cluster.tls_options(), **creds)
    try:
        assert h.scalar(conn, "SELECT count(*) FROM region") == 5
        # A second statement on the same connection also passes auth.
        assert h.scalar(conn, "SELECT count(*) FROM nation WHERE n_regionkey = ?", (1,)) == 5
    finally:
        conn.close()


def test_no_credentials_refused(auth_cluster):
    text = _refused(auth_cluster)
    assert "unauthenticated" in text.lower(), text


def test_bearer_token_works(auth_cluster, auth_secrets):
    _answers(auth_cluster, token=auth_secrets["token"])


def test_wrong_token_refused(auth_cluster, auth_secrets):
    text = _refused(auth_cluster, token=auth_secrets["token"] + "x")
    assert any(w in text.lower() for w in REFUSED_WORDS), text
    # The right token still works afterwards.
    _answers(auth_cluster, token=auth_secrets["token"])


def test_username_password_works(auth_cluster, auth_secrets):
    _answers(auth_cluster, username=auth_secrets["user"], password=auth_secrets["password"])


def test_wrong_password_refused(auth_cluster, auth_secrets):
    text = _refused(auth_cluster, username=auth_secrets["user"],
                    password=auth_secrets["password"] + "x")
    assert any(w in text.lower() for w in REFUSED_WORDS), text
    _answers(auth_cluster, username=auth_secrets["user"], password=auth_secrets["password"])


def test_wrong_user_refused(auth_cluster, auth_secrets):
    text = _refused(auth_cluster, username="not-" + auth_secrets["user"],
                    password=auth_secrets["password"])
    assert any(w in text.lower() for w in REFUSED_WORDS), text


def test_metadata_calls_need_auth(auth_cluster):
    conn = None
    with pytest.raises(adbc_driver_manager.Error) as info:
        conn = h.adbc_connect(auth_cluster.uri, rpc_timeout=30, extra=auth_cluster.tls_options())
        try:
            conn.adbc_get_objects(depth="tables").read_all()
        finally:
            conn.close()
    assert "unauthenticated" in h.error_text(info.value).lower()


def _cli(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([h.binary("lakelink"), *cluster.shell_args(token=False), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_with_token_and_password(auth_cluster, auth_secrets):
    sql = "SELECT count(*) AS n FROM region"
    ok = _cli(auth_cluster, "--token", auth_secrets["token"], "-c", sql, "--format", "csv")
    assert ok.returncode == 0, ok.stderr
    assert "5" in ok.stdout.split()
    ok = _cli(auth_cluster, "--user", auth_secrets["user"], "--password",
              auth_secrets["password"], "-c", sql, "--format", "csv")
    assert ok.returncode == 0, ok.stderr
    assert "5" in ok.stdout.split()
    bad = _cli(auth_cluster, "-c", sql)
    assert bad.returncode != 0, bad.stdout
    assert bad.stderr.strip(), "refused CLI call printed nothing to stderr"
    bad = _cli(auth_cluster, "--token", "wrong", "-c", sql)
    assert bad.returncode != 0, bad.stdout


def test_password_guessing_is_throttled_and_tokens_are_not_locked_out(cluster_factory, tpch_lake_small, auth_secrets):
    c = cluster_factory("throttle", tpch_lake_small, executors=1, token=auth_secrets["token"],
                        user=auth_secrets["user"], password=auth_secrets["password"])
    for _ in range(10):
        assert "wrong user name or password" in _refused(c, username=auth_secrets["user"], password="guess")
    # The eleventh try is refused unchecked, even with the right password.
    text = _refused(c, username=auth_secrets["user"], password=auth_secrets["password"])
    assert "too many failed logins" in text, text
    # Wrong bearer tokens lock nobody out.
    for _ in range(15):
        _refused(c, token="tok-guess-" + "0" * 20)
    _answers(c, token=auth_secrets["token"])
