//! Repairs that need no model: a small model asked to fix its SQL usually
//! answers with the same SQL again, so the compiler fixes the commonest
//! mistakes itself, on the parsed query, and checks the result like any
//! answer:
//!
//! * a column of a table the query does not read (`c_mktsegment` in a
//!   query over `orders`): the table is joined on the catalog's join keys,
//!   along the shortest join path;
//! * an invented name for a real column (`l_orderdate`, `c_nationname`);
//! * another table's prefix on a column of a table the query reads
//!   (`c_acctbal` over `supplier` is `s_acctbal`), unless the column has
//!   listed values or the question names its table;
//! * a column given the wrong table (`orders.c_custkey`): the qualifier
//!   becomes the table that has the column (and a join condition that
//!   referred to it is replaced by the catalog's join keys);
//! * a selected column missing from GROUP BY;
//! * a table name off by a letter or two (`order`): the catalog's table;
//! * another dialect's date-part function (`YEAR(o_orderdate)`), which the
//!   engine does not have: the standard `EXTRACT(YEAR FROM o_orderdate)`;
//! * a date range that is not the one period the question names (a year,
//!   a month, a quarter), or no date range at all for it;
//! * a joined table the question does not name and the query reads nothing
//!   of but its join keys (it repeats rows: each order once per line item);
//! * no HAVING for a question that compares a figure of each group with a
//!   number ("brands with an average price above 155"), or the number
//!   compared with each row instead (`WHERE price > 155`);
//! * no ORDER BY for a question that asks for an order ("ordered by
//!   status", "in month order", "the revenue, highest first").

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, DateTimeField, Expr as SqlExpr, ExtractSyntax, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, Join, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Query, Select, SelectItem,
    SetExpr, Statement, TableFactor, VisitMut, visit_expressions,
};

use super::check::{Cause, Problem, parse_one};
use super::knowledge::{Knowledge, stem};

/// The table and column a missing column stands for: the only table with
/// a column of that name; else the only column with the same name after
/// its table prefix (`l_orderdate` is `orders.o_orderdate`); else a table
/// name followed by one of its columns (`c_nationname` is `nation.n_name`).
/// Where several tables fit, the one of them the query reads (`o.name` in a
/// query over `orders o JOIN customers c` is `c.name`), else the one the
/// question names ("which products ..." for `products.name`), else none.
fn owner_of(k: &Knowledge, missing: &str, read: &[(String, String)], question: &str) -> Option<(String, String)> {
    let question = question.to_lowercase();
    let unique = |found: Vec<(String, String)>| -> Option<(String, String)> {
        let one = |fits: &dyn Fn(&str) -> bool| -> Option<(String, String)> {
            let fit: Vec<&(String, String)> = found.iter().filter(|(t, _)| fits(t)).collect();
            let [one] = fit.as_slice() else { return None };
            Some((*one).clone())
        };
        one(&|_| true)
            .or_else(|| one(&|t| read.iter().any(|(r, _)| r == t)))
            .or_else(|| one(&|t| names_table(&question, t)))
    };
    let all = || k.tables.iter().flat_map(|t| t.columns.iter().map(move |c| (t, c)));
    let exact: Vec<_> =
        all().filter(|(_, c)| c.name == missing).map(|(t, c)| (t.name.clone(), c.name.clone())).collect();
    if !exact.is_empty() {
        return unique(exact);
    }
    let wanted = stem(missing);
    let same_stem: Vec<_> =
        all().filter(|(_, c)| stem(&c.name) == wanted).map(|(t, c)| (t.name.clone(), c.name.clone())).collect();
    if !same_stem.is_empty() {
        return unique(same_stem);
    }
    let compound: Vec<_> = all()
        .filter(|(t, c)| {
            let base = t.name.trim_end_matches('s');
            wanted
                .strip_prefix(base)
                .is_some_and(|rest| !rest.is_empty() && rest.trim_start_matches('_') == stem(&c.name))
        })
        .map(|(t, c)| (t.name.clone(), c.name.clone()))
        .collect();
    unique(compound)
}

/// Renames a column wherever the query names it (bare or qualified).
struct RenameColumn<'a> {
    from: &'a str,
    to: &'a str,
}

impl datafusion::sql::sqlparser::ast::VisitorMut for RenameColumn<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &mut SqlExpr) -> std::ops::ControlFlow<()> {
        match e {
            SqlExpr::Identifier(i) if i.value.eq_ignore_ascii_case(self.from) => *i = Ident::new(self.to),
            SqlExpr::CompoundIdentifier(parts)
                if parts.last().is_some_and(|i| i.value.eq_ignore_ascii_case(self.from)) =>
            {
                *parts.last_mut().expect("a last part") = Ident::new(self.to);
            }
            _ => {}
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// A FROM item's table and the name the query refers to it by.
fn relation_name(f: &TableFactor) -> Option<(String, String)> {
    let TableFactor::Table { name, alias, .. } = f else { return None };
    let table = name.0.last().map(|p| p.to_string().trim_matches('"').to_ascii_lowercase()).unwrap_or_default();
    let refer = alias.as_ref().map(|a| a.name.value.clone()).unwrap_or_else(|| table.clone());
    Some((table, refer))
}

/// The tables of a FROM clause: `(table, name to refer to it by)`.
fn from_tables(select: &Select) -> Vec<(String, String)> {
    select
        .from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
        .filter_map(relation_name)
        .collect()
}

/// `a AND b AND ...`; `None` for no parts.
fn and_all(parts: impl IntoIterator<Item = SqlExpr>) -> Option<SqlExpr> {
    parts.into_iter().reduce(|a, b| SqlExpr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    })
}

fn ident_expr(parts: &[&str]) -> SqlExpr {
    SqlExpr::CompoundIdentifier(parts.iter().map(|p| Ident::new(*p)).collect())
}

/// `a.x = b.y AND ...` for a catalog join, with the names the query uses.
fn join_condition(k: &Knowledge, left: (&str, &str), right: (&str, &str)) -> Option<SqlExpr> {
    let join = k
        .joins
        .iter()
        .find(|j| (j.left == left.0 && j.right == right.0) || (j.left == right.0 && j.right == left.0))?;
    let (l_cols, r_cols) = if join.left == left.0 {
        (&join.left_columns, &join.right_columns)
    } else {
        (&join.right_columns, &join.left_columns)
    };
    and_all(l_cols.iter().zip(r_cols).map(|(l, r)| SqlExpr::BinaryOp {
        left: Box::new(ident_expr(&[left.1, l])),
        op: BinaryOperator::Eq,
        right: Box::new(ident_expr(&[right.1, r])),
    }))
}

/// Whether `expr` names `column` (bare or qualified).
fn mentions(expr: &SqlExpr, column: &str) -> bool {
    let mut found = false;
    let _ = visit_expressions(expr, |x: &SqlExpr| {
        match x {
            SqlExpr::Identifier(i) if i.value.eq_ignore_ascii_case(column) => found = true,
            SqlExpr::CompoundIdentifier(p) if p.last().is_some_and(|i| i.value.eq_ignore_ascii_case(column)) => {
                found = true
            }
            _ => {}
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    found
}

/// Joins `owner` into the FROM clause along the catalog's shortest join path.
fn add_join(select: &mut Select, k: &Knowledge, owner: &str) -> bool {
    let present = from_tables(select);
    let Some(first) = select.from.first_mut() else { return false };
    let mut names: Vec<String> = present.iter().map(|(t, _)| t.clone()).collect();
    names.push(owner.to_string());
    let path = k.connect(&names);
    let mut known: Vec<(String, String)> = present.clone();
    for table in path.iter().filter(|t| !present.iter().any(|(p, _)| p == *t)) {
        let Some(on) = known.iter().find_map(|(t, r)| join_condition(k, (t, r), (table, table))) else {
            return false;
        };
        first.joins.push(Join {
            relation: TableFactor::Table {
                name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(table.clone()))]),
                alias: None,
                args: None,
                with_hints: vec![],
                version: None,
                with_ordinality: false,
                partitions: vec![],
                json_path: None,
                sample: None,
                index_hints: vec![],
            },
            global: false,
            join_operator: JoinOperator::Join(JoinConstraint::On(on)),
        });
        known.push((table.clone(), table.clone()));
    }
    true
}

/// Points `qualifier.column` at `refer.column`.
fn requalify(select: &mut Select, qualifier: &str, column: &str, refer: &str) {
    let _ = select.visit(&mut Requalify { qualifier, column, refer });
}

struct Requalify<'a> {
    qualifier: &'a str,
    column: &'a str,
    refer: &'a str,
}

