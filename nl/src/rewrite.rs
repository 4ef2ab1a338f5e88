//! `nl_*` calls in a statement are replaced, before planning, by what they
//! compile to:
//!
//! * `FROM nl_query('question')` becomes the derived table
//!   `(<checked query>) AS nl_query` (or the alias given);
//! * `WHERE ... nl_filter('condition') ...` becomes the checked condition
//!   over the columns of that SELECT's FROM clause, in parentheses, so the
//!   optimizer pushes it into the scan like a hand-written predicate;
//! * `nl_sql('question')` becomes the string of the query `nl_query` would run;
//! * `nl_accept('question', 'sql')` checks the SQL, keeps the pair to be
//!   stored as an accepted example in the lake's metadata folder when the
//!   statement runs, and becomes a message.

use std::collections::VecDeque;
use std::ops::ControlFlow;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Query, Select, SelectItem, SetExpr,
    Statement, TableAlias, TableFactor, Value, ValueWithSpan, Visit, VisitMut, Visitor, VisitorMut,
};

use super::check::Policy;
use super::knowledge::{self, Example, sql_type};
use super::strategy::Target;
use super::{Compiled, NlEnv, NlError, Request, compile};

/// Whether `sql` may call an `nl_*` function (a cheap test before parsing).
pub fn mentions_nl(sql: &str) -> bool {
    sql.to_ascii_lowercase().contains("nl_")
}

/// One call found in the statement, in visiting order.
#[derive(Debug, Clone)]
enum Call {
    Query(String),
    Sql(String),
    Accept(String, String),
    Filter { question: String, scope: String },
}

/// What the calls became, per kind, in the order they were found.
#[derive(Debug, Default)]
struct Replacements {
    queries: VecDeque<Box<Query>>,
    texts: VecDeque<String>,
    conditions: VecDeque<SqlExpr>,
}

fn function_name(name: &datafusion::sql::sqlparser::ast::ObjectName) -> String {
    name.0.last().map(|p| p.to_string().trim_matches('"').to_ascii_lowercase()).unwrap_or_default()
}

/// The string literals a call was given, or why they are not.
fn literal_args(function: &str, args: &[FunctionArg], want: usize) -> Result<Vec<String>> {
    let usage = || -> DataFusionError {
        NlError::Call {
            reason: match want {
                1 => {
                    format!("{function} takes one string literal: the question, such as {function}('orders from 1995')")
                }
                _ => format!("{function} takes two string literals: the question and the SQL"),
            },
        }
        .into()
    };
    if args.len() != want {
        return Err(usage());
    }
    args.iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(ValueWithSpan {
                value: Value::SingleQuotedString(s) | Value::DoubleQuotedString(s),
                ..
            }))) => Ok(s.clone()),
            _ => Err(usage()),
        })
        .collect()
}

fn call_args(f: &datafusion::sql::sqlparser::ast::Function) -> &[FunctionArg] {
    match &f.args {
        FunctionArguments::List(list) => &list.args,
        _ => &[],
    }
}

/// Applies `f` to every `SELECT` of a query's body, outside nested queries.
fn for_each_select_mut(body: &mut SetExpr, f: &mut dyn FnMut(&mut Select)) {
    match body {
        SetExpr::Select(s) => f(s),
        SetExpr::SetOperation { left, right, .. } => {
            for_each_select_mut(left, f);
            for_each_select_mut(right, f);
        }
        _ => {}
    }
}

/// Every `SELECT` of a query's body, outside nested queries.
fn selects(body: &SetExpr) -> Vec<&Select> {
    match body {
        SetExpr::Select(s) => vec![s.as_ref()],
        SetExpr::SetOperation { left, right, .. } => {
            let mut v = selects(left);
            v.extend(selects(right));
            v
        }
        _ => vec![],
    }
}

