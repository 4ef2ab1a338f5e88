"""The `lakelink` command-line client."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import lakelink_harness as h

REGIONS = [(0, "AFRICA"), (1, "AMERICA"), (2, "ASIA"), (3, "EUROPE"), (4, "MIDDLE EAST")]
REGION_SQL = "SELECT r_regionkey, r_name FROM region ORDER BY r_regionkey"


def lakelink(cluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [h.binary("lakelink"), *cluster.shell_args(), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _csv_rows(text: str, header: list[str]) -> list[list[str]]:
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    assert rows, f"no CSV output: {text!r}"
    assert rows[0] == header, f"CSV header {rows[0]} != {header}; output:\n{text}"
    return rows[1:]


def test_csv_output(cluster):
    res = lakelink(cluster, "-c", REGION_SQL, "--format", "csv")
    assert res.returncode == 0, f"exit {res.returncode}; stderr:\n{res.stderr}"
    rows = _csv_rows(res.stdout, ["r_regionkey", "r_name"])
    assert rows == [[str(k), n] for k, n in REGIONS], res.stdout


def test_csv_output_with_quoting_and_nulls(cluster):
    sql = "SELECT 'a,b' AS s, CAST(NULL AS INT) AS n, 1.5 AS f"
    res = lakelink(cluster, "-c", sql, "--format", "csv")
    assert res.returncode == 0, res.stderr
    rows = _csv_rows(res.stdout, ["s", "n", "f"])
    assert rows == [["a,b", "", "1.5"]], res.stdout


def test_json_output(cluster):
    res = lakelink(cluster, "-c", REGION_SQL, "--format", "json")
    assert res.returncode == 0, res.stderr
    out = res.stdout.strip()
    try:
        records = json.loads(out)
    except json.JSONDecodeError:
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [(r["r_regionkey"], r["r_name"]) for r in records] == REGIONS, out


def test_table_output(cluster):
    res = lakelink(cluster, "-c", REGION_SQL, "--format", "table")
    assert res.returncode == 0, res.stderr
    for _, name in REGIONS:
        assert name in res.stdout
    assert "r_name" in res.stdout


def test_default_format_prints_rows(cluster):
    res = lakelink(cluster, "-c", REGION_SQL)
    assert res.returncode == 0, res.stderr
    assert "MIDDLE EAST" in res.stdout


def test_bad_statement_exits_nonzero(cluster):
    res = lakelink(cluster, "-c", "SELEC * FROM region", "--format", "csv")
    assert res.returncode != 0, f"exit 0 for a bad statement; stdout:\n{res.stdout}"
    assert res.stderr.strip(), "no error message on stderr"
    h.assert_informative(res.stderr)
    assert "selec" in res.stderr.lower() or "expected" in res.stderr.lower(), res.stderr
    assert "AFRICA" not in res.stdout

    res = lakelink(cluster, "-c", "SELECT * FROM no_such_cli_table")
    assert res.returncode != 0
    assert "no_such_cli_table" in res.stderr.lower(), res.stderr


def test_unreachable_host_exits_nonzero():
    port = h.free_ports(1)[0]
    res = subprocess.run([h.binary("lakelink"), "--host", f"grpc://127.0.0.1:{port}",
                          "-c", "SELECT 1"], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert res.returncode != 0
    assert res.stderr.strip()


def test_file_with_two_statements(cluster, tmp_path):
    f = tmp_path / "two.sql"
    f.write_text("-- two statements\n"
                 "SELECT r_name FROM region WHERE r_regionkey = 2;\n"
                 "SELECT count(*) AS nations FROM nation;\n")
    res = lakelink(cluster, "-f", str(f), "--format", "csv")
    assert res.returncode == 0, f"exit {res.returncode}; stderr:\n{res.stderr}"
    lines = [",".join(r).strip() for r in csv.reader(io.StringIO(res.stdout)) if r]
    assert "ASIA" in lines, res.stdout
    assert "25" in lines, res.stdout
    assert lines.index("ASIA") < lines.index("25"), "statements ran out of order"


def test_file_stops_on_error(cluster, tmp_path):
    f = tmp_path / "bad.sql"
    f.write_text("SELECT r_name FROM region WHERE r_regionkey = 0;\n"
                 "SELECT * FROM no_such_file_table;\n")
    res = lakelink(cluster, "-f", str(f), "--format", "csv")
    assert res.returncode != 0
    assert "no_such_file_table" in res.stderr.lower(), res.stderr