impl datafusion::sql::sqlparser::ast::VisitorMut for Requalify<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &mut SqlExpr) -> std::ops::ControlFlow<()> {
        if let SqlExpr::CompoundIdentifier(parts) = e
            && parts.len() >= 2
            && parts[parts.len() - 1].value.eq_ignore_ascii_case(self.column)
            && parts[parts.len() - 2].value.eq_ignore_ascii_case(self.qualifier)
        {
            *e = ident_expr(&[self.refer, self.column]);
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// The query of a SQL text, when it is one query statement.
fn parse_query(sql: &str) -> Option<Box<Query>> {
    let Ok(DFStatement::Statement(statement)) = parse_one(sql) else { return None };
    let Statement::Query(query) = *statement else { return None };
    Some(query)
}

/// The aggregate calls whose results the repairs treat as figures.
const AGGREGATE_CALLS: [&str; 8] = ["count(", "sum(", "avg(", "min(", "max(", "median(", "stddev(", "var("];

/// The plain SELECT of a query, when it is one.
fn select_of(query: &mut Query) -> Option<&mut Select> {
    match query.body.as_mut() {
        SetExpr::Select(s) => Some(s.as_mut()),
        _ => None,
    }
}

/// The column of a table the query reads that a missing (unqualified)
/// column stands for when only its prefix is another table's (`c_acctbal`
/// in a query over `supplier` is `s_acctbal`): the one column of the tables
/// read with the same name after the prefix. Not for keys, nor a column
/// with listed values (`n_name = 'GERMANY'` means the nation), nor when the
/// question names the missing column's own table ("suppliers of customers
/// whose balance ..."): those join that table.
fn own_prefixed(select: &Select, k: &Knowledge, missing: &str, question: &str) -> Option<String> {
    let wanted = stem(missing);
    if wanted == missing || wanted.ends_with("key") {
        return None;
    }
    let owners: Vec<_> = k.tables.iter().filter(|t| t.columns.iter().any(|c| c.name == missing)).collect();
    if owners.is_empty() || owners.iter().any(|t| t.columns.iter().any(|c| c.name == missing && !c.values.is_empty())) {
        return None;
    }
    let asked = question.to_lowercase();
    if owners.iter().any(|t| names_table(&asked, &t.name)) {
        return None;
    }
    let found: Vec<String> = from_tables(select)
        .iter()
        .filter_map(|(table, _)| {
            let t = k.tables.iter().find(|t| t.name.eq_ignore_ascii_case(table))?;
            let c = t.columns.iter().find(|c| c.name != missing && stem(&c.name) == wanted)?;
            Some(c.name.clone())
        })
        .collect();
    let [one] = found.as_slice() else { return None };
    Some(one.clone())
}

/// Whether `question` (lower case) names `table` (its name, or without a
/// plural s: "order" for `orders`).
fn names_table(question: &str, table: &str) -> bool {
    question.contains(table.trim_end_matches('s'))
}

/// A fixed query for `sql`, failed with `problem`, if one of the fixes applies.
pub fn fix(sql: &str, problem: &Problem, k: &Knowledge, question: &str) -> Option<String> {
    let Problem::Plan(unplanned) = problem else { return None };
    let mut query = parse_query(sql)?;
    if let Cause::UnknownFunction(name) = &unplanned.cause {
        let mut calls = DatePartCalls { name, field: date_part_field(name)?, replaced: 0 };
        let _ = query.visit(&mut calls);
        return (calls.replaced > 0).then(|| query.to_string());
    }
    let select = select_of(&mut query)?;
    // A column renamed or requalified in the SELECT, to be so in ORDER BY
    // too (which belongs to the query around the SELECT).
    let mut renamed: Option<String> = None;
    let mut requalified: Option<(String, String, String)> = None;
    if let Cause::NotGrouped(column) = &unplanned.cause {
        // A selected column that is neither grouped nor aggregated: group by it.
        let expr = match column.split_once('.') {
            Some((q, c)) => ident_expr(&[q, c]),
            None => SqlExpr::Identifier(Ident::new(column.clone())),
        };
        match &mut select.group_by {
            GroupByExpr::Expressions(list, _) if !list.is_empty() => list.push(expr),
            _ => return None,
        }
    } else if let Cause::MissingColumn { qualifier: None, name: missing } = &unplanned.cause
        && let Some(column) = own_prefixed(select, k, missing, question)
    {
        let _ = select.visit(&mut RenameColumn { from: missing, to: &column });
        renamed = Some(column);
    } else if let Cause::MissingColumn { qualifier, name: missing } = &unplanned.cause {
        let (owner, column) = owner_of(k, missing, &from_tables(select), question)?;
        let owner = owner.as_str();
        if &column != missing {
            // An invented name for a real column (`l_orderdate`,
            // `c_nationname`): the real one, from its own table.
            let _ = select.visit(&mut RenameColumn { from: missing, to: &column });
            renamed = Some(column.clone());
        }
        let present = from_tables(select);
        // A join condition naming the column on the wrong table: the
        // catalog's join keys replace it.
        for twj in &mut select.from {
            let mut before: Vec<(String, String)> = relation_name(&twj.relation).into_iter().collect();
            for join in &mut twj.joins {
                let this = relation_name(&join.relation);
                if let JoinOperator::Join(JoinConstraint::On(on)) | JoinOperator::Inner(JoinConstraint::On(on)) =
                    &mut join.join_operator
                    && mentions(on, &column)
                {
                    // Without catalog join keys to put there, a requalified
                    // condition could join a table to itself: no fix.
                    let (t, r) = this.as_ref()?;
                    *on = before.iter().find_map(|(bt, br)| join_condition(k, (bt, br), (t, r)))?;
                }
                before.extend(this);
            }
        }
        let refer = match present.iter().find(|(t, _)| t == owner) {
            Some((_, refer)) => refer.clone(),
            None if add_join(select, k, owner) => owner.to_string(),
            None => return None,
        };
        if let Some(q) = qualifier {
            requalify(select, q, &column, &refer);
            requalified = Some((q.clone(), column, refer));
        }
    } else if let Cause::MissingTable(table) = &unplanned.cause {
        let near: Vec<&str> = k
            .tables
            .iter()
            .map(|t| t.name.as_str())
            .filter(|t| t.starts_with(table.as_str()) || table.starts_with(*t))
            .collect();
        let [right] = near.as_slice() else { return None };
        let _ = query.visit(&mut Rename { from: table, to: right });
    } else {
        return None;
    }
    if let (Some(order_by), Cause::MissingColumn { name: missing, .. }) = (&mut query.order_by, &unplanned.cause) {
        if let Some(column) = &renamed {
            let _ = order_by.visit(&mut RenameColumn { from: missing, to: column });
        }
        if let Some((qualifier, column, refer)) = &requalified {
            let _ = order_by.visit(&mut Requalify { qualifier, column, refer });
        }
    }
    let fixed = query.to_string();
    (fixed != sql).then_some(fixed)
}

/// The field of the standard `EXTRACT` that another dialect's date-part
/// function (MySQL's and Spark's `YEAR(d)`, `DAYOFYEAR(d)`) returns.
/// `DAYOFWEEK` is not one: it counts from 1, `EXTRACT(DOW ...)` from 0.
fn date_part_field(function: &str) -> Option<DateTimeField> {
    Some(match function {
        "year" => DateTimeField::Year,
        "quarter" => DateTimeField::Quarter,
        "month" => DateTimeField::Month,
        "week" | "weekofyear" => DateTimeField::Week(None),
        "day" | "dayofmonth" => DateTimeField::Day,
        "dayofyear" => DateTimeField::Doy,
        "hour" => DateTimeField::Hour,
        "minute" => DateTimeField::Minute,
        "second" => DateTimeField::Second,
        _ => return None,
    })
}

/// Rewrites each one-argument call of the date-part function `name` as
/// `EXTRACT(field FROM argument)`.
struct DatePartCalls<'a> {
    name: &'a str,
    field: DateTimeField,
    replaced: usize,
}

impl datafusion::sql::sqlparser::ast::VisitorMut for DatePartCalls<'_> {
    type Break = ();
    fn post_visit_expr(&mut self, e: &mut SqlExpr) -> std::ops::ControlFlow<()> {
        if let SqlExpr::Function(f) = e
            && f.name.0.len() == 1
            && f.name.to_string().eq_ignore_ascii_case(self.name)
            && f.over.is_none()
            && f.filter.is_none()
            && let FunctionArguments::List(list) = &f.args
            && list.duplicate_treatment.is_none()
            && list.clauses.is_empty()
            && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(argument))] = list.args.as_slice()
        {
            *e = SqlExpr::Extract {
                field: self.field.clone(),
                syntax: ExtractSyntax::From,
                expr: Box::new(argument.clone()),
            };
            self.replaced += 1;
        }
        std::ops::ControlFlow::Continue(())
    }
}

