"""The 22 TPC-H queries over ADBC, checked against the Python `datafusion` package."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import lakelink_harness as h

QUERY_DIR = Path(os.environ.get(
    "LAKELINK_TPCH_QUERIES", Path(__file__).resolve().parents[1] / "testdata" / "tpch"))
N_QUERIES = 22


def _present() -> list[int]:
    if not QUERY_DIR.is_dir():
        return []
    return sorted(int(m.group(1)) for p in QUERY_DIR.iterdir()
                  if (m := re.fullmatch(r"q(\d+)\.sql", p.name)))


def test_all_22_queries_present():
    present = _present()
    missing = [n for n in range(1, N_QUERIES + 1) if n not in present]
    assert not missing, f"missing TPC-H query files in {QUERY_DIR}: " + ", ".join(
        f"q{n}.sql" for n in missing)


@pytest.mark.parametrize("n", sorted(set(range(1, N_QUERIES + 1)) | set(_present())),
                         ids=lambda n: f"q{n}")
def test_tpch_query(n, conn, tpch_lake_small):
    path = QUERY_DIR / f"q{n}.sql"
    if not path.exists():
        pytest.fail(f"{path} does not exist", pytrace=False)
    sql = path.read_text()
    statements = h.split_statements(sql)
    assert statements, f"{path} holds no statement"
    result_stmt = [s for s in statements if h.returns_rows(s)][-1]

    expected = h.reference_run(tpch_lake_small, sql)
    got = h.adbc_run(conn, sql)

    h.compare_results(got, expected, result_stmt)
    # Every query returns rows at SF 0.01: guard against a vacuous comparison.
    assert expected.num_rows > 0, f"reference returned no rows for q{n}"