/// The `nl_filter` conditions of an expression, outside nested queries.
fn filters_in(expr: &SqlExpr) -> Result<Vec<String>> {
    struct Find {
        depth: usize,
        found: Vec<Result<String>>,
    }
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &SqlExpr) -> ControlFlow<()> {
            if self.depth == 0
                && let SqlExpr::Function(f) = e
                && function_name(&f.name) == "nl_filter"
            {
                self.found.push(literal_args("nl_filter", call_args(f), 1).map(|mut a| a.remove(0)));
            }
            ControlFlow::Continue(())
        }
    }
    let mut find = Find { depth: 0, found: vec![] };
    let _ = expr.visit(&mut find);
    find.found.into_iter().collect()
}

fn scope_of(query_with: Option<&datafusion::sql::sqlparser::ast::With>, select: &Select) -> Result<String> {
    if select.from.is_empty() {
        return Err(NlError::Call {
            reason: "nl_filter needs a FROM clause: it filters the rows of its tables".into(),
        }
        .into());
    }
    let from: Vec<String> = select.from.iter().map(|t| t.to_string()).collect();
    Ok(match query_with {
        Some(w) => format!("{w} SELECT * FROM {}", from.join(", ")),
        None => format!("SELECT * FROM {}", from.join(", ")),
    })
}