struct Rename<'a> {
    from: &'a str,
    to: &'a str,
}

impl datafusion::sql::sqlparser::ast::VisitorMut for Rename<'_> {
    type Break = ();
    fn pre_visit_relation(&mut self, name: &mut ObjectName) -> std::ops::ControlFlow<()> {
        if name.0.last().is_some_and(|p| p.to_string().trim_matches('"').eq_ignore_ascii_case(self.from)) {
            *name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(self.to))]);
        }
        std::ops::ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::knowledge::Join as KeyJoin;
    use super::super::knowledge::tests::table;
    use super::*;

    fn tpch() -> Knowledge {
        let join = |l: &str, lc: &str, r: &str, rc: &str| KeyJoin {
            left: l.into(),
            left_columns: vec![lc.into()],
            right: r.into(),
            right_columns: vec![rc.into()],
        };
        Knowledge {
            tables: vec![
                table("customer", &["c_custkey", "c_name", "c_mktsegment"]),
                table("orders", &["o_orderkey", "o_custkey", "o_orderpriority"]),
                table("part", &["p_partkey", "p_size"]),
                table("partsupp", &["ps_partkey", "ps_suppkey"]),
                table("supplier", &["s_suppkey", "s_acctbal"]),
            ],
            joins: vec![
                join("orders", "o_custkey", "customer", "c_custkey"),
                join("partsupp", "ps_partkey", "part", "p_partkey"),
                join("partsupp", "ps_suppkey", "supplier", "s_suppkey"),
            ],
            examples: vec![],
            version: String::new(),
        }
    }

    fn plan_error(m: &str) -> Problem {
        Problem::plan(m)
    }

    #[test]
    fn another_dialects_date_part_functions_become_extract() {
        let k = tpch();
        let q = "How many orders were placed in 1995?";
        let problem = plan_error("Invalid function 'year'.\nDid you mean 'var'?");
        let sql = "SELECT count(*) FROM orders WHERE YEAR(o_orderdate) = 1995 AND year(orders.o_orderdate) > 0";
        assert_eq!(
            fix(sql, &problem, &k, q).unwrap(),
            "SELECT count(*) FROM orders WHERE EXTRACT(YEAR FROM o_orderdate) = 1995 \
             AND EXTRACT(YEAR FROM orders.o_orderdate) > 0"
        );
        // Inside a subquery, a grouping and another statement shape too.
        let nested = "SELECT MONTH(d), count(*) FROM (SELECT o_orderdate AS d FROM orders) GROUP BY MONTH(d) \
                      UNION ALL SELECT 0, 0";
        assert_eq!(
            fix(nested, &plan_error("Invalid function 'month'."), &k, q).unwrap(),
            "SELECT EXTRACT(MONTH FROM d), count(*) FROM (SELECT o_orderdate AS d FROM orders) \
             GROUP BY EXTRACT(MONTH FROM d) UNION ALL SELECT 0, 0"
        );
        // Not a date part, a day of the week counted from 1, or another arity: no fix.
        for (sql, function) in [
            ("SELECT getenv('HOME')", "getenv"),
            ("SELECT DAYOFWEEK(o_orderdate) FROM orders", "dayofweek"),
            ("SELECT YEAR(o_orderdate, 1) FROM orders", "year"),
            ("SELECT count(*) FROM orders", "year"),
        ] {
            let problem = plan_error(&format!("Invalid function '{function}'."));
            assert_eq!(fix(sql, &problem, &k, q), None, "{sql}");
        }
    }

    #[test]
    fn another_tables_prefix_on_a_column_of_the_table_read() {
        let mut k = tpch();
        k.tables[0].columns.push(super::super::knowledge::tests::table("x", &["c_acctbal"]).columns.remove(0));
        let sql = "SELECT count(*) FROM supplier WHERE c_acctbal > 9000";
        let problem = plan_error("No field named c_acctbal.");
        let q = "How many suppliers have an account balance above 9,000?";
        assert_eq!(fix(sql, &problem, &k, q).unwrap(), "SELECT count(*) FROM supplier WHERE s_acctbal > 9000");
        // The question names the customers, or the column has listed values:
        // not renamed (the join path to customer, absent here, is the fix).
        let renamed = Some("SELECT count(*) FROM supplier WHERE s_acctbal > 9000".to_string());
        assert_ne!(fix(sql, &problem, &k, "suppliers in the nations of customers with a balance over 9,000"), renamed);
        k.tables[0].columns.last_mut().unwrap().values = vec!["1".into(), "2".into()];
        assert_ne!(fix(sql, &problem, &k, q), renamed);
    }

    #[test]
    fn a_column_of_another_table_joins_that_table() {
        let sql =
            "SELECT count(o_orderkey) FROM orders WHERE o_orderpriority = '1-URGENT' AND c_mktsegment = 'HOUSEHOLD'";
        let fixed = fix(sql, &plan_error("No field named c_mktsegment."), &tpch(), "").unwrap();
        assert_eq!(
            fixed,
            "SELECT count(o_orderkey) FROM orders JOIN customer ON orders.o_custkey = customer.c_custkey \
             WHERE o_orderpriority = '1-URGENT' AND c_mktsegment = 'HOUSEHOLD'"
        );
        // Along the join path, through the table between.
        let sql = "SELECT avg(s_acctbal) FROM part WHERE p_size = 10";
        let fixed = fix(sql, &plan_error("No field named s_acctbal."), &tpch(), "").unwrap();
        assert!(fixed.contains("JOIN partsupp ON part.p_partkey = partsupp.ps_partkey JOIN supplier ON partsupp.ps_suppkey = supplier.s_suppkey"), "{fixed}");
    }

    #[test]
    fn a_name_several_tables_have_is_the_read_or_the_named_tables() {
        let join = |l: &str, r: &str, c: &str| KeyJoin {
            left: l.into(),
            left_columns: vec![c.into()],
            right: r.into(),
            right_columns: vec![c.into()],
        };
        let k = Knowledge {
            tables: vec![
                table("customers", &["customer_id", "name", "country"]),
                table("orders", &["order_id", "customer_id", "shipping_cost"]),
                table("order_items", &["order_id", "product_id", "quantity"]),
                table("products", &["product_id", "name", "category"]),
            ],
            joins: vec![
                join("orders", "customers", "customer_id"),
                join("order_items", "orders", "order_id"),
                join("order_items", "products", "product_id"),
            ],
            examples: vec![],
            version: String::new(),
        };
        // The table the query reads.
        let sql = "SELECT o.customer_id, o.name FROM orders AS o JOIN customers AS c ON o.customer_id = c.customer_id";
        let fixed = fix(sql, &plan_error("No field named o.name."), &k, "Which customers order most?").unwrap();
        assert_eq!(
            fixed,
            "SELECT o.customer_id, c.name FROM orders AS o JOIN customers AS c ON o.customer_id = c.customer_id"
        );
        // Else the table the question names, joined.
        let sql = "SELECT i.product_id, i.name, sum(i.quantity) FROM order_items AS i GROUP BY i.product_id";
        let fixed = fix(sql, &plan_error("No field named i.name."), &k, "Which 5 Products sold most units?").unwrap();
        assert!(fixed.contains("JOIN products ON i.product_id = products.product_id"), "{fixed}");
        assert!(fixed.contains("products.name"), "{fixed}");
        // Neither: no guess.
        let sql = "SELECT i.name FROM order_items AS i";
        assert_eq!(fix(sql, &plan_error("No field named i.name."), &k, "What was sold?"), None);
    }

    #[test]
    fn order_by_follows_a_renamed_or_requalified_column() {
        let mut k = tpch();
        k.tables.push(table("reviews", &["r_reviewkey", "r_partkey", "r_sentiment"]));
        k.tables[2].columns.push(table("x", &["p_container"]).columns.remove(0));
        let sql = "SELECT container, avg(p_size) FROM part GROUP BY container ORDER BY container";
        assert_eq!(
            fix(sql, &plan_error("No field named container."), &k, "").unwrap(),
            "SELECT p_container, avg(p_size) FROM part GROUP BY p_container ORDER BY p_container"
        );
        let sql = "SELECT t1.p_container, count(*) FROM reviews AS t1 JOIN part AS t2 ON t1.r_partkey = t2.p_partkey \
                   GROUP BY t1.p_container ORDER BY t1.p_container";
        assert_eq!(
            fix(sql, &plan_error("No field named t1.p_container."), &k, "").unwrap(),
            "SELECT t2.p_container, count(*) FROM reviews AS t1 JOIN part AS t2 ON t1.r_partkey = t2.p_partkey \
             GROUP BY t2.p_container ORDER BY t2.p_container"
        );
    }

    #[test]
    fn wrong_qualifiers_and_join_conditions() {
        let sql = "SELECT c_name FROM customer JOIN orders ON customer.c_custkey = orders.c_custkey";
        let fixed = fix(sql, &plan_error("No field named orders.c_custkey."), &tpch(), "").unwrap();
        assert_eq!(fixed, "SELECT c_name FROM customer JOIN orders ON customer.c_custkey = orders.o_custkey");
        // No catalog join between part and supplier: no guess.
        let sql = "SELECT s_acctbal FROM part JOIN supplier ON part.s_suppkey = supplier.s_suppkey";
        assert_eq!(fix(sql, &plan_error("No field named part.s_suppkey."), &tpch(), ""), None);
    }

    #[test]
    fn invented_names_become_the_real_columns() {
        let mut k = tpch();
        k.tables.push(table("nation", &["n_nationkey", "n_name"]));
        k.tables[0].columns.push(table("x", &["c_nationkey"]).columns.remove(0));
        k.joins.push(KeyJoin {
            left: "customer".into(),
            left_columns: vec!["c_nationkey".into()],
            right: "nation".into(),
            right_columns: vec!["n_nationkey".into()],
        });
        let sql = "SELECT c_nationname, count(*) FROM customer GROUP BY c_nationname";
        let fixed = fix(sql, &plan_error("No field named c_nationname."), &k, "").unwrap();
        assert_eq!(
            fixed,
            "SELECT n_name, count(*) FROM customer JOIN nation ON customer.c_nationkey = nation.n_nationkey GROUP BY n_name"
        );
        // Same name after the prefix: `o_orderpriority` for `c_orderpriority`.
        let sql = "SELECT count(*) FROM customer WHERE c_orderpriority = '1-URGENT'";
        let fixed = fix(sql, &plan_error("No field named c_orderpriority."), &k, "").unwrap();
        assert!(
            fixed.contains("JOIN orders ON customer.c_custkey = orders.o_custkey WHERE o_orderpriority"),
            "{fixed}"
        );
    }

    #[test]
    fn a_selected_column_missing_from_group_by_is_grouped() {
        let sql = "SELECT c_name, count(*) AS n FROM orders JOIN customer ON o_custkey = c_custkey GROUP BY c_custkey";
        let message = "Column in SELECT must be in GROUP BY or an aggregate function: While expanding wildcard, column \"customer.c_name\" must appear in the GROUP BY clause or must be part of an aggregate function, currently only \"customer.c_custkey\" appears";
        let fixed = fix(sql, &plan_error(message), &tpch(), "").unwrap();
        assert!(fixed.ends_with("GROUP BY c_custkey, customer.c_name"), "{fixed}");
    }

    #[test]
    fn a_table_name_off_by_a_letter() {
        let sql = "SELECT count(*) FROM order o WHERE o.o_orderpriority = '1-URGENT'";
        let fixed = fix(sql, &plan_error("table 'lakelink.public.order' not found"), &tpch(), "").unwrap();
        assert_eq!(fixed, "SELECT count(*) FROM orders o WHERE o.o_orderpriority = '1-URGENT'");
        assert_eq!(
            fix("SELECT * FROM secrets", &plan_error("table 'lakelink.public.secrets' not found"), &tpch(), ""),
            None
        );
    }
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// The one period a question names ("in 1996", "in March 1995", "in the
/// second quarter of 1996"): `(first day, first day after)`, as `YYYY-MM-DD`.
fn period(question: &str) -> Option<(String, String)> {
    let words: Vec<String> =
        question.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    if words.iter().any(|w| matches!(w.as_str(), "since" | "after" | "before" | "until" | "between" | "to")) {
        return None;
    }
    let years: Vec<(usize, i32)> = words
        .iter()
        .enumerate()
        .filter(|(_, w)| w.len() == 4)
        .filter_map(|(i, w)| w.parse::<i32>().ok().filter(|y| (1900..2100).contains(y)).map(|y| (i, y)))
        .collect();
    let [(at, year)] = years.as_slice() else { return None };
    let quarters: Vec<usize> = words.iter().enumerate().filter(|(_, w)| *w == "quarter").map(|(i, _)| i).collect();
    let (first_month, months) = match quarters.as_slice() {
        [] => match at.checked_sub(1).and_then(|i| MONTHS.iter().position(|m| *m == words[i])) {
            Some(m) => (m, 1),
            None => (0, 12),
        },
        [q] => {
            let ordinal = q.checked_sub(1).map(|i| words[i].as_str());
            let n = match ordinal {
                Some("first" | "1st") => 0,
                Some("second" | "2nd") => 1,
                Some("third" | "3rd") => 2,
                Some("fourth" | "4th" | "last") => 3,
                _ => return None,
            };
            (n * 3, 3)
        }
        _ => return None,
    };
    let after = first_month + months;
    let (ny, nm) = if after >= 12 { (year + 1, after - 12) } else { (*year, after) };
    Some((format!("{year}-{:02}-01", first_month + 1), format!("{ny}-{:02}-01", nm + 1)))
}

