"""Apache Superset on LakeLink, driven in a real browser as a user would.

One user journey over a secured cluster (TLS, a password user): log in to
Superset, add LakeLink as a database through the "Connect a database" form
(a wrong password first, which must not connect), browse its tables and
columns in SQL Lab, run queries there (a join with a `LIMIT` of its own,
`EXPLAIN`, `llm_classify`, `nl_query`, a bad column), save the revenue query
as a dataset, build a bar chart of revenue by nation in Explore by dragging
columns, save it to a new dashboard and take a screenshot of the dashboard.

Every figure Superset shows is compared with the same figure computed by
pandas from the lake's Parquet files, not with LakeLink's own answer.
"""

from __future__ import annotations

import decimal
import re
import time
from pathlib import Path

import pandas as pd
import pytest

import lakelink_harness as h

REVENUE_SQL = (
    "SELECT n_name AS nation, sum(l_extendedprice * (1 - l_discount)) AS revenue "
    "FROM lineitem JOIN orders ON l_orderkey = o_orderkey "
    "JOIN customer ON o_custkey = c_custkey JOIN nation ON c_nationkey = n_nationkey "
    "GROUP BY n_name"
)
BUILDING_Q = "How many customers are in the building market segment?"
CHART_WAIT_MS = 300_000  # a chart drawn from LakeLink's answer (see its use)


# --------------------------------------------------------------------------
# The expected figures, from the Parquet files
# --------------------------------------------------------------------------


def _table(lake: Path, name: str) -> pd.DataFrame:
    df = h.parquet_dataset(lake, name).to_table().to_pandas()
    for col in df.columns:
        if len(df) and isinstance(df[col].iloc[0], decimal.Decimal):
            df[col] = df[col].astype(float)
    return df


def revenue_by_nation(lake: Path) -> dict[str, float]:
    li, o = _table(lake, "lineitem"), _table(lake, "orders")
    c, n = _table(lake, "customer"), _table(lake, "nation")
    j = (li.merge(o, left_on="l_orderkey", right_on="o_orderkey")
         .merge(c, left_on="o_custkey", right_on="c_custkey")
         .merge(n, left_on="c_nationkey", right_on="n_nationkey"))
    j["revenue"] = j["l_extendedprice"] * (1 - j["l_discount"])
    return j.groupby("n_name")["revenue"].sum().to_dict()


def building_customers(lake: Path) -> int:
    c = _table(lake, "customer")
    return int((c["c_mktsegment"] == "BUILDING").sum())


# --------------------------------------------------------------------------
# Steps of the journey
# --------------------------------------------------------------------------


def log_in(pg, superset) -> None:
    pg.goto(superset.url + "/login/")
    pg.locator("input#username, input[name=username]").first.fill(superset.admin)
    pg.locator("input[type=password]").fill(superset.password)
    pg.get_by_role("button", name="Sign In").click()
    pg.wait_for_url(lambda u: "/superset/welcome" in u)


def open_connect_form(pg, superset):
    pg.goto(superset.url + "/databaseview/list/")
    pg.get_by_role("button", name="Database").click()
    dialog = pg.get_by_role("dialog")
    # "Or choose from a list of other databases we support": Other (a SQLAlchemy URI).
    dialog.get_by_role("combobox").click()
    pg.keyboard.type("Other")
    pg.keyboard.press("Enter")
    dialog.locator("input[name=sqlalchemy_uri]").wait_for()
    return dialog


def try_connection(pg, dialog, uri: str):
    """Fill the form and press "Test connection": Superset's answer."""
    dialog.locator("input[name=database_name]").last.fill("LakeLink")
    dialog.locator("input[name=sqlalchemy_uri]").fill(uri)
    with pg.expect_response(lambda r: "/api/v1/database/test_connection" in r.url) as resp:
        dialog.get_by_role("button", name="Test connection").click()
    return resp.value


def add_database(pg, superset, cluster) -> None:
    # TLS is on (no `insecure`): the dialect verifies the scheduler against the
    # CA that Superset's environment names.
    good = f"datafusion://{cluster.user}:{cluster.password}@127.0.0.1:{cluster.port}"
    bad = f"datafusion://{cluster.user}:not-{cluster.password}@127.0.0.1:{cluster.port}"

    dialog = open_connect_form(pg, superset)
    refused = try_connection(pg, dialog, bad)
    assert refused.status != 200, "a wrong password passed Superset's connection test"
    body = refused.text()
    print(f"[lakelink-bi] a wrong password: HTTP {refused.status} {body[:400]}")
    assert "Connection looks good" not in pg.content()
    # LakeLink's refusal reaches the user, not only a generic failure.
    assert re.search(r"(?i)unauthenticated|password|credential", body), body

    ok = try_connection(pg, dialog, good)
    assert ok.status == 200, ok.text()
    pg.get_by_text("Connection looks good!").wait_for()
    dialog.locator("[data-test=btn-submit-connection]").click()
    pg.get_by_text("Database connected").wait_for()
    row = pg.get_by_role("row", name=re.compile("LakeLink"))
    assert "datafusion" in row.inner_text()


