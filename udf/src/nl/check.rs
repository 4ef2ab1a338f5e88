//! Extraction and checking of generated SQL.
//!
//! A model's answer is parsed with DataFusion's parser: exactly one
//! statement, and it must be a query. The query is planned under read-only
//! options (no DDL, DML or statements), and the plan may read only the lake
//! tables the caller may read: no file-reading or generating table
//! functions, no `system` or `information_schema` tables unless allowed, no
//! nested `nl_*`. A condition for `nl_filter` must be one expression over
//! the columns in scope, without subqueries.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::execution::SessionState;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{LogicalPlan, TableScan};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, ObjectName, Query, SetExpr, Statement, TableFactor, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::Token;

/// Schemas holding catalog metadata rather than lake data.
const CATALOG_SCHEMAS: &[&str] = &["system", "information_schema"];

/// Why generated SQL was not accepted. The text goes back to the model for
/// repair and, after the last attempt, to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not SQL, or not exactly one statement of the kind asked for.
    Parse(String),
    /// Valid SQL that does not plan (unknown column, wrong types, ...).
    Plan(String),
    /// SQL that plans but is not allowed (writes, files, other tables, ...).
    Policy(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Parse(m) => write!(f, "syntax error: {m}"),
            Problem::Plan(m) => write!(f, "cannot be planned: {m}"),
            Problem::Policy(m) => write!(f, "refused: {m}"),
        }
    }
}

/// The tables generated SQL may read.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Lake tables by name, with the provider each name resolves to.
    pub tables: Vec<(String, Arc<dyn TableProvider>)>,
    /// Whether `system` and `information_schema` tables may be read.
    pub system: bool,
}

/// A query that passed every check.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The query as it will run (rendered from the parsed statement).
    pub sql: String,
    /// The parsed query.
    pub query: Box<Query>,
    /// The lake tables it reads, sorted.
    pub tables: Vec<String>,
}

/// The SQL part of a model's answer: the first fenced block if there is
/// one, else the text from the first line that starts a query.
pub fn extract(answer: &str) -> String {
    if let Some(start) = answer.find("```") {
        let after = &answer[start + 3..];
        let body = after.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
        let body = match after.split_once('\n') {
            Some((tag, _)) if tag.trim().chars().all(|c| c.is_ascii_alphanumeric()) => body,
            _ => after,
        };
        let end = body.find("```").unwrap_or(body.len());
        return body[..end].trim().to_string();
    }
    let lines: Vec<&str> = answer.lines().collect();
    let first = lines.iter().position(|l| {
        let w = l.trim_start().split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        w == "SELECT" || w == "WITH"
    });
    match first {
        Some(i) => lines[i..].join("\n").trim().to_string(),
        None => answer.trim().to_string(),
    }
}

fn parse_error(e: impl fmt::Display) -> Problem {
    Problem::Parse(e.to_string().replace("SQL error: ParserError(\"", "").replace("\")", ""))
}

/// Exactly one statement: text after it must be empty, or prose that is no
/// statement (a model's explanation); a second statement is refused.
pub fn parse_one(text: &str) -> Result<DFStatement, Problem> {
    let dialect = GenericDialect {};
    let mut parser = DFParserBuilder::new(text).with_dialect(&dialect).build().map_err(parse_error)?;
    if parser.parser.peek_token().token == Token::EOF {
        return Err(Problem::Parse("the answer holds no SQL statement".into()));
    }
    let statement = parser.parse_statement().map_err(parse_error)?;
    while parser.parser.consume_token(&Token::SemiColon) {}
    if parser.parser.peek_token().token != Token::EOF {
        let rest = parser.parser.peek_token().span.start;
        if parser.parse_statement().is_ok() {
            return Err(Problem::Policy(
                "the answer holds more than one statement; exactly one statement (a SELECT) is allowed".into(),
            ));
        }
        return Err(Problem::Parse(format!(
            "unexpected text after the statement at line {}, column {}",
            rest.line, rest.column
        )));
    }
    Ok(statement)
}