/// The conjuncts of an AND chain.
fn conjuncts(e: SqlExpr, out: &mut Vec<SqlExpr>) {
    match e {
        SqlExpr::BinaryOp { left, op: BinaryOperator::And, right } => {
            conjuncts(*left, out);
            conjuncts(*right, out);
        }
        SqlExpr::Nested(inner) if matches!(*inner, SqlExpr::BinaryOp { op: BinaryOperator::And, .. }) => {
            conjuncts(*inner, out)
        }
        other => out.push(other),
    }
}

/// `(column, operator, date)` of a comparison with a DATE literal.
fn date_bound(e: &SqlExpr) -> Option<(&SqlExpr, BinaryOperator, String)> {
    let SqlExpr::BinaryOp { left, op, right } = e else { return None };
    let SqlExpr::TypedString(ts) = right.as_ref() else { return None };
    if !matches!(ts.data_type, datafusion::sql::sqlparser::ast::DataType::Date) {
        return None;
    }
    let date = ts.value.clone().into_string()?;
    matches!(op, BinaryOperator::GtEq | BinaryOperator::Lt | BinaryOperator::LtEq)
        .then(|| (left.as_ref(), op.clone(), date))
}

/// Makes the date range of a question that names one period that period,
/// without the model:
///
/// * a range that starts at the period's first day but has no end (or ends
///   it a day early, `< DATE '1997-12-31'`) gets the period's real end;
/// * a range with both ends inside the period's year that is not the period
///   (the first quarter for "the second quarter of 1996") becomes the period;
/// * a query with no date bound at all gets the period on the one date
///   column of the tables it reads, or on the one whose name begins like a
///   word of the question (`l_shipdate` for "shipped", "by ship").
pub fn date_ranges(sql: &str, question: &str, k: &Knowledge) -> Option<String> {
    let (start, end) = period(question)?;
    let mut query = parse_query(sql)?;
    let select = select_of(&mut query)?;
    let mut parts = Vec::new();
    if let Some(selection) = select.selection.take() {
        conjuncts(selection, &mut parts);
    }
    let literal = |day: &str| super::check::parse_condition(&format!("DATE '{day}'")).ok();
    let (start_literal, end_literal) = (literal(&start)?, literal(&end)?);
    let bound = |column: SqlExpr, op: BinaryOperator, day: &SqlExpr| SqlExpr::BinaryOp {
        left: Box::new(column),
        op,
        right: Box::new(day.clone()),
    };
    let mut columns: Vec<SqlExpr> = Vec::new();
    for (c, _, _) in parts.iter().filter_map(date_bound) {
        if !columns.contains(c) {
            columns.push(c.clone());
        }
    }
    let mut changed = false;
    if columns.is_empty() {
        let column = period_column(select, question, k)?;
        parts.push(bound(column.clone(), BinaryOperator::GtEq, &start_literal));
        parts.push(bound(column, BinaryOperator::Lt, &end_literal));
        changed = true;
    }
    let year = &start[..4];
    let next_year = format!("{}-01-01", year.parse::<i32>().ok()? + 1);
    for column in columns {
        let bounds: Vec<(usize, BinaryOperator, String)> = parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| date_bound(p).filter(|(c, _, _)| **c == column).map(|(_, op, d)| (i, op, d)))
            .collect();
        let lower: Vec<&String> =
            bounds.iter().filter(|(_, op, _)| *op == BinaryOperator::GtEq).map(|b| &b.2).collect();
        let upper: Vec<&(usize, BinaryOperator, String)> =
            bounds.iter().filter(|(_, op, _)| *op != BinaryOperator::GtEq).collect();
        let [low] = lower.as_slice() else { continue };
        let exact = upper.len() == 1 && upper[0].1 == BinaryOperator::Lt && upper[0].2 == end && **low == start;
        // The period's start with no end, or an early end: the real end.
        let open_or_short = **low == start && !upper.iter().any(|(_, _, d)| *d > end);
        // Both ends inside the period's year, another span: the period.
        let other_span = upper.len() == 1 && low.starts_with(year) && upper[0].2.as_str() <= next_year.as_str();
        if exact || !(open_or_short || other_span) {
            continue;
        }
        for (i, _, _) in bounds.iter().rev() {
            parts.remove(*i);
        }
        parts.push(bound(column.clone(), BinaryOperator::GtEq, &start_literal));
        parts.push(bound(column, BinaryOperator::Lt, &end_literal));
        changed = true;
    }
    select.selection = and_all(parts);
    changed.then(|| query.to_string())
}

