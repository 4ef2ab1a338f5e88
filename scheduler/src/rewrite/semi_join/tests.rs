//! Each rewrite checked on the plans DataFusion makes of real statements:
//! made where the rules allow (and then with the same answer), left alone
//! where they do not.

use ballista_core::extension::SessionConfigExt;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::*;

/// Parquet tables, so that the planner has the statistics a lake gives it.
/// `k`: 5 rows, one with a NULL key and one whose key `p` lacks; `p`:
/// 20,000 rows over keys 0-49, some NULL. `d`: 100 dimension rows, 5 of
/// category 'a'; `g`: 50 more; `f`: 20,000 fact rows referencing both, some
/// with a NULL `fk`; `m`: 10,000 rows referencing `d`, referenced by `f.val`.
async fn context() -> (SessionContext, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    let ctx = SessionContext::new_with_config(SessionConfig::new_with_ballista());
    for (table, sql) in [
        ("k", "SELECT * FROM (VALUES (1, 10), (2, 20), (NULL, 30), (77, 40), (3, 50)) AS v(a, b)"),
        (
            "p",
            "SELECT CASE WHEN v % 97 = 0 THEN NULL ELSE v % 50 END AS a, v AS c FROM generate_series(1, 20000) AS t(v)",
        ),
        ("d", "SELECT v AS id, CASE WHEN v < 5 THEN 'a' ELSE 'b' END AS cat FROM generate_series(0, 99) AS t(v)"),
        ("g", "SELECT v AS id, v % 7 AS region FROM generate_series(0, 49) AS t(v)"),
        ("m", "SELECT v AS id, v % 100 AS dk FROM generate_series(0, 9999) AS t(v)"),
        (
            "f",
            "SELECT CASE WHEN v % 101 = 0 THEN NULL ELSE v % 100 END AS fk, v % 50 AS gk, v AS val \
             FROM generate_series(1, 20000) AS t(v)",
        ),
    ] {
        let path = lake.join(format!("{table}.parquet"));
        ctx.sql(sql).await.unwrap().write_parquet(path.to_str().unwrap(), Default::default(), None).await.unwrap();
        ctx.register_parquet(table, path.to_str().unwrap(), Default::default()).await.unwrap();
    }
    (ctx, dir)
}

/// The statement's result as it runs and as it runs rewritten, and the
/// rewritten plan.
async fn both_ways(ctx: &SessionContext, sql: &str) -> (String, String, LogicalPlan) {
    let state = ctx.state();
    let plan = state.optimize(ctx.sql(sql).await.unwrap().logical_plan()).unwrap();
    let rewritten = optimize(&state, plan.clone()).await.unwrap();
    let run = |plan| async {
        let batches = DataFrame::new(state.clone(), plan).collect().await.unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    };
    (run(plan).await, run(rewritten.clone()).await, rewritten)
}

/// How many reducing semi joins `plan` holds.
fn reductions(plan: &LogicalPlan) -> usize {
    format!("{}", plan.display_indent()).matches(&format!("SubqueryAlias: {}", reduce::KEYS_ALIAS)).count()
}