/// Why an AST is refused before planning, if it is.
fn ast_refusal<V: Visit>(node: &V, system: bool) -> Option<String> {
    struct Refuse {
        system: bool,
        why: Option<String>,
    }
    impl Visitor for Refuse {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            let why = match factor {
                TableFactor::Table { name, args: Some(_), .. } => {
                    Some(format!("table function {name} is not allowed: generated SQL reads only lake tables"))
                }
                TableFactor::Table { name, .. } => refused_name(name, self.system),
                TableFactor::Function { name, .. } => {
                    Some(format!("table function {name} is not allowed: generated SQL reads only lake tables"))
                }
                TableFactor::TableFunction { .. } => Some("TABLE(...) functions are not allowed".into()),
                _ => None,
            };
            match why {
                Some(w) => {
                    self.why = Some(w);
                    ControlFlow::Break(())
                }
                None => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_expr(&mut self, expr: &SqlExpr) -> ControlFlow<()> {
            if let SqlExpr::Function(f) = expr {
                let name =
                    f.name.0.last().map(|p| p.to_string().trim_matches('"').to_ascii_lowercase()).unwrap_or_default();
                if name.starts_with("nl_") {
                    self.why = Some(format!("nested {name} calls are not allowed in generated SQL"));
                    return ControlFlow::Break(());
                }
                if name.starts_with("llm_") {
                    self.why = Some(format!(
                        "model functions ({name}) are not allowed in generated SQL: one question must not become a model request per row"
                    ));
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if writes(&query.body) {
                self.why = Some("only read-only SELECT queries are allowed; the query hides a write".into());
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = Refuse { system, why: None };
    let _ = node.visit(&mut v);
    v.why
}

fn refused_name(name: &ObjectName, system: bool) -> Option<String> {
    let parts: Vec<String> = name.0.iter().map(|p| p.to_string().trim_matches('"').to_ascii_lowercase()).collect();
    if parts.last().is_some_and(|t| t.starts_with("nl_")) {
        return Some(format!("nested {name} calls are not allowed in generated SQL"));
    }
    if !system && parts.iter().rev().skip(1).any(|p| CATALOG_SCHEMAS.contains(&p.as_str())) {
        return Some(format!("{name} is a system catalog table; generated SQL reads only lake tables"));
    }
    None
}

/// Whether a query body writes (a data-modifying CTE or set operand).
fn writes(body: &SetExpr) -> bool {
    match body {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => true,
        SetExpr::SetOperation { left, right, .. } => writes(left) || writes(right),
        _ => false,
    }
}

/// Why a statement that is not a query is refused.
fn statement_refusal(statement: &Statement) -> String {
    let kind = statement.to_string().split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    let why = match statement {
        Statement::Set(_) => "it changes session settings",
        Statement::StartTransaction { .. } | Statement::Commit { .. } | Statement::Rollback { .. } => {
            "it controls a transaction"
        }
        Statement::Prepare { .. } | Statement::Execute { .. } | Statement::Deallocate { .. } => {
            "prepared statements are not allowed"
        }
        Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ExplainTable { .. } => "it reads system metadata",
        Statement::Explain { .. } => "EXPLAIN is not a query",
        _ => "it creates, changes or deletes data",
    };
    format!("only a read-only SELECT query is allowed, not {kind}: {why}")
}

fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

fn plan_error(e: datafusion::error::DataFusionError) -> Problem {
    let text = e.strip_backtrace();
    if text.contains("DDL not supported")
        || text.contains("DML not supported")
        || text.contains("Statement not supported")
    {
        Problem::Policy(
            "only read-only SELECT queries are allowed; the statement creates, changes or deletes data".into(),
        )
    } else {
        // The planner's own suggestions list every field of the scope; the
        // repair hint names the right ones instead.
        let text = text.replace("Error during planning: ", "").replace("Schema error: ", "");
        let cut = [" Did you mean", "\nValid fields", " Valid fields"].iter().filter_map(|m| text.find(m)).min();
        Problem::Plan(match cut {
            Some(at) => text[..at].trim_end().to_string(),
            None => text,
        })
    }
}

/// The lake tables a plan reads, or why it may not read them.
fn plan_tables(plan: &LogicalPlan, policy: &Policy) -> Result<Vec<String>, Problem> {
    let mut tables = Vec::new();
    let mut refusal = None;
    let _ = plan.apply_with_subqueries(|node| {
        let why = match node {
            LogicalPlan::TableScan(TableScan { table_name, source, .. }) => {
                let schema = table_name.schema().map(str::to_ascii_lowercase);
                if schema.as_deref().is_some_and(|s| CATALOG_SCHEMAS.contains(&s)) {
                    (!policy.system).then(|| {
                        format!("{table_name} is a system catalog table; generated SQL reads only lake tables")
                    })
                } else {
                    let provider = source_as_provider(source).ok();
                    let allowed = policy.tables.iter().find(|(name, p)| {
                        name == table_name.table()
                            && provider
                                .as_ref()
                                .is_some_and(|q| Arc::as_ptr(q) as *const () == Arc::as_ptr(p) as *const ())
                    });
                    match allowed {
                        Some((name, _)) => {
                            tables.push(name.clone());
                            None
                        }
                        None => Some(format!("{table_name} is not a table this query may read")),
                    }
                }
            }
            LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Copy(_) | LogicalPlan::Statement(_) => {
                Some("only read-only SELECT queries are allowed".into())
            }
            LogicalPlan::DescribeTable(_) | LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => {
                Some("only SELECT queries are allowed".into())
            }
            _ => None,
        };
        match why {
            Some(w) => {
                refusal = Some(w);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    });
    if let Some(why) = refusal {
        return Err(Problem::Policy(why));
    }
    tables.sort();
    tables.dedup();
    Ok(tables)
}

/// Checks a whole query (for `nl_query` and `nl_sql`).
pub async fn check_query(state: &SessionState, text: &str, policy: &Policy) -> Result<Checked, Problem> {
    let statement = parse_one(text)?;
    let query = match &statement {
        DFStatement::Statement(s) => match s.as_ref() {
            Statement::Query(q) => q.clone(),
            other => return Err(Problem::Policy(statement_refusal(other))),
        },
        DFStatement::CopyTo(_) => {
            return Err(Problem::Policy("only a read-only SELECT query is allowed, not COPY: it writes files".into()));
        }
        DFStatement::CreateExternalTable(_) => {
            return Err(Problem::Policy(
                "only a read-only SELECT query is allowed, not CREATE EXTERNAL TABLE: it changes the catalog".into(),
            ));
        }
        DFStatement::Reset(_) => {
            return Err(Problem::Policy(
                "only a read-only SELECT query is allowed, not RESET: it changes session settings".into(),
            ));
        }
        DFStatement::Explain(_) => {
            return Err(Problem::Policy("only a read-only SELECT query is allowed, not EXPLAIN".into()));
        }
    };
    if let Some(why) = ast_refusal(&*query, policy.system) {
        return Err(Problem::Policy(why));
    }
    let plan = state.statement_to_plan(statement).await.map_err(plan_error)?;
    read_only().verify_plan(&plan).map_err(plan_error)?;
    let tables = plan_tables(&plan, policy)?;
    Ok(Checked { sql: query.to_string(), query, tables })
}

/// The columns a `FROM` clause puts in scope, and the query text to plan
/// conditions over it.
#[derive(Debug, Clone)]
pub struct Scope {
    /// `[WITH ...] SELECT * FROM ...` for the clause.
    pub select_all: String,
}

/// Parses a condition: one expression (an optional leading `WHERE`), or
/// the WHERE condition of a query `SELECT * FROM ... WHERE <condition>`.
pub fn parse_condition(text: &str) -> Result<SqlExpr, Problem> {
    let dialect = GenericDialect {};
    let mut parser = DFParserBuilder::new(text).with_dialect(&dialect).build().map_err(parse_error)?;
    let first = parser.parser.peek_token().token;
    if let Token::Word(w) = &first {
        if w.keyword == Keyword::WHERE {
            parser.parser.next_token();
        } else if matches!(w.keyword, Keyword::SELECT | Keyword::WITH) {
            return condition_of_query(text);
        }
    }
    if first == Token::EOF {
        return Err(Problem::Parse("the answer holds no condition".into()));
    }
    let expr = parser.parse_expr().map_err(parse_error)?.expr;
    while parser.parser.consume_token(&Token::SemiColon) {}
    if parser.parser.peek_token().token != Token::EOF {
        return Err(Problem::Parse(format!(
            "the condition must be one expression; unexpected {} after it",
            parser.parser.peek_token().token
        )));
    }
    Ok(expr)
}

/// The WHERE condition of a one-SELECT query.
fn condition_of_query(text: &str) -> Result<SqlExpr, Problem> {
    let DFStatement::Statement(statement) = parse_one(text)? else {
        return Err(Problem::Parse("expected a condition".into()));
    };
    let Statement::Query(query) = *statement else {
        return Err(Problem::Policy("expected a condition".into()));
    };
    match *query.body {
        SetExpr::Select(select) => select.selection.ok_or_else(|| {
            Problem::Parse("the query has no WHERE clause: write `SELECT * FROM ... WHERE <condition>`".into())
        }),
        _ => Err(Problem::Parse("expected `SELECT * FROM ... WHERE <condition>`".into())),
    }
}

/// Checks a condition for `nl_filter` over `scope`; returns it parsed, in parentheses.
pub async fn check_condition(
    state: &SessionState,
    scope: &Scope,
    text: &str,
    policy: &Policy,
) -> Result<SqlExpr, Problem> {
    let expr = parse_condition(text)?;
    let mut subquery = false;
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(&expr, |e| {
        if matches!(e, SqlExpr::Subquery(_) | SqlExpr::Exists { .. } | SqlExpr::InSubquery { .. }) {
            subquery = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if subquery {
        return Err(Problem::Policy("a condition may not contain subqueries".into()));
    }
    if let Some(why) = ast_refusal(&expr, policy.system) {
        return Err(Problem::Policy(why));
    }
    let planned = format!("{} WHERE ({expr})", scope.select_all);
    let statement = parse_one(&planned)?;
    let plan = state.statement_to_plan(statement).await.map_err(plan_error)?;
    read_only().verify_plan(&plan).map_err(plan_error)?;
    Ok(SqlExpr::Nested(Box::new(expr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_prefers_the_fenced_block() {
        assert_eq!(extract("Here:\n```sql\nSELECT 1\n```\nDone."), "SELECT 1");
        assert_eq!(extract("```\nSELECT 2;\n```"), "SELECT 2;");
        assert_eq!(extract("The query is:\nSELECT a\nFROM t"), "SELECT a\nFROM t");
    }

    #[test]
    fn one_statement_only() {
        assert!(parse_one("SELECT 1").is_ok());
        assert!(parse_one("SELECT 1;").is_ok());
        assert!(matches!(parse_one("SELECT 1; DROP TABLE t"), Err(Problem::Policy(_))));
        assert!(matches!(parse_one("SELECT 1; SELECT 2"), Err(Problem::Policy(_))));
        assert!(matches!(parse_one("SELECT 1\nThis returns one."), Err(Problem::Parse(_))));
        assert!(matches!(parse_one(""), Err(Problem::Parse(_))));
    }
}