/// A query whose result is only aggregates but that groups them (`SELECT
/// avg(ps_supplycost) FROM partsupp GROUP BY ps_suppkey` for "the average
/// supply cost over all offers"), for a question that asks for no grouping
/// (no "per", "each" or "every"): the query without its GROUP BY. Such a
/// query returns unlabelled figures, one per group nobody asked for.
pub fn needless_grouping(sql: &str, question: &str) -> Option<String> {
    let asks_groups = question
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| matches!(w.to_lowercase().as_str(), "per" | "each" | "every" | "grouped" | "breakdown"));
    if asks_groups {
        return None;
    }
    let mut query = parse_query(sql)?;
    let select = select_of(&mut query)?;
    let GroupByExpr::Expressions(groups, modifiers) = &select.group_by else { return None };
    if groups.is_empty() || !modifiers.is_empty() || select.having.is_some() {
        return None;
    }
    let aggregate = |text: &str| {
        let lower = text.trim_start_matches('(').to_lowercase();
        AGGREGATE_CALLS.iter().any(|f| lower.starts_with(f))
    };
    let only_aggregates = select.projection.iter().all(|item| match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => aggregate(&e.to_string()),
        _ => false,
    });
    if !only_aggregates {
        return None;
    }
    select.group_by = GroupByExpr::Expressions(vec![], vec![]);
    Some(query.to_string())
}