/// The input of each table scan's parent that is a reducing semi join, by table.
fn reduced_tables(plan: &LogicalPlan) -> Vec<String> {
    let mut tables = vec![];
    let _ = plan.apply(|node| {
        if let LogicalPlan::Join(join) = node
            && join.join_type == JoinType::LeftSemi
            && matches!(join.right.as_ref(), LogicalPlan::SubqueryAlias(a) if a.alias.table() == reduce::KEYS_ALIAS)
        {
            let mut scan = join.left.as_ref();
            while let LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) = scan {
                scan = scan.inputs()[0];
            }
            tables.push(match scan {
                LogicalPlan::TableScan(t) => t.table_name.table().to_string(),
                other => other.display().to_string(),
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    tables.sort();
    tables
}

#[tokio::test]
async fn small_sides_against_large_ones_are_reduced_with_the_same_answer() {
    let (ctx, _lake) = context().await;
    for (sql, rows) in [
        ("SELECT * FROM k WHERE EXISTS (SELECT 1 FROM p WHERE p.a = k.a) ORDER BY a", 3),
        ("SELECT * FROM k WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.a = k.a) ORDER BY a", 2),
        ("SELECT * FROM k WHERE a IN (SELECT a FROM p WHERE c > 40) ORDER BY a", 3),
        ("SELECT * FROM k WHERE EXISTS (SELECT 1 FROM p WHERE p.a = k.a AND p.c > k.b * 400) ORDER BY a", 2),
        ("SELECT b FROM k WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.a = k.a AND p.c < k.b) ORDER BY b", 2),
        // One kept column is the key of two pairs.
        ("SELECT * FROM k WHERE EXISTS (SELECT 1 FROM p WHERE p.a = k.a AND p.c = k.a) ORDER BY a", 3),
    ] {
        let (plain, rewritten, plan) = both_ways(&ctx, sql).await;
        assert_eq!(reduced_tables(&plan), vec!["p"], "{sql}\n{}", plan.display_indent());
        assert_eq!(plain, rewritten, "{sql}");
        // The header, its two rules and the closing rule, then the rows.
        assert_eq!(plain.lines().count(), 4 + rows, "{sql}\n{plain}");
    }
}

#[tokio::test]
async fn join_inputs_are_reduced_where_the_key_enters_them() {
    let (ctx, _lake) = context().await;
    for (sql, reduced) in [
        // The smaller input of a join below the one selecting a few
        // dimension rows (TPC-H Q7's suppliers of two nations): it keeps the
        // rows of those keys before the larger join.
        ("SELECT count(*) FROM m JOIN f ON f.val = m.id JOIN d ON m.dk = d.id WHERE d.cat = 'a'", vec!["m"]),
        // An aggregate grouped by the key, compared per selected row
        // (TPC-H Q17): it reads only the selected keys' rows.
        (
            "SELECT sum(f.val) FROM f JOIN d ON f.fk = d.id WHERE d.cat = 'a' \
             AND f.val > (SELECT avg(f2.val) FROM f AS f2 WHERE f2.fk = d.id)",
            vec!["f"],
        ),
        // The outer side of a left join: unmatched dimension rows stay.
        (
            "SELECT d.id, count(f.val) FROM d LEFT JOIN f ON f.fk = d.id WHERE d.cat = 'a' GROUP BY d.id ORDER BY 1",
            vec!["f"],
        ),
        // The key's source found through the other side's join keys.
        (
            "SELECT s.id, count(f.val) FROM (SELECT d.id FROM d JOIN g ON d.id = g.id WHERE g.region = 3) AS s \
             LEFT JOIN f ON f.fk = s.id GROUP BY s.id ORDER BY 1",
            vec!["f"],
        ),
    ] {
        let (plain, rewritten, plan) = both_ways(&ctx, sql).await;
        assert_eq!(reduced_tables(&plan), reduced, "{sql}\n{}", plan.display_indent());
        assert_eq!(plain, rewritten, "{sql}");
    }
}

#[tokio::test]
async fn other_joins_are_left_as_they_are() {
    let (ctx, _lake) = context().await;
    for sql in [
        // The kept side is the large one.
        "SELECT * FROM p WHERE EXISTS (SELECT 1 FROM k WHERE k.a = p.a) ORDER BY a, c",
        // NOT IN: a NULL among p's keys empties the answer.
        "SELECT * FROM k WHERE a NOT IN (SELECT a FROM p) ORDER BY a",
        // The kept side's key would be another when computed again.
        "SELECT * FROM (SELECT CAST(random() * 3 AS BIGINT) AS a FROM k) AS v \
         WHERE EXISTS (SELECT 1 FROM p WHERE p.a = v.a) ORDER BY a",
        // The whole of a dimension table holds the keys of every fact row.
        "SELECT g.region, count(*) FROM f JOIN g ON f.gk = g.id GROUP BY g.region ORDER BY 1",
        // Both sides of a full join are kept.
        "SELECT d.id, f.val FROM d FULL JOIN f ON f.fk = d.id AND d.cat = 'a' ORDER BY 1, 2",
        // Nothing selects a few keys on either side.
        "SELECT count(*) FROM f JOIN d ON f.fk = d.id",
        // The join itself, broadcasting the selected dimension rows, keeps
        // the fact rows of their keys where they enter it.
        "SELECT d.id, sum(f.val) FROM f JOIN d ON f.fk = d.id WHERE d.cat = 'a' GROUP BY d.id ORDER BY 1",
        // Below a limit, dropping rows would change which rows it keeps.
        "SELECT count(*) FROM (SELECT * FROM f ORDER BY val LIMIT 100) AS t JOIN d ON t.fk = d.id WHERE d.cat = 'a'",
        // A target of a few rows (the dimension table by a condition on another).
        "SELECT count(*) FROM d JOIN g ON d.id = g.id WHERE g.region = 3",
    ] {
        let (plain, rewritten, plan) = both_ways(&ctx, sql).await;
        if sql.contains("LIMIT") {
            // The join's input may be reduced above the limit, not below it.
            assert!(reduced_tables(&plan).iter().all(|t| t != "f"), "{sql}\n{}", plan.display_indent());
        } else {
            assert_eq!(reductions(&plan), 0, "{sql}\n{}", plan.display_indent());
        }
        if !sql.contains("random") {
            assert_eq!(plain, rewritten, "{sql}");
        }
    }
}

/// The input of the first semi join (or anti join) found, with any
/// projection, filter or alias above a scan looked through.
fn semi_join_input(plan: &LogicalPlan) -> Option<String> {
    let mut input = None;
    let _ = plan.apply(|node| {
        if let LogicalPlan::Join(join) = node
            && matches!(join.join_type, JoinType::LeftSemi | JoinType::LeftAnti)
        {
            let mut kept = join.left.as_ref();
            while let LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) = kept {
                kept = kept.inputs()[0];
            }
            input = Some(match kept {
                LogicalPlan::TableScan(t) => t.table_name.table().to_string(),
                other => other.display().to_string(),
            });
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    input
}

#[tokio::test]
async fn semi_joins_move_below_inner_joins_to_the_input_holding_their_keys() {
    let (ctx, _lake) = context().await;
    for sql in [
        // TPC-H Q18's shape: the subquery's keys are the dimension's.
        "SELECT d.id, sum(f.val) FROM d JOIN f ON f.fk = d.id WHERE d.id IN (SELECT a FROM k) GROUP BY d.id ORDER BY 1",
        "SELECT d.id, count(*) FROM d JOIN f ON f.fk = d.id WHERE NOT EXISTS (SELECT 1 FROM k WHERE k.a = d.id) \
         GROUP BY d.id ORDER BY 1",
        // With a condition on the kept side's columns.
        "SELECT d.id, f.val FROM d JOIN f ON f.fk = d.id \
         WHERE EXISTS (SELECT 1 FROM k WHERE k.a = d.id AND k.b > d.id * 5) ORDER BY 1, 2",
    ] {
        let (plain, rewritten, plan) = both_ways(&ctx, sql).await;
        assert_eq!(semi_join_input(&plan).as_deref(), Some("d"), "{sql}\n{}", plan.display_indent());
        assert_eq!(plain, rewritten, "{sql}");
    }
    // The keys come from both inputs of the join: the semi join stays above it.
    let sql = "SELECT d.id, f.val FROM d JOIN f ON f.fk = d.id \
               WHERE EXISTS (SELECT 1 FROM k WHERE k.a = d.id AND k.b = f.val) ORDER BY 1, 2";
    let (plain, rewritten, plan) = both_ways(&ctx, sql).await;
    assert_ne!(semi_join_input(&plan).as_deref(), Some("d"), "{sql}\n{}", plan.display_indent());
    assert_eq!(plain, rewritten, "{sql}");
}
