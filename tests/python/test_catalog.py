"""Catalog metadata over Flight SQL (ADBC get_objects / get_table_schema / ...)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

import lakelink_harness as h


def _norm_type(t: pa.DataType) -> str:
    """Type name with string/binary flavours folded (Utf8 vs Utf8View vs LargeUtf8)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    return str(t)


def _parquet_schema(lake, table) -> pa.Schema:
    first = sorted(h.table_path(lake, table).glob("*.parquet"))[0]
    return pq.read_schema(first)


def _all_tables(conn) -> dict[str, dict]:
    """table name -> table struct from adbc_get_objects(depth='all')."""
    objs = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    tables: dict[str, dict] = {}
    for cat in objs:
        for sch in cat.get("catalog_db_schemas") or []:
            for tbl in sch.get("db_schema_tables") or []:
                tables.setdefault(tbl["table_name"], dict(tbl, _catalog=cat["catalog_name"],
                                                          _schema=sch["db_schema_name"]))
    return tables


def test_get_objects_lists_tpch_tables_with_columns(conn, tpch_lake_small):
    tables = _all_tables(conn)
    missing = [t for t in h.TPCH_TABLES if t not in tables]
    assert not missing, f"get_objects misses {missing}; it listed {sorted(tables)}"
    for name in h.TPCH_TABLES:
        cols = tables[name].get("table_columns") or []
        got = [c["column_name"] for c in sorted(cols, key=lambda c: c.get("ordinal_position") or 0)]
        expected = _parquet_schema(tpch_lake_small, name).names
        assert got == expected, (
            f"columns of {name} from get_objects(depth='all'):\n  got      {got}\n"
            f"  expected {expected}")
        assert tables[name].get("table_type"), f"{name} has no table_type"


def test_get_objects_table_filter(conn):
    objs = conn.adbc_get_objects(depth="tables", table_name_filter="line%").read_all().to_pylist()
    names = {t["table_name"] for c in objs for s in (c.get("catalog_db_schemas") or [])
             for t in (s.get("db_schema_tables") or [])}
    assert "lineitem" in names
    assert "orders" not in names, f"table_name_filter 'line%' also returned {sorted(names)}"


def test_get_table_schema_lineitem(conn, tpch_lake_small):
    schema = conn.adbc_get_table_schema("lineitem")
    expected = _parquet_schema(tpch_lake_small, "lineitem")
    assert schema.names == expected.names
    got_types = {f.name: _norm_type(f.type) for f in schema}
    exp_types = {f.name: _norm_type(f.type) for f in expected}
    assert got_types == exp_types
    # The datagen contract, independently of what the files say.
    assert schema.field("l_orderkey").type == pa.int64()
    assert schema.field("l_partkey").type == pa.int64()
    assert schema.field("l_suppkey").type == pa.int64()
    for col in ("l_quantity", "l_extendedprice", "l_discount", "l_tax"):
        assert schema.field(col).type == pa.decimal128(15, 2), (col, schema.field(col).type)
    for col in ("l_shipdate", "l_commitdate", "l_receiptdate"):
        assert schema.field(col).type == pa.date32(), (col, schema.field(col).type)
    for col in ("l_returnflag", "l_shipmode", "l_comment"):
        assert _norm_type(schema.field(col).type) == "string", (col, schema.field(col).type)


def test_get_table_schema_matches_query_schema(conn):
    """The catalog's schema is the schema a SELECT * actually returns."""
    schema = conn.adbc_get_table_schema("orders")
    t = h.query(conn, "SELECT * FROM orders LIMIT 3")
    assert t.schema.names == schema.names
    assert [_norm_type(f.type) for f in t.schema] == [_norm_type(f.type) for f in schema]


def test_get_table_types(conn):
    types = conn.adbc_get_table_types()
    assert types, "get_table_types returned nothing"
    assert all(isinstance(t, str) and t for t in types), types
    tables = _all_tables(conn)
    assert tables["lineitem"]["table_type"] in types, (
        f"lineitem's table_type {tables['lineitem']['table_type']!r} not in {types}")


def test_get_info(conn):
    info = conn.adbc_get_info()
    assert isinstance(info, dict) and info
    assert info.get("driver_name"), info
    # Server-side SqlInfo: the server must answer GetSqlInfo with its name.
    assert info.get("vendor_name"), f"server reported no vendor_name: {info}"
    assert info.get("vendor_version"), f"server reported no vendor_version: {info}"
    # The connection still answers queries afterwards.
    assert h.scalar(conn, "SELECT 1") == 1