/// A joined table the query reads nothing of but its join keys (`SELECT
/// avg(o_totalprice) FROM lineitem JOIN orders ON l_orderkey = o_orderkey`
/// for "the average total price of the orders placed in 1998"), for a
/// question that does not name it: the query without it. On the many side
/// of its join keys such a table repeats each row once per match (each
/// order once per line item), which skews counts, sums and averages; on
/// the one side it changes nothing. Inner joins only; a table another join
/// goes through, or one a name in the query may belong to, is kept, and so
/// is every table of a query with DISTINCT (`count(DISTINCT c_custkey) FROM
/// customer JOIN orders ...`: the join asks which customers have orders).
pub fn needless_join(sql: &str, question: &str, k: &Knowledge) -> Option<String> {
    if sql.to_ascii_uppercase().contains("DISTINCT") {
        return None;
    }
    let mut query = parse_query(sql)?;
    let asked = question.to_lowercase();
    let select = select_of(&mut query)?.clone();
    let [from] = select.from.as_slice() else { return None };
    if from.joins.is_empty()
        || select.projection.iter().any(|i| matches!(i, SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)))
    {
        return None;
    }
    let mut relations = vec![relation_name(&from.relation)?];
    for join in &from.joins {
        let (JoinOperator::Join(JoinConstraint::On(_)) | JoinOperator::Inner(JoinConstraint::On(_))) =
            &join.join_operator
        else {
            return None;
        };
        relations.push(relation_name(&join.relation)?);
    }
    // The relations a name in the query may belong to (all of them when it
    // could be any of several).
    let owners = |expr: &SqlExpr| -> Vec<usize> {
        let mut out = Vec::new();
        let _ = visit_expressions(expr, |x: &SqlExpr| {
            match x {
                SqlExpr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    let qualifier = &parts[parts.len() - 2].value;
                    out.extend(
                        relations
                            .iter()
                            .position(|(t, r)| r.eq_ignore_ascii_case(qualifier) || t.eq_ignore_ascii_case(qualifier)),
                    );
                }
                SqlExpr::Identifier(column) => {
                    let has = |(table, _): &(String, String)| {
                        k.tables.iter().any(|t| {
                            t.name.eq_ignore_ascii_case(table)
                                && t.columns.iter().any(|c| c.name.eq_ignore_ascii_case(&column.value))
                        })
                    };
                    let found: Vec<usize> = (0..relations.len()).filter(|&i| has(&relations[i])).collect();
                    if found.len() > 1 {
                        out.extend(0..relations.len());
                    } else {
                        out.extend(found);
                    }
                }
                _ => {}
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        out
    };
    let on = |join: &Join| match &join.join_operator {
        JoinOperator::Join(JoinConstraint::On(e)) | JoinOperator::Inner(JoinConstraint::On(e)) => Some(e.clone()),
        _ => None,
    };
    for (r, (table, _)) in relations.iter().enumerate() {
        if names_table(&asked, table) {
            continue;
        }
        // The join that brings it in (the first one for the first table),
        // which must connect it with one other table and nothing else.
        let own = r.saturating_sub(1);
        let mut joined: Vec<usize> = owners(&on(&from.joins[own])?);
        joined.sort_unstable();
        joined.dedup();
        if joined.len() != 2 || !joined.contains(&r) {
            continue;
        }
        // Nowhere else does the query name it.
        let mut rest = query.clone();
        let rest_select = select_of(&mut rest)?;
        let removed = rest_select.from[0].joins.remove(own);
        if r == 0 {
            rest_select.from[0].relation = removed.relation;
        }
        let mut used = false;
        let _ = visit_expressions(&rest, |x: &SqlExpr| {
            used |= owners(x).contains(&r);
            std::ops::ControlFlow::<()>::Continue(())
        });
        if !used {
            return Some(rest.to_string());
        }
    }
    None
}

/// The date column to put a question's period on, for a query that has
/// none: the one DATE column of the tables the query reads, or of those the
/// one whose name (its table prefix and "date" left out) shares its first
/// four letters with a word of the question.
fn period_column(select: &Select, question: &str, k: &Knowledge) -> Option<SqlExpr> {
    let read = from_tables(select);
    let dates: Vec<&str> = k
        .tables
        .iter()
        .filter(|t| read.iter().any(|(name, _)| name.eq_ignore_ascii_case(&t.name)))
        .flat_map(|t| t.columns.iter())
        .filter(|c| c.sql_type.starts_with("DATE") || c.sql_type.starts_with("TIMESTAMP"))
        .map(|c| c.name.as_str())
        .collect();
    let chosen = match dates.as_slice() {
        [one] => *one,
        [] => return None,
        several => {
            let asked: Vec<String> = question
                .split(|c: char| !c.is_alphanumeric())
                .map(str::to_lowercase)
                .filter(|w| w.len() >= 4)
                .collect();
            let like: Vec<&str> = several
                .iter()
                .copied()
                .filter(|c| {
                    let root = stem(c).trim_end_matches("date").trim_end_matches('_');
                    root.len() >= 4 && asked.iter().any(|w| w.get(..4) == root.get(..4))
                })
                .collect();
            let [one] = like.as_slice() else { return None };
            *one
        }
    };
    Some(SqlExpr::Identifier(Ident::new(chosen)))
}

/// What a question asks its rows to be ordered by.
#[derive(Debug, PartialEq)]
enum OrderKey {
    /// The output a word names ("ordered by status", "in month order").
    Named(String),
    /// The output a word names, or else the last figure ("the revenue,
    /// highest first").
    Figure(String),
    /// The first output that is not a figure ("in alphabetical order").
    First,
}

/// The order `question` asks for, and whether it is descending: "ordered
/// (sorted) by X", "in X order", "in descending order of X", "X, highest
/// (largest, lowest, ...) first", "in alphabetical (chronological) order".
fn asked_order(question: &str) -> Option<(OrderKey, bool)> {
    let w: Vec<String> =
        question.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    let at = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    let article = |x: &str| matches!(x, "the" | "its" | "their" | "a" | "an" | "each");
    // The first word from `i` that is not an article.
    let noun = |mut i: usize| {
        while article(at(i)) {
            i += 1;
        }
        (!at(i).is_empty()).then(|| (at(i).to_string(), i))
    };
    let high = |x: &str| matches!(x, "highest" | "largest" | "biggest" | "most" | "greatest" | "latest" | "newest");
    let low = |x: &str| matches!(x, "lowest" | "smallest" | "fewest" | "least" | "earliest" | "oldest");
    // "highest first" (or "descending") within a few words of `i`.
    let descending_near = |i: usize| (i..i + 4).any(|j| at(j) == "descending" || (high(at(j)) && at(j + 1) == "first"));
    for i in 0..w.len() {
        if matches!(at(i), "ordered" | "sorted" | "order" | "sort") && at(i + 1) == "by" {
            let (word, j) = noun(i + 2)?;
            return Some((OrderKey::Named(word), descending_near(j + 1)));
        }
        if at(i) == "in" && at(i + 2) == "order" {
            let how = at(i + 1);
            let descending = how == "descending" || how == "reverse";
            if at(i + 3) == "of" {
                let (word, _) = noun(i + 4)?;
                return Some((OrderKey::Named(word), descending));
            }
            return match how {
                "alphabetical" | "chronological" | "ascending" => Some((OrderKey::First, false)),
                "descending" | "reverse" => None,
                word => Some((OrderKey::Named(word.to_string()), false)),
            };
        }
        if (high(at(i)) || low(at(i))) && at(i + 1) == "first" && i > 0 {
            return Some((OrderKey::Figure(at(i - 1).to_string()), high(at(i))));
        }
    }
    None
}

/// An output of a query, as [`missing_order`] matches it with a question's word.
struct Output {
    /// What ORDER BY refers to it by: its alias, else its expression.
    refer: String,
    /// The words of its name (alias or column), lower case.
    words: Vec<String>,
    /// Its expression, lower case.
    text: String,
    /// Whether it is an aggregate.
    figure: bool,
}

/// A query without ORDER BY for a question that asks for an order ("ordered
/// by status", "in month order", "the revenue, highest first"): the query
/// ordered by the output the question names (its alias or column name, or
/// a word of its expression: `EXTRACT(MONTH FROM ...)` for "month"), by the
/// last figure for "highest first" when no output is named, by the first
/// output that is not a figure for "in alphabetical order". Nothing changes
/// when no output or several fit equally, or the query is not one SELECT.
pub fn missing_order(sql: &str, question: &str) -> Option<String> {
    let (key, descending) = asked_order(question)?;
    let mut query = parse_query(sql)?;
    if query.order_by.is_some() {
        return None;
    }
    let select = select_of(&mut query)?;
    let outputs: Vec<Output> = select
        .projection
        .iter()
        .map(|item| {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
                _ => return None,
            };
            let text = expr.to_string();
            let name = match (alias, expr) {
                (Some(a), _) => a.value.clone(),
                (None, SqlExpr::Identifier(i)) => i.value.clone(),
                (None, SqlExpr::CompoundIdentifier(parts)) => parts.last()?.value.clone(),
                (None, _) => String::new(),
            };
            let refer = alias.map(|a| a.to_string()).unwrap_or_else(|| text.clone());
            let lower = text.trim_start_matches('(').to_lowercase();
            let figure = AGGREGATE_CALLS.iter().any(|f| lower.contains(f));
            let words = name.to_lowercase().split(|c: char| !c.is_alphanumeric()).map(str::to_string).collect();
            Some(Output { refer, words, text: text.to_lowercase(), figure })
        })
        .collect::<Option<_>>()?;
    // The output `word` names: by a word of its name, else by the end of one
    // (`orderpriority` of `o_orderpriority` for "priority"), else by a word
    // of its expression; `None` unless exactly one fits at the first of
    // these that any does.
    let named = |word: &str| -> Option<usize> {
        let singular = word.strip_suffix('s').unwrap_or(word);
        let tiers: [&dyn Fn(&Output) -> bool; 3] = [
            &|o| o.words.iter().any(|n| n == word || n == singular),
            &|o| singular.len() >= 4 && o.words.iter().any(|n| n.ends_with(singular)),
            &|o| o.text.split(|c: char| !c.is_alphanumeric()).any(|t| t == word),
        ];
        tiers.iter().find_map(|fits| {
            let found: Vec<usize> = (0..outputs.len()).filter(|&i| fits(&outputs[i])).collect();
            match found.as_slice() {
                [] => None,
                [one] => Some(Some(*one)),
                _ => Some(None),
            }
        })?
    };
    let chosen = match key {
        OrderKey::Named(word) => named(&word)?,
        OrderKey::Figure(word) => named(&word).or_else(|| outputs.iter().rposition(|o| o.figure))?,
        OrderKey::First => outputs.iter().position(|o| !o.figure)?,
    };
    let direction = if descending { "DESC" } else { "ASC" };
    let template = format!("SELECT 1 ORDER BY {} {direction}", outputs[chosen].refer);
    query.order_by = parse_query(&template)?.order_by;
    Some(query.to_string())
}

/// A comparison a question asks of a figure ("brands with an average list
/// price above 155", "a total quantity of more than 300"): the aggregate
/// call that makes the figure (`avg(`, `sum(`), the comparison operator and
/// the number. The aggregate word must lead the comparison: no word that
/// starts another phrase ("of", "with", "whose", ...) between them but a
/// last "is" or "of" ("the average price of products above 100" compares
/// the products, not the average).
fn asked_threshold(question: &str) -> Option<(&'static str, &'static str, String)> {
    let w: Vec<String> = question
        .split_whitespace()
        .map(|x| x.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|x| !x.is_empty())
        .collect();
    let at = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    // The number a word is, commas between thousands taken out.
    let number = |x: &str| -> Option<String> {
        let plain = x.replace(',', "");
        (plain.parse::<f64>().is_ok_and(f64::is_finite)).then_some(plain)
    };
    let joining = |x: &str| {
        matches!(x, "of" | "with" | "whose" | "that" | "which" | "who" | "for" | "in" | "on" | "from" | "per" | "by")
            || matches!(x, "and" | "or" | "is" | "are" | "was" | "were")
    };
    for i in 0..w.len() {
        // The operator, and the index of the word after it.
        let (op, next) = match (at(i), at(i + 1)) {
            ("above" | "over" | "exceeding", _) => (">", i + 1),
            ("below" | "under", _) => ("<", i + 1),
            ("more" | "greater" | "higher" | "larger", "than") => (">", i + 2),
            ("less" | "fewer" | "lower" | "smaller", "than") => ("<", i + 2),
            ("at", "least") => (">=", i + 2),
            ("at", "most") => ("<=", i + 2),
            _ => continue,
        };
        let Some(n) = number(at(next)) else { continue };
        // Back from the operator: at most one "is" or "of", then the words
        // of the figure, then its aggregate word.
        let mut j = i;
        if j > 0 && matches!(at(j - 1), "is" | "are" | "was" | "were" | "of") {
            j -= 1;
        }
        for back in 1..=4 {
            let Some(k) = j.checked_sub(back) else { break };
            let call = match at(k) {
                "average" | "mean" => "avg(",
                "total" => "sum(",
                x if joining(x) => break,
                _ => continue,
            };
            return Some((call, op, n));
        }
    }
    None
}