def open_sql_lab(pg, superset) -> None:
    pg.goto(superset.url + "/sqllab/")
    editor = pg.locator(".ace_text-input")
    new_tab = pg.get_by_text("Add a new tab", exact=True)
    editor.or_(new_tab).first.wait_for()
    if editor.count() == 0:
        new_tab.click()
    editor.first.wait_for()


def browse_tables(pg) -> None:
    """The left panel lists the lake's tables, and a table's columns."""
    panel = pg.locator(".ant-tree, [data-test=table-explore-tree], .sql-editor-left-bar, body").first
    pg.get_by_text("public", exact=True).last.click()
    for table in ("lineitem", "nation", "orders"):
        panel.get_by_text(table, exact=True).first.wait_for()
    panel.get_by_text("nation", exact=True).first.click()
    for column in ("n_nationkey", "n_name", "n_regionkey"):
        panel.get_by_text(column, exact=True).first.wait_for()


def run_in_sql_lab(pg, sql: str) -> dict:
    """Type `sql` into SQL Lab, run it, wait for Superset's answer; its JSON."""
    editor = pg.locator(".ace_text-input").first
    editor.focus()
    pg.keyboard.press("Control+a")
    pg.keyboard.press("Delete")
    pg.keyboard.type(sql)
    with pg.expect_response(lambda r: "/api/v1/sqllab/execute" in r.url, timeout=600_000) as resp:
        pg.keyboard.press("Control+Enter")
    answer = resp.value
    try:
        payload = answer.json()
    except Exception:  # noqa: BLE001 - a proxy's HTML error page
        payload = {"raw": answer.text()}
    payload["http_status"] = answer.status
    return payload


def result_grid(pg, columns: int, showing: str) -> list[list[str]]:
    """The rows of SQL Lab's result grid as the user sees them, once a cell
    reading `showing` is drawn (the grid of the statement before is replaced)."""
    pg.get_by_role("gridcell", name=showing, exact=True).first.wait_for()
    time.sleep(0.5)  # the grid draws its rows one frame after another
    rows = []
    for row in pg.get_by_role("row").all():
        cells = [c.inner_text().strip() for c in row.get_by_role("gridcell").all()]
        cells = [c for c in cells if c != ""]
        if len(cells) == columns:
            rows.append(cells)
    return rows


def check_chart_data(answers, expected: dict[str, float]) -> None:
    """The chart queries Superset's page made include one answering revenue
    by nation, and its figures are the lake's."""
    data = None
    for r in answers:
        assert r.status == 200, r.text()
        for result in r.json().get("result", []):
            rows = result.get("data") or []
            if rows and any("revenue" in k for k in rows[0]):
                data = rows
    assert data is not None, [r.url for r in answers]
    metric = next(k for k in data[0] if "revenue" in k)
    got = {row["nation"]: float(row[metric]) for row in data}
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert near(got[name], value), (name, got[name], value)


def near(a: float, b: float) -> bool:
    return abs(a - b) <= max(0.01, 1e-9 * abs(b))


# --------------------------------------------------------------------------
# The journey
# --------------------------------------------------------------------------


