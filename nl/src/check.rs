//! Extraction and checking of generated SQL.
//!
//! A model's answer is parsed with DataFusion's parser: exactly one
//! statement, and it must be a query. The query is planned under read-only
//! options (no DDL, DML or statements), and the plan may read only the lake
//! tables the caller may read: no file-reading or generating table
//! functions, no `system` or `information_schema` tables unless allowed, no
//! nested `nl_*`. A condition for `nl_filter` must be one expression over
//! the columns in scope, without subqueries.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{LogicalPlan, TableScan};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Ident, ObjectName, ObjectNamePart, Query, Select, SelectItem, SelectItemQualifiedWildcardKind,
    SetExpr, Statement, TableAlias, TableFactor, Visit, VisitMut, Visitor, VisitorMut,
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
    Plan(Unplanned),
    /// SQL that plans but is not allowed (writes, files, other tables, ...).
    Policy(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Parse(m) => write!(f, "syntax error: {m}"),
            Problem::Plan(u) => write!(f, "cannot be planned: {}", u.message),
            Problem::Policy(m) => write!(f, "refused: {m}"),
        }
    }
}

/// Why SQL did not plan: the planner's words and, where it can be told, the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplanned {
    /// The planner's message, without its list of every valid field.
    pub message: String,
    /// What it objected to.
    pub cause: Cause,
}

/// What the planner objected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A column the scope does not have, lower case (`qualifier` is the
    /// table it was written with).
    MissingColumn {
        /// The table part, if any.
        qualifier: Option<String>,
        /// The column.
        name: String,
    },
    /// A table the catalog does not have, lower case, without schema.
    MissingTable(String),
    /// A selected column that is neither grouped nor aggregated.
    NotGrouped(String),
    /// A date compared with a number or text.
    DateMismatch,
    /// A function the engine does not have, lower case (`year`).
    UnknownFunction(String),
    /// Anything else.
    Other,
}

impl Problem {
    /// A planning problem known by its message only (DataFusion reports a
    /// missing table, an ungrouped column and type mismatches in words).
    pub fn plan(message: impl Into<String>) -> Self {
        let message = message.into();
        let cause = if let Some((qualifier, name)) = missing_column(&message) {
            Cause::MissingColumn { qualifier, name }
        } else if let Some(column) = missing_group_by(&message) {
            Cause::NotGrouped(column)
        } else if let Some(table) = missing_table(&message) {
            Cause::MissingTable(table)
        } else if let Some(function) = unknown_function(&message) {
            Cause::UnknownFunction(function)
        } else if message.contains("Date32") {
            Cause::DateMismatch
        } else {
            Cause::Other
        };
        Problem::Plan(Unplanned { message, cause })
    }
}

/// The column a planning message says does not exist: `(qualifier, name)`.
fn missing_column(message: &str) -> Option<(Option<String>, String)> {
    let at = message.find("No field named ")?;
    let name: String = message[at + "No field named ".len()..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '"'))
        .collect();
    let name = name.trim_end_matches('.').replace('"', "").to_ascii_lowercase();
    match name.rsplit_once('.') {
        Some((q, c)) => Some((Some(q.rsplit('.').next().unwrap_or(q).to_string()), c.to_string())),
        None => Some((None, name)),
    }
}

/// The table a planning message says does not exist.
fn missing_table(message: &str) -> Option<String> {
    let at = message.find("table '")?;
    let rest = &message[at + "table '".len()..];
    let name = rest.split('\'').next()?;
    Some(name.rsplit('.').next().unwrap_or(name).to_ascii_lowercase())
}