/// A grouped query without HAVING for a question that compares a figure of
/// each group with a number ("which brands have an average list price above
/// 155"): the query keeps the groups whose one output of that aggregate
/// compares so (`HAVING avg(price) > 155`). Where the query compares the
/// figure's argument row by row with that number instead (`WHERE price >
/// 155`, which averages the dear products of each brand), that comparison
/// goes. Nothing changes when the number is anywhere else in the query.
pub fn missing_threshold(sql: &str, question: &str) -> Option<String> {
    let (call, op, n) = asked_threshold(question)?;
    let number = n.parse::<f64>().ok();
    let is_number =
        |e: &SqlExpr| matches!(e, SqlExpr::Value(v) if v.to_string().trim_matches('\'').parse::<f64>().ok() == number);
    let mut query = parse_query(sql)?;
    let select = select_of(&mut query)?;
    let GroupByExpr::Expressions(groups, _) = &select.group_by else { return None };
    if groups.is_empty() || select.having.is_some() {
        return None;
    }
    let figures: Vec<String> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e.to_string()),
            _ => None,
        })
        .filter(|e| e.trim_start_matches('(').to_lowercase().starts_with(call))
        .collect();
    let [figure] = figures.as_slice() else { return None };
    let argument = figure.to_lowercase().trim_start_matches('(')[call.len()..].trim_end_matches(')').to_string();
    let mut parts = Vec::new();
    if let Some(selection) = select.selection.take() {
        conjuncts(selection, &mut parts);
    }
    parts.retain(
        |p| !matches!(p, SqlExpr::BinaryOp { left, right, .. } if is_number(right) && left.to_string().to_lowercase() == argument),
    );
    select.selection = and_all(parts);
    let mut holds = false;
    let _ = visit_expressions(&query, |e: &SqlExpr| {
        holds |= is_number(e);
        std::ops::ControlFlow::<()>::Continue(())
    });
    if holds {
        return None;
    }
    select_of(&mut query)?.having = Some(super::check::parse_condition(&format!("{figure} {op} {n}")).ok()?);
    Some(query.to_string())
}

#[cfg(test)]
mod date_tests {
    use super::super::knowledge::tests::table;
    use super::*;

    fn lake() -> Knowledge {
        let dated = |name: &str, columns: &[&str], dates: &[&str]| {
            let mut t = table(name, columns);
            for d in dates {
                let mut c = table("x", &[d]).columns.remove(0);
                c.sql_type = "DATE".into();
                t.columns.push(c);
            }
            t
        };
        Knowledge {
            tables: vec![
                dated("orders", &["o_orderkey", "o_totalprice"], &["o_orderdate"]),
                dated(
                    "lineitem",
                    &["l_orderkey", "l_partkey", "l_shipmode"],
                    &["l_shipdate", "l_commitdate", "l_receiptdate"],
                ),
                table("part", &["p_partkey", "p_name"]),
            ],
            joins: vec![],
            examples: vec![],
            version: String::new(),
        }
    }

    fn ranges(sql: &str, question: &str) -> Option<String> {
        date_ranges(sql, question, &lake())
    }

    #[test]
    fn a_named_year_or_month_is_the_whole_period() {
        let q = "What is the highest total price of a single order placed in 1996?";
        let sql = "SELECT max(o_totalprice) FROM orders WHERE o_orderdate >= DATE '1996-01-01'";
        assert_eq!(
            ranges(sql, q).unwrap(),
            "SELECT max(o_totalprice) FROM orders WHERE o_orderdate >= DATE '1996-01-01' AND o_orderdate < DATE '1997-01-01'"
        );
        let q = "Show the 5 most expensive orders placed in December 1997";
        let sql =
            "SELECT o_orderkey FROM orders WHERE o_orderdate >= DATE '1997-12-01' AND o_orderdate < DATE '1997-12-31'";
        assert!(
            ranges(sql, q).unwrap().ends_with("o_orderdate >= DATE '1997-12-01' AND o_orderdate < DATE '1998-01-01'")
        );
        // Already right, another year, or several years: unchanged.
        let sql = "SELECT 1 FROM orders WHERE o_orderdate >= DATE '1996-01-01' AND o_orderdate < DATE '1997-01-01'";
        assert_eq!(ranges(sql, "orders in 1996"), None);
        assert_eq!(ranges("SELECT 1 FROM orders WHERE o_orderdate >= DATE '1995-01-01'", "orders in 1996"), None);
        assert_eq!(ranges("SELECT 1 FROM orders WHERE o_orderdate >= DATE '1993-01-01'", "from 1993 to 1997"), None);
    }

    #[test]
    fn figures_over_everything_are_not_grouped() {
        let q = "What is the average supply cost over all supplier offers of parts?";
        let sql = "SELECT avg(ps_supplycost) AS avg_supply_cost FROM partsupp GROUP BY ps_suppkey";
        assert_eq!(needless_grouping(sql, q).unwrap(), "SELECT avg(ps_supplycost) AS avg_supply_cost FROM partsupp");
        // Asked per group, a group selected, HAVING, or a grouped subquery: unchanged.
        assert_eq!(needless_grouping(sql, "the average supply cost per supplier"), None);
        let labelled = "SELECT ps_suppkey, avg(ps_supplycost) FROM partsupp GROUP BY ps_suppkey";
        assert_eq!(needless_grouping(labelled, q), None);
        let having = "SELECT count(*) FROM partsupp GROUP BY ps_suppkey HAVING count(*) > 3";
        assert_eq!(needless_grouping(having, q), None);
        let nested = "SELECT max(n) FROM (SELECT count(*) AS n FROM orders GROUP BY o_custkey)";
        assert_eq!(needless_grouping(nested, "the most orders of one customer"), None);
    }

    #[test]
    fn a_table_read_for_its_join_keys_only_is_left_out() {
        let k = lake();
        let q = "What was the average total price of the orders placed in 1998?";
        let sql = "SELECT avg(o_totalprice) FROM lineitem JOIN orders ON l_orderkey = o_orderkey \
                   WHERE o_orderdate >= DATE '1998-01-01'";
        assert_eq!(
            needless_join(sql, q, &k).unwrap(),
            "SELECT avg(o_totalprice) FROM orders WHERE o_orderdate >= DATE '1998-01-01'"
        );
        // Joined second, with aliases.
        let sql = "SELECT count(*) FROM orders AS o JOIN lineitem AS l ON l.l_orderkey = o.o_orderkey";
        assert_eq!(needless_join(sql, q, &k).unwrap(), "SELECT count(*) FROM orders AS o");
        // A column of it read, a table another join goes through, a question
        // naming it, an outer join, or every column: unchanged.
        let read = "SELECT sum(l_partkey) FROM lineitem JOIN orders ON l_orderkey = o_orderkey";
        assert_eq!(needless_join(read, q, &k), None);
        let bridge = "SELECT p_name, o_totalprice FROM orders JOIN lineitem ON l_orderkey = o_orderkey \
                      JOIN part ON p_partkey = l_partkey";
        assert_eq!(needless_join(bridge, q, &k), None);
        let named = "SELECT avg(o_totalprice) FROM lineitem JOIN orders ON l_orderkey = o_orderkey";
        assert_eq!(needless_join(named, "the average total price of orders with a lineitem", &k), None);
        let outer = "SELECT avg(o_totalprice) FROM orders LEFT JOIN lineitem ON l_orderkey = o_orderkey";
        assert_eq!(needless_join(outer, q, &k), None);
        let all = "SELECT * FROM orders JOIN lineitem ON l_orderkey = o_orderkey";
        assert_eq!(needless_join(all, q, &k), None);
        let which = "SELECT count(DISTINCT o_orderkey) FROM orders JOIN lineitem ON l_orderkey = o_orderkey";
        assert_eq!(needless_join(which, "How many orders were shipped?", &k), None);
    }

    #[test]
    fn a_named_quarter_replaces_another_span_of_its_year() {
        let q = "How many orders were placed in the second quarter of 1996?";
        let sql =
            "SELECT count(*) FROM orders WHERE o_orderdate >= DATE '1996-01-01' AND o_orderdate < DATE '1996-04-01'";
        assert_eq!(
            ranges(sql, q).unwrap(),
            "SELECT count(*) FROM orders WHERE o_orderdate >= DATE '1996-04-01' AND o_orderdate < DATE '1996-07-01'"
        );
        let whole_year =
            "SELECT count(*) FROM orders WHERE o_orderdate >= DATE '1996-01-01' AND o_orderdate < DATE '1997-01-01'";
        assert!(
            ranges(whole_year, "orders in the fourth quarter of 1996")
                .unwrap()
                .ends_with("o_orderdate >= DATE '1996-10-01' AND o_orderdate < DATE '1997-01-01'")
        );
        // Right already; a span in another year; two quarters named: unchanged.
        let q2 = "SELECT 1 FROM orders WHERE o_orderdate >= DATE '1996-04-01' AND o_orderdate < DATE '1996-07-01'";
        assert_eq!(ranges(q2, q), None);
        let other_year =
            "SELECT 1 FROM orders WHERE o_orderdate >= DATE '1995-04-01' AND o_orderdate < DATE '1995-07-01'";
        assert_eq!(ranges(other_year, q), None);
        assert_eq!(ranges(sql, "orders in the first quarter and the second quarter of 1996"), None);
    }