def test_superset_charts_revenue_by_nation_from_lakelink(page, superset, cluster, lake, screenshots):
    pg = page
    started = time.monotonic()
    expected = revenue_by_nation(lake)
    assert len(expected) == 25

    log_in(pg, superset)
    add_database(pg, superset, cluster)

    open_sql_lab(pg, superset)
    browse_tables(pg)

    # A join with its own LIMIT: SQL Lab's row limit must not replace it.
    top5 = run_in_sql_lab(pg, REVENUE_SQL + " ORDER BY revenue DESC LIMIT 5")
    assert top5["http_status"] == 200, top5
    assert "LIMIT 5" in top5["query"]["executedSql"], top5["query"]["executedSql"]
    want = sorted(expected.items(), key=lambda kv: -kv[1])[:5]
    grid = result_grid(pg, 2, showing=want[0][0])
    assert [r[0] for r in grid] == [n for n, _ in want], (grid, want)
    for (name, value), row in zip(want, grid):
        assert near(float(row[1]), value), (name, row, value)

    # EXPLAIN shows LakeLink's plans.
    plan = run_in_sql_lab(pg, "EXPLAIN SELECT count(*) FROM lineitem WHERE l_quantity > 10")
    assert plan["http_status"] == 200, plan
    assert result_grid(pg, 2, showing="physical_plan")

    # A semantic function with the local model: every answer is one of the
    # labels, or NULL where the model finds none fits (docs/functions.md; which
    # rows those are varies with the CPU's kernels), and the plainest row is
    # answered.
    labels = ("urgent", "routine")
    classify = run_in_sql_lab(
        pg, "SELECT o_orderpriority, llm_classify(o_orderpriority, 'urgent', 'routine') AS kind "
            "FROM (SELECT DISTINCT o_orderpriority FROM orders) ORDER BY o_orderpriority")
    assert classify["http_status"] == 200, classify
    grid = result_grid(pg, 2, showing="1-URGENT")
    assert [r[0] for r in grid] == ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"], grid
    assert all(r[1] in labels or r[1] == "NULL" for r in grid), grid
    assert grid[0][1] == "urgent", grid

    # A question in plain English, compiled by the local model.
    nl = run_in_sql_lab(pg, f"SELECT * FROM nl_query('{BUILDING_Q}')")
    assert nl["http_status"] == 200, nl
    count = building_customers(lake)
    grid = result_grid(pg, 1, showing=str(count))
    assert grid and int(grid[0][0]) == count, grid

    # A mistake gets LakeLink's own message, and SQL Lab keeps working.
    bad = run_in_sql_lab(pg, "SELECT no_such_column FROM nation")
    assert bad["http_status"] != 200, bad
    pg.get_by_text(re.compile("no_such_column")).first.wait_for()

    # The revenue query becomes a dataset; Explore opens it in a new tab.
    done = run_in_sql_lab(pg, REVENUE_SQL)
    assert done["http_status"] == 200, done
    pg.get_by_label("Save dataset").click()
    dialog = pg.get_by_role("dialog")
    dialog.locator("input[type=text], input:not([type])").first.fill("revenue_by_nation")
    with pg.context.expect_page() as explore_page:
        dialog.get_by_role("button", name="Save & Explore").click()
    ex = explore_page.value
    ex.wait_for_url(lambda u: "/explore/" in u)

    # A bar chart: nation on the x axis, SUM(revenue) as the metric, by dragging
    # the dataset's columns onto the controls.
    ex.locator("[data-test=fast-viz-switcher] [data-test=bar-chart]").click()
    column = lambda name: ex.locator("[data-test=DatasourcePanelDragOption]", has_text=name).first  # noqa: E731
    column("nation").drag_to(ex.locator("[data-test=x_axis] [data-test=dnd-labels-container]"))
    # revenue is DECIMAL, which the engine spec names: Superset offers SUM for it.
    column("revenue").drag_to(ex.locator("[data-test=metrics] [data-test=dnd-labels-container]"))
    popover = ex.locator(".ant-popover")
    assert "SUM" in popover.inner_text(), popover.inner_text()
    popover.get_by_role("button", name="Save").click()
    answers = []  # every chart query Superset's page makes (the chart, its samples)
    ex.on("response", lambda r: answers.append(r) if "/api/v1/chart/data" in r.url else None)
    ex.locator("[data-test=run-query-button]").click()
    # The chart's queries (the revenue join, its samples) take most of a
    # minute on a debug build with two cores: more room than the suite's 60 s
    # default (conftest.py).
    ex.locator("[data-test=chart-container] canvas").first.wait_for(timeout=CHART_WAIT_MS)
    check_chart_data(answers, expected)

    # Saved to a new dashboard, which draws it from LakeLink again.
    del answers[:]
    ex.locator("[data-test=query-save-button]").click()
    save = ex.get_by_role("dialog")
    save.locator("[data-test=new-chart-name]").fill("Revenue by nation")
    save.locator("[data-test=save-chart-modal-select-dashboard-form]").get_by_role("combobox").click()
    ex.keyboard.type("LakeLink sales", delay=20)
    ex.locator(".ant-select-item-option", has_text="LakeLink sales").first.click()
    save.get_by_role("button", name="Save & go to dashboard").click()
    ex.wait_for_url(lambda u: "/dashboard/" in u)
    ex.get_by_text("Revenue by nation").first.wait_for()
    ex.locator(".dashboard-component-chart-holder canvas, [data-test=chart-container] canvas").first.wait_for(
        timeout=CHART_WAIT_MS
    )
    check_chart_data(answers, expected)
    time.sleep(1.0)  # the bars' entry animation
    shot = screenshots / "superset-dashboard.png"
    ex.screenshot(path=str(shot))
    text = ex.locator("body").inner_text()
    for error in ("Internal server error", "Unexpected error", "An error occurred", "Traceback"):
        assert error not in text, text
    assert "LakeLink sales" in text and "Revenue by nation" in text, text
    assert shot.stat().st_size > 20_000, "the dashboard screenshot is nearly empty"
    print(f"[lakelink-bi] the journey took {time.monotonic() - started:.1f} s; screenshot {shot}")