/// The function a planning message says does not exist.
fn unknown_function(message: &str) -> Option<String> {
    let at = message.find("Invalid function '")?;
    let name = message[at + "Invalid function '".len()..].split('\'').next()?;
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// The column a GROUP BY message says must be grouped.
fn missing_group_by(message: &str) -> Option<String> {
    let at = message.find("must appear in the GROUP BY clause")?;
    let head = &message[..at];
    let start = head.rfind("column \"")? + "column \"".len();
    let name = head[start..].trim_end().trim_end_matches('"');
    (!name.is_empty()).then(|| name.to_string())
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

/// The SQL part of a model's answer: the fenced block if there is one,
/// else the text from the first line that starts a query. Several
/// fenced blocks are all of the answer, one statement each: they come back
/// separated by `;`, so that more than one statement is refused as such
/// rather than the first one run alone.
pub fn extract(answer: &str) -> String {
    let fenced = answer.contains("```");
    let mut blocks: Vec<&str> = Vec::new();
    let mut rest = answer;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body = match after.split_once('\n') {
            Some((tag, body)) if tag.trim().chars().all(|c| c.is_ascii_alphanumeric()) => body,
            _ => after,
        };
        let end = body.find("```");
        let block = body[..end.unwrap_or(body.len())].trim();
        if !block.is_empty() {
            blocks.push(block);
        }
        match end {
            Some(end) => rest = &body[end + 3..],
            None => break,
        }
    }
    if fenced {
        return blocks.join(";\n");
    }
    let lines: Vec<&str> = answer.lines().collect();
    let first = lines.iter().position(|l| {
        let w = l.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
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
                TableFactor::Table { name, args: Some(_), .. } | TableFactor::Function { name, .. } => {
                    Some(called_refusal(name).unwrap_or_else(|| {
                        format!("table function {name} is not allowed: generated SQL reads only lake tables")
                    }))
                }
                TableFactor::Table { name, .. } => refused_name(name, self.system),
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
            if let SqlExpr::Function(f) = expr
                && let Some(why) = called_refusal(&f.name)
            {
                self.why = Some(why);
                return ControlFlow::Break(());
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

/// Why a call of the function (scalar, aggregate or table function)
/// `name` is refused whatever its arguments: `nl_*` would call the compiler
/// again, `llm_*` the model once per row.
fn called_refusal(name: &ObjectName) -> Option<String> {
    let name = name.0.last().map(|p| p.to_string().trim_matches('"').to_ascii_lowercase()).unwrap_or_default();
    if name.starts_with("nl_") {
        Some(format!("nested {name} calls are not allowed in generated SQL"))
    } else if name.starts_with("llm_") {
        Some(format!(
            "model functions ({name}) are not allowed in generated SQL: one question must not become a model request per row"
        ))
    } else {
        None
    }
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

/// Renames the relations of a query whose names hold a dot: table aliases
/// and CTEs such as `"system.model_calls"`, wherever the query uses them
/// (`a_b`, or `a_b_2`, ... if that is taken). Plans travel to the executors
/// encoded, and DataFusion's encoding writes a column's relation as one
/// unquoted string that it splits at dots when reading it back
/// (apache/datafusion#24776), so such a query plans but cannot run. The new
/// names change no result. Returns whether anything was renamed.
fn undot_relation_names(query: &mut Query) -> bool {
    fn alias_of(factor: &mut TableFactor) -> Option<&mut TableAlias> {
        match factor {
            TableFactor::Table { alias, .. }
            | TableFactor::Derived { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::NestedJoin { alias, .. }
            | TableFactor::Pivot { alias, .. }
            | TableFactor::Unpivot { alias, .. } => alias.as_mut(),
            _ => None,
        }
    }
    /// The dotted names a query gives its relations; `ctes` also names
    /// tables. (A mutable visit only to share `alias_of`.)
    #[derive(Default)]
    struct Names {
        ctes: BTreeSet<String>,
        aliases: BTreeSet<String>,
    }
    impl VisitorMut for Names {
        type Break = ();
        fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
            for cte in q.with.iter().flat_map(|w| &w.cte_tables) {
                if cte.alias.name.value.contains('.') {
                    self.ctes.insert(cte.alias.name.value.clone());
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            if let Some(alias) = alias_of(factor)
                && alias.name.value.contains('.')
            {
                self.aliases.insert(alias.name.value.clone());
            }
            ControlFlow::Continue(())
        }
    }
    /// Puts the new names in.
    struct Rename {
        ctes: BTreeSet<String>,
        new: HashMap<String, String>,
    }
    impl Rename {
        fn ident(&self, ident: &mut Ident) {
            if ident.quote_style.is_some()
                && let Some(new) = self.new.get(&ident.value)
            {
                ident.value = new.clone();
            }
        }
        fn qualifier(&self, name: &mut ObjectName) {
            for part in &mut name.0 {
                if let ObjectNamePart::Identifier(ident) = part {
                    self.ident(ident);
                }
            }
        }
    }
    impl VisitorMut for Rename {
        type Break = ();
        fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
            for cte in q.with.iter_mut().flat_map(|w| &mut w.cte_tables) {
                self.ident(&mut cte.alias.name);
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { name, .. } = factor
                && let [ObjectNamePart::Identifier(ident)] = name.0.as_mut_slice()
                && self.ctes.contains(&ident.value)
            {
                self.ident(ident);
            }
            if let Some(alias) = alias_of(factor) {
                self.ident(&mut alias.name);
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
            for item in &mut select.projection {
                if let SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) = item {
                    self.qualifier(name);
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
            match expr {
                SqlExpr::CompoundIdentifier(parts) => {
                    let qualifiers = parts.len().saturating_sub(1);
                    parts[..qualifiers].iter_mut().for_each(|p| self.ident(p));
                }
                SqlExpr::QualifiedWildcard(name, _) => self.qualifier(name),
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }

    let mut names = Names::default();
    let _ = VisitMut::visit(query, &mut names);
    if names.ctes.is_empty() && names.aliases.is_empty() {
        return false;
    }
    let text = query.to_string().to_lowercase();
    let mut new: HashMap<String, String> = HashMap::new();
    for old in names.ctes.iter().chain(&names.aliases) {
        let base = old.replace('.', "_");
        let mut name = base.clone();
        let mut n = 2;
        while text.contains(&name.to_lowercase()) || new.values().any(|v| v.eq_ignore_ascii_case(&name)) {
            name = format!("{base}_{n}");
            n += 1;
        }
        new.entry(old.clone()).or_insert(name);
    }
    let _ = VisitMut::visit(query, &mut Rename { ctes: names.ctes, new });
    true
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

/// What a plan would do besides reading, if anything: create or drop
/// (DDL), change data or write files (DML, `COPY`), or run a statement
/// (`SET`, transactions). Decided by the plan's nodes.
pub fn plan_writes(plan: &LogicalPlan) -> Option<&'static str> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        found = match node {
            LogicalPlan::Ddl(_) => Some("it creates or drops tables or views"),
            LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => Some("it changes data or writes files"),
            LogicalPlan::Statement(_) => Some("it is a statement, not a query"),
            _ => None,
        };
        Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

fn refuse_writes(plan: &LogicalPlan) -> Result<(), Problem> {
    match plan_writes(plan) {
        Some(why) => Err(Problem::Policy(format!("only read-only SELECT queries are allowed: {why}"))),
        None => Ok(()),
    }
}

fn plan_error(e: datafusion::error::DataFusionError) -> Problem {
    use datafusion::common::SchemaError;
    let text = e.strip_backtrace();
    // The planner's own suggestions list every field of the scope; the
    // repair hint names the right ones instead.
    let text = text.replace("Error during planning: ", "").replace("Schema error: ", "");
    let cut = [" Did you mean", "\nValid fields", " Valid fields"].iter().filter_map(|m| text.find(m)).min();
    let message = match cut {
        Some(at) => text[..at].trim_end().to_string(),
        None => text,
    };
    // A missing column is told by its type; other causes by their words.
    if let datafusion::error::DataFusionError::SchemaError(schema, _) = e.find_root()
        && let SchemaError::FieldNotFound { field, .. } = schema.as_ref()
    {
        let qualifier = field.relation.as_ref().map(|r| r.table().to_ascii_lowercase());
        let cause = Cause::MissingColumn { qualifier, name: field.name.to_ascii_lowercase() };
        return Problem::Plan(Unplanned { message, cause });
    }
    Problem::plan(message)
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
    let mut statement = parse_one(text)?;
    // EXPLAIN returns a plan, not the data asked for, and EXPLAIN ANALYZE runs
    // what it explains: refused, saying why what it explains is refused too.
    let mut explain = false;
    loop {
        statement = match statement {
            DFStatement::Explain(e) => *e.statement,
            DFStatement::Statement(s) if matches!(*s, Statement::Explain { .. }) => match *s {
                Statement::Explain { statement, .. } => DFStatement::Statement(statement),
                _ => unreachable!("matched as EXPLAIN"),
            },
            other => break statement = other,
        };
        explain = true;
    }
    if !explain {
        return check_statement(state, statement, policy).await;
    }
    Err(Problem::Policy(match check_statement(state, statement, policy).await {
        Err(Problem::Policy(why)) => {
            format!("only a read-only SELECT query is allowed, not EXPLAIN; what it explains is refused too: {why}")
        }
        _ => "only a read-only SELECT query is allowed, not EXPLAIN: it returns a plan, not data".into(),
    }))
}

/// Checks one parsed statement, which must be a read-only query.
async fn check_statement(state: &SessionState, statement: DFStatement, policy: &Policy) -> Result<Checked, Problem> {
    let mut query = match &statement {
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
    let statement = match undot_relation_names(&mut query) {
        true => DFStatement::Statement(Box::new(Statement::Query(query.clone()))),
        false => statement,
    };
    let plan = state.statement_to_plan(statement).await.map_err(plan_error)?;
    refuse_writes(&plan)?;
    let tables = plan_tables(&plan, policy)?;
    physical_check(state, &plan).await?;
    Ok(Checked { sql: query.to_string(), query, tables })
}

/// Optimizes the plan and plans it physically in this process, without
/// running it: type errors that the logical planner lets through (a
/// comparison of incompatible types, say) surface here, where the model can
/// still repair them, instead of failing the distributed job.
async fn physical_check(state: &SessionState, plan: &LogicalPlan) -> Result<(), Problem> {
    use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
    let optimized = state.optimize(plan).map_err(plan_error)?;
    DefaultPhysicalPlanner::default().create_physical_plan(&optimized, state).await.map_err(plan_error)?;
    Ok(())
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

/// Checks a condition for `nl_filter` completing `select_all` (`[WITH ...]
/// SELECT * FROM <the clause it filters>`); returns it parsed, in parentheses.
pub async fn check_condition(
    state: &SessionState,
    select_all: &str,
    text: &str,
    policy: &Policy,
) -> Result<SqlExpr, Problem> {
    let expr = parse_condition(text)?;
    // The specific reasons first: a subquery reading a system table is refused as such.
    if let Some(why) = ast_refusal(&expr, policy.system) {
        return Err(Problem::Policy(why));
    }
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
    let planned = format!("{select_all} WHERE ({expr})");
    let statement = parse_one(&planned)?;
    let plan = state.statement_to_plan(statement).await.map_err(plan_error)?;
    refuse_writes(&plan)?;
    physical_check(state, &plan).await?;
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

    #[test]
    fn planning_messages_name_their_cause() {
        let cause = |m: &str| match Problem::plan(m) {
            Problem::Plan(u) => u.cause,
            _ => unreachable!(),
        };
        assert_eq!(cause("Invalid function 'YEAR'.\nDid you mean 'var'?"), Cause::UnknownFunction("year".into()));
        assert_eq!(
            cause("Schema error: No field named o.name. Valid fields are o.order_id."),
            Cause::MissingColumn { qualifier: Some("o".into()), name: "name".into() }
        );
        assert_eq!(cause("Invalid function ''"), Cause::Other);
    }

    #[test]
    fn several_fenced_blocks_are_several_statements() {
        let text = extract("Here:\n```sql\nSELECT 1\n```\n```sql\nDROP TABLE t\n```");
        assert_eq!(text, "SELECT 1;\nDROP TABLE t");
        assert!(matches!(parse_one(&text), Err(Problem::Policy(_))));
    }

    fn renamed(sql: &str) -> String {
        let Ok(DFStatement::Statement(statement)) = parse_one(sql) else { panic!("{sql}") };
        let Statement::Query(mut query) = *statement else { panic!("{sql}") };
        undot_relation_names(&mut query);
        query.to_string()
    }

    #[test]
    fn dotted_relation_names_are_renamed_everywhere() {
        assert_eq!(
            renamed(
                r#"WITH "a.b" AS (SELECT 1 AS x) SELECT "a.b".x, "t.u".* FROM "a.b" JOIN t AS "t.u" ON "t.u".y = "a.b".x"#
            ),
            r#"WITH "a_b" AS (SELECT 1 AS x) SELECT "a_b".x, "t_u".* FROM "a_b" JOIN t AS "t_u" ON "t_u".y = "a_b".x"#
        );
        // A name already used is not taken; literals and other names stay.
        assert_eq!(
            renamed(r#"SELECT a_b, 'a.b' FROM t AS "a.b" WHERE "a.b".c IN (SELECT c FROM "a.b")"#),
            r#"SELECT a_b, 'a.b' FROM t AS "a_b_2" WHERE "a_b_2".c IN (SELECT c FROM "a.b")"#
        );
        assert_eq!(renamed("SELECT t.a FROM s.t"), "SELECT t.a FROM s.t");
    }
}