    #[test]
    fn a_period_no_date_restricts_goes_on_the_date_column_the_question_means() {
        // One date column among the tables read.
        let sql = "SELECT avg(o_totalprice) FROM orders";
        assert_eq!(
            ranges(sql, "average order value in 1998").unwrap(),
            "SELECT avg(o_totalprice) FROM orders WHERE o_orderdate >= DATE '1998-01-01' AND o_orderdate < DATE '1999-01-01'"
        );
        // Several: the one whose name begins like a word of the question.
        let sql = "SELECT count(DISTINCT l_partkey) FROM lineitem WHERE l_shipmode = 'SHIP'";
        assert_eq!(
            ranges(sql, "How many different parts were sent by ship in 1995?").unwrap(),
            "SELECT count(DISTINCT l_partkey) FROM lineitem WHERE l_shipmode = 'SHIP' AND l_shipdate >= DATE '1995-01-01' AND l_shipdate < DATE '1996-01-01'"
        );
        assert!(
            ranges("SELECT count(*) FROM lineitem", "lines received in March 1996")
                .unwrap()
                .contains("l_receiptdate >= DATE '1996-03-01' AND l_receiptdate < DATE '1996-04-01'")
        );
        // None or several fit, or no table with a date: unchanged.
        assert_eq!(ranges("SELECT count(*) FROM lineitem", "lines in 1995"), None);
        assert_eq!(ranges("SELECT count(*) FROM part", "parts in 1995"), None);
    }
}

#[cfg(test)]
mod order_tests {
    use super::*;

    #[test]
    fn a_question_reads_as_the_order_it_asks_for() {
        let named = |w: &str| OrderKey::Named(w.to_string());
        assert_eq!(asked_order("Show the status and the number, ordered by status."), Some((named("status"), false)));
        assert_eq!(asked_order("sorted by the segment, highest first"), Some((named("segment"), true)));
        assert_eq!(asked_order("Show the month number and the count, in month order."), Some((named("month"), false)));
        assert_eq!(asked_order("in descending order of revenue"), Some((named("revenue"), true)));
        assert_eq!(asked_order("List the nations in alphabetical order."), Some((OrderKey::First, false)));
        assert_eq!(
            asked_order("Show the channel and the revenue, highest first."),
            Some((OrderKey::Figure("revenue".into()), true))
        );
        assert_eq!(asked_order("the cheapest parts, lowest first"), Some((OrderKey::Figure("parts".into()), false)));
        assert_eq!(asked_order("How many orders were placed in 1996?"), None);
        assert_eq!(asked_order("orders by channel"), None);
    }

    #[test]
    fn a_query_without_the_asked_order_gets_it() {
        let q = "How many of the orders placed in 2025 are in each status? Show the status and the number, ordered by status.";
        let sql = "SELECT status, COUNT(*) AS order_count FROM orders GROUP BY status";
        assert_eq!(missing_order(sql, q).unwrap(), format!("{sql} ORDER BY status ASC"));
        let q = "How many orders were placed in each month of 2024? Show the month number and the number of orders, in month order.";
        let sql = "SELECT EXTRACT(MONTH FROM order_date) AS month_number, COUNT(*) AS orders FROM orders GROUP BY 1";
        assert_eq!(missing_order(sql, q).unwrap(), format!("{sql} ORDER BY month_number ASC"));
        // A word of the expression, when no name says it.
        let sql = "SELECT EXTRACT(MONTH FROM order_date), COUNT(*) FROM orders GROUP BY 1";
        assert!(missing_order(sql, q).unwrap().ends_with("ORDER BY EXTRACT(MONTH FROM order_date) ASC"));
        // "highest first": the named figure, else the last one; before a LIMIT.
        let q = "Which 5 products earned the most revenue? Show the name and the revenue, highest first.";
        let sql = "SELECT name, sum(price) AS revenue FROM products GROUP BY name LIMIT 5";
        assert_eq!(
            missing_order(sql, q).unwrap(),
            "SELECT name, sum(price) AS revenue FROM products GROUP BY name ORDER BY revenue DESC LIMIT 5"
        );
        let sql = "SELECT name, sum(price) AS total FROM products GROUP BY name";
        assert!(missing_order(sql, q).unwrap().ends_with("ORDER BY total DESC"));
        let q = "How many orders are there per priority? Show the priority and the count, ordered by priority.";
        let sql = "SELECT o_orderpriority, count(*) AS n FROM orders GROUP BY o_orderpriority";
        assert_eq!(missing_order(sql, q).unwrap(), format!("{sql} ORDER BY o_orderpriority ASC"));
        let q = "List the nations in the EUROPE region in alphabetical order.";
        let sql = "SELECT n_name FROM nation JOIN region ON n_regionkey = r_regionkey WHERE r_name = 'EUROPE'";
        assert!(missing_order(sql, q).unwrap().ends_with("ORDER BY n_name ASC"));
    }

    #[test]
    fn an_order_already_there_or_not_found_is_left_alone() {
        let q = "Show the status and the number, ordered by status.";
        assert_eq!(missing_order("SELECT status, count(*) FROM orders GROUP BY status ORDER BY 2", q), None);
        // No output, or two, fit the word.
        assert_eq!(missing_order("SELECT channel, count(*) FROM orders GROUP BY channel", q), None);
        let two = "SELECT status, status AS order_status FROM orders";
        assert_eq!(missing_order(two, q), None);
        // Not one plain SELECT.
        assert_eq!(missing_order("SELECT status FROM a UNION SELECT status FROM b", q), None);
        assert_eq!(missing_order("SELECT * FROM orders", q), None);
        // No order asked.
        assert_eq!(missing_order("SELECT status FROM orders", "How many orders have each status?"), None);
    }
}

#[cfg(test)]
mod threshold_tests {
    use super::*;

    #[test]
    fn a_question_reads_as_the_comparison_of_a_figure() {
        let asked = |q: &str| asked_threshold(q).map(|(c, o, n)| format!("{c} {o} {n}"));
        let cases = [
            ("Which brands have an average list price above 155 euros?", Some("avg( > 155")),
            ("Which nations' suppliers have an average account balance above 4,700?", Some("avg( > 4700")),
            ("customers whose total quantity is more than 300", Some("sum( > 300")),
            ("segments with a mean balance of at least 2.5", Some("avg( >= 2.5")),
            ("categories with a total revenue below 1,000,000", Some("sum( < 1000000")),
            // The number belongs to the rows, or no figure is named.
            ("What is the average price of products above 100 per category?", None),
            ("What is the average supply cost over all suppliers?", None),
            ("How many customers have placed more than 20 orders?", None),
            ("Which market segments have an average balance above the average of all customers?", None),
        ];
        for (q, want) in cases {
            assert_eq!(asked(q).as_deref(), want, "{q}");
        }
    }

    #[test]
    fn a_grouped_query_without_the_comparison_gets_it() {
        let q = "Which brands have an average list price above 155 euros? Show the brand and its average price.";
        let sql = "SELECT brand, AVG(price) AS avg_price FROM products GROUP BY brand ORDER BY brand";
        assert_eq!(
            missing_threshold(sql, q).unwrap(),
            "SELECT brand, AVG(price) AS avg_price FROM products GROUP BY brand HAVING AVG(price) > 155 ORDER BY brand"
        );
        // The number compared with each row's price instead: moved to the groups.
        let sql = "SELECT brand, AVG(p.price) FROM products AS p WHERE p.price > 155 AND p.stock > 0 GROUP BY brand";
        assert_eq!(
            missing_threshold(sql, q).unwrap(),
            "SELECT brand, AVG(p.price) FROM products AS p WHERE p.stock > 0 GROUP BY brand HAVING AVG(p.price) > 155"
        );
        // Already compared with the figure, the number elsewhere, not
        // grouped, or no one output of that aggregate: left alone.
        for sql in [
            "SELECT brand, AVG(price) FROM products GROUP BY brand HAVING AVG(price) > 155",
            "SELECT brand, AVG(price) FROM products WHERE cost > 155 GROUP BY brand",
            "SELECT AVG(price) FROM products",
            "SELECT brand, count(*) FROM products GROUP BY brand",
            "SELECT brand, AVG(price), AVG(cost) FROM products GROUP BY brand",
        ] {
            assert_eq!(missing_threshold(sql, q), None, "{sql}");
        }
    }
}