/// Finds every call, in the order the replacing pass meets them.
fn collect(statement: &Statement) -> Result<Vec<Call>> {
    struct Collect {
        calls: Vec<Call>,
        error: Option<DataFusionError>,
    }
    impl Collect {
        fn push(&mut self, call: Result<Call>) -> ControlFlow<()> {
            match call {
                Ok(c) => {
                    self.calls.push(c);
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    self.error = Some(e);
                    ControlFlow::Break(())
                }
            }
        }
    }
    impl Visitor for Collect {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            for select in selects(&q.body) {
                let Some(selection) = &select.selection else { continue };
                let found = filters_in(selection).and_then(|qs| {
                    if qs.is_empty() {
                        return Ok(vec![]);
                    }
                    let scope = scope_of(q.with.as_ref(), select)?;
                    Ok(qs.into_iter().map(|question| Call::Filter { question, scope: scope.clone() }).collect())
                });
                match found {
                    Ok(calls) => self.calls.extend(calls),
                    Err(e) => {
                        self.error = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { name, args, .. } = factor
                && function_name(name) == "nl_query"
            {
                let args = args.as_ref().map(|a| a.args.as_slice()).unwrap_or(&[]);
                return self.push(literal_args("nl_query", args, 1).map(|mut a| Call::Query(a.remove(0))));
            }
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, e: &SqlExpr) -> ControlFlow<()> {
            if let SqlExpr::Function(f) = e {
                match function_name(&f.name).as_str() {
                    "nl_sql" => {
                        return self.push(literal_args("nl_sql", call_args(f), 1).map(|mut a| Call::Sql(a.remove(0))));
                    }
                    "nl_accept" => {
                        return self.push(
                            literal_args("nl_accept", call_args(f), 2)
                                .map(|a| Call::Accept(a[0].clone(), a[1].clone())),
                        );
                    }
                    _ => {}
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut c = Collect { calls: vec![], error: None };
    let _ = statement.visit(&mut c);
    match c.error {
        Some(e) => Err(e),
        None => Ok(c.calls),
    }
}

/// Puts the replacements in, in the order `collect` found the calls.
fn replace(statement: &mut Statement, replacements: Replacements) {
    /// Replaces the `nl_filter` calls of one condition, outside nested queries.
    struct Filters<'a> {
        depth: usize,
        next: &'a mut VecDeque<SqlExpr>,
    }
    impl VisitorMut for Filters<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &mut SqlExpr) -> ControlFlow<()> {
            if self.depth == 0
                && let SqlExpr::Function(f) = e
                && function_name(&f.name) == "nl_filter"
                && let Some(c) = self.next.pop_front()
            {
                *e = c;
            }
            ControlFlow::Continue(())
        }
    }
    struct Replace(Replacements);
    impl VisitorMut for Replace {
        type Break = ();
        fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
            let next = &mut self.0.conditions;
            for_each_select_mut(&mut q.body, &mut |select: &mut Select| {
                // `SELECT nl_sql('...')` keeps a column named after the function.
                for item in &mut select.projection {
                    if let SelectItem::UnnamedExpr(SqlExpr::Function(f)) = item {
                        let name = function_name(&f.name);
                        if matches!(name.as_str(), "nl_sql" | "nl_accept") {
                            let expr = SqlExpr::Function(f.clone());
                            *item = SelectItem::ExprWithAlias { expr, alias: Ident::new(name) };
                        }
                    }
                }
                if let Some(selection) = &mut select.selection {
                    let _ = selection.visit(&mut Filters { depth: 0, next: &mut *next });
                }
            });
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { name, alias, .. } = factor
                && function_name(name) == "nl_query"
                && let Some(q) = self.0.queries.pop_front()
            {
                let alias = alias.take().or_else(|| {
                    Some(TableAlias { explicit: true, at: None, name: Ident::new("nl_query"), columns: vec![] })
                });
                *factor = TableFactor::Derived { lateral: false, subquery: q, alias, sample: None };
            }
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, e: &mut SqlExpr) -> ControlFlow<()> {
            if let SqlExpr::Function(f) = e
                && matches!(function_name(&f.name).as_str(), "nl_sql" | "nl_accept")
                && let Some(t) = self.0.texts.pop_front()
            {
                *e = SqlExpr::Value(Value::SingleQuotedString(t).into());
            }
            ControlFlow::Continue(())
        }
    }
    let _ = statement.visit(&mut Replace(replacements));
}

/// Columns a scope puts in reach: `(qualifier, column, sql type)`.
async fn scope_columns(state: &SessionState, scope: &str) -> Result<Vec<(String, String, String)>> {
    let statement =
        super::check::parse_one(scope).map_err(|p| DataFusionError::Plan(format!("nl_filter: the FROM clause {p}")))?;
    let plan = state.statement_to_plan(statement).await?;
    Ok(plan
        .schema()
        .iter()
        .map(|(q, f)| (q.map(|q| q.table().to_string()).unwrap_or_default(), f.name().clone(), sql_type(f.data_type())))
        .collect())
}

/// Compiles every `nl_*` call of `statement` and puts the results in;
/// returns what each call compiled to (for EXPLAIN).
pub async fn expand(state: &SessionState, env: &NlEnv, statement: &mut DFStatement) -> Result<Vec<Compiled>> {
    let inner: &mut Statement = match statement {
        DFStatement::Statement(s) => s.as_mut(),
        DFStatement::Explain(e) => return Box::pin(expand(state, env, e.statement.as_mut())).await,
        _ => return Ok(vec![]),
    };
    if let Statement::Explain { statement, .. } = inner {
        let mut wrapped = DFStatement::Statement(statement.clone());
        let compiled = Box::pin(expand(state, env, &mut wrapped)).await?;
        if let DFStatement::Statement(s) = wrapped {
            *statement = s;
        }
        return Ok(compiled);
    }
    let calls = collect(inner)?;
    let mut compiled = Vec::new();
    let mut replacements = Replacements::default();
    for call in calls {
        match call {
            Call::Query(question) => {
                let c = compile(state, env, query_request("nl_query", question)).await?;
                let query = match super::check::parse_one(&c.sql) {
                    Ok(DFStatement::Statement(s)) => match *s {
                        Statement::Query(q) => q,
                        _ => return Err(DataFusionError::Internal("a checked query is not a query".into())),
                    },
                    _ => return Err(DataFusionError::Internal(format!("a checked query no longer parses: {}", c.sql))),
                };
                replacements.queries.push_back(query);
                compiled.push(c);
            }
            Call::Sql(question) => {
                let c = compile(state, env, query_request("nl_sql", question)).await?;
                replacements.texts.push_back(c.sql.clone());
                compiled.push(c);
            }
            Call::Filter { question, scope } => {
                let columns = scope_columns(state, &scope).await?;
                let request = Request {
                    function: "nl_filter".into(),
                    question,
                    target: Target::Filter { select_all: scope, columns },
                };
                let c = compile(state, env, request).await?;
                let condition = super::check::parse_condition(&c.sql)
                    .map_err(|p| DataFusionError::Internal(format!("a checked condition no longer parses: {p}")))?;
                replacements.conditions.push_back(SqlExpr::Nested(Box::new(condition)));
                compiled.push(c);
            }
            Call::Accept(question, sql) => {
                replacements.texts.push_back(accept(state, env, &question, &sql).await?);
            }
        }
    }
    // `SELECT * FROM nl_query('...')` alone runs the generated query itself:
    // a derived table's ORDER BY is not kept by the outer query.
    if is_bare_nl_query(inner)
        && let [query] = replacements.queries.make_contiguous()
    {
        *inner = Statement::Query(query.clone());
        return Ok(compiled);
    }
    replace(inner, replacements);
    leftover(inner)?;
    Ok(compiled)
}

/// Whether a statement is exactly `SELECT * FROM nl_query(...) [AS alias]`.
fn is_bare_nl_query(statement: &Statement) -> bool {
    let Statement::Query(q) = statement else { return false };
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return false;
    }
    let SetExpr::Select(select) = q.body.as_ref() else { return false };
    let plain = select.selection.is_none()
        && select.having.is_none()
        && select.distinct.is_none()
        && matches!(&select.group_by, datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(g, _) if g.is_empty())
        && matches!(select.projection.as_slice(), [SelectItem::Wildcard(_)]);
    plain
        && matches!(select.from.as_slice(), [t] if t.joins.is_empty()
            && matches!(&t.relation, TableFactor::Table { name, args: Some(_), .. } if function_name(name) == "nl_query"))
}

fn query_request(function: &str, question: String) -> Request {
    Request { function: function.into(), question, target: Target::Query }
}

/// An `nl_*` call left after replacing is in a place it cannot be.
fn leftover(statement: &Statement) -> Result<()> {
    let mut found: Option<String> = None;
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(statement, |e: &SqlExpr| {
        if let SqlExpr::Function(f) = e {
            let name = function_name(&f.name);
            if matches!(name.as_str(), "nl_filter" | "nl_query" | "nl_sql" | "nl_accept") {
                found = Some(name);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    match found.as_deref() {
        None => Ok(()),
        Some("nl_filter") => Err(NlError::Call {
            reason: "nl_filter belongs in a WHERE clause (it compiles into a condition over that SELECT's tables)"
                .into(),
        }
        .into()),
        Some("nl_query") => {
            Err(NlError::Call { reason: "nl_query is a table function: SELECT * FROM nl_query('question')".into() }
                .into())
        }
        Some(name) => Err(NlError::Call { reason: format!("{name} cannot be used here") }.into()),
    }
}

/// Checks `sql` and keeps it as the accepted answer to `question`, to be
/// stored when the statement runs ([`crate::commit_accepted`]).
async fn accept(state: &SessionState, env: &NlEnv, question: &str, sql: &str) -> Result<String> {
    let Some(dir) = &env.metadata_dir else {
        return Err(
            NlError::Call { reason: "nl_accept: this lake has no metadata folder to keep examples in".into() }.into()
        );
    };
    let options = lakelink_model::LlmOptions::from_config(state.config().options());
    let tables = knowledge::allowed_tables(state, &options.nl_tables).await?;
    let policy = Policy { tables, system: options.nl_system_tables };
    let checked = super::check::check_query(state, sql, &policy)
        .await
        .map_err(|p| NlError::Refused { reason: format!("nl_accept: the SQL is {p}") })?;
    let example = Example { question: question.trim().to_string(), sql: checked.sql };
    crate::pending_accept(&options.query_id, dir, example);
    Ok(format!("accepted into {}", dir.join(knowledge::EXAMPLES_FILE).display()))
}
