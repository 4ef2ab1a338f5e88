//! Prompting strategies: how a question (and earlier failed attempts) becomes
//! a prompt. The serialized prompt is snapshot-tested
//! (`udf/tests/snapshots/`), so a prompt change is a reviewable diff.

use super::knowledge::{ColumnInfo, Knowledge, TableInfo};
use super::retrieve::Retrieved;
use lakelink_model::model::Prompt;

/// What the compiler is asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A whole SELECT statement (`nl_query`, `nl_sql`).
    Query,
    /// A boolean condition over the columns in scope (`nl_filter`).
    Filter {
        /// The query the condition completes: `[WITH ...] SELECT * FROM ...`.
        select_all: String,
        /// The columns in scope: `(qualifier, column, sql type)`.
        columns: Vec<(String, String, String)>,
    },
}

/// One earlier attempt and why it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// What the model answered (the extracted SQL where there was one).
    pub sql: String,
    /// Why it was refused, with hints naming the right tables and columns.
    pub error: String,
}

/// Everything a strategy may put into a prompt.
#[derive(Debug, Clone, Copy)]
pub struct PromptInput<'a> {
    /// The user's words.
    pub question: &'a str,
    /// What to produce.
    pub target: &'a Target,
    /// The catalog.
    pub knowledge: &'a Knowledge,
    /// What retrieval found.
    pub retrieved: &'a Retrieved,
    /// Earlier attempts of this question, oldest first.
    pub attempts: &'a [Attempt],
}

/// A way to prompt the model.
pub trait Strategy: Send + Sync {
    /// Its name (the `nl_strategy` setting and the trail).
    fn name(&self) -> &'static str;
    /// The prompt for one attempt.
    fn prompt(&self, input: &PromptInput<'_>) -> Prompt;
    /// Whether it retrieves tables (else it shows every table).
    fn retrieves(&self) -> bool;
    /// Whether failed attempts are sent back for repair.
    fn repairs(&self) -> bool;
}

/// The strategy the setting names.
pub fn named(name: &str) -> Box<dyn Strategy> {
    match name {
        "plain" => Box::new(Plain),
        _ => Box::new(Pipeline),
    }
}

const MAX_TOKENS: u32 = 320;

/// The baseline: the whole schema as CREATE TABLE statements and the
/// question, one attempt, no hints.
pub struct Plain;

impl Strategy for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }

    fn prompt(&self, input: &PromptInput<'_>) -> Prompt {
        let mut system = String::from("You write SQL. Answer with one SQL query in a ```sql block.\n\n");
        for t in &input.knowledge.tables {
            system.push_str(&format!("CREATE TABLE {} (\n", t.name));
            let cols: Vec<String> = t.columns.iter().map(|c| format!("  {} {}", c.name, c.sql_type)).collect();
            system.push_str(&cols.join(",\n"));
            system.push_str("\n);\n");
        }
        let user = match input.target {
            Target::Query => format!("Question: {}", input.question),
            Target::Filter { select_all, columns } => {
                format!("{}\nComplete `{select_all} WHERE ...` to keep only: {}", columns_line(columns), input.question)
            }
        };
        Prompt { system, user, max_tokens: MAX_TOKENS, sample: None }
    }

    fn retrieves(&self) -> bool {
        false
    }

    fn repairs(&self) -> bool {
        false
    }
}

fn columns_line(cols: &[(String, String, String)]) -> String {
    let list: Vec<String> =
        cols.iter().map(|(q, c, t)| if q.is_empty() { format!("{c} {t}") } else { format!("{q}.{c} {t}") }).collect();
    format!("Columns: {}", list.join(", "))
}

/// The full pipeline: rules, the retrieved tables with descriptions and
/// values, join keys, accepted examples, value hints, and earlier attempts
/// with their errors.
pub struct Pipeline;

const QUERY_HEAD: &str = "\
You translate a question about a database into one SQL query (Apache DataFusion dialect).
Rules:
- Reply with one SELECT statement in a ```sql block and nothing else.
";

const FILTER_HEAD: &str = "\
You complete a SQL query (Apache DataFusion dialect) with the WHERE condition the user describes.
Rules:
- Reply with the whole query, `SELECT * FROM ... WHERE <condition>`, in a ```sql block and nothing else.
- Put every part of the description into the condition; no GROUP BY, ORDER BY or LIMIT.
";

const RULES: &str = "\
- Use only the tables and columns below. Each column belongs to the table it is listed under: join that table to use it.
- Join tables with the join keys listed.
- Dates are DATE values. A year is `d >= DATE '1995-01-01' AND d < DATE '1996-01-01'`, a month `d >= DATE '1995-03-01' AND d < DATE '1995-04-01'`; a date's year or month is EXTRACT(YEAR FROM d) or EXTRACT(MONTH FROM d) (there is no YEAR() function). Never compare dates with LIKE or strings.
- Text values are case-sensitive: use the listed values exactly.
- Give computed columns a name with AS. Use LIMIT only when the question asks for a number of rows (top 5, the 10 largest); ORDER BY what the question orders by.
";

/// One column of a CREATE TABLE: `  name TYPE,` and a comment with its
/// description and values (`last`: no comma).
fn column_line(c: &ColumnInfo, last: bool) -> String {
    let mut line = format!("  {} {}{}", c.name, c.sql_type, if last { "" } else { "," });
    let mut notes = Vec::new();
    if !c.description.is_empty() {
        notes.push(c.description.clone());
    }
    if !c.values.is_empty() {
        let shown: Vec<String> = c.values.iter().take(25).map(|v| format!("'{}'", v.replace('\'', "''"))).collect();
        let more = if c.values.len() > 25 { ", ..." } else { "" };
        notes.push(format!("values: {}{more}", shown.join(", ")));
    }
    if !notes.is_empty() {
        line.push_str(" -- ");
        line.push_str(&notes.join("; "));
    }
    line
}

fn table_block(t: &TableInfo) -> String {
    let mut block = String::new();
    if !t.description.is_empty() {
        block.push_str(&format!("-- {}\n", t.description));
    }
    block.push_str(&format!("CREATE TABLE {} (\n", t.name));
    let n = t.columns.len();
    let cols: Vec<String> = t.columns.iter().enumerate().map(|(i, c)| column_line(c, i + 1 == n)).collect();
    block.push_str(&cols.join("\n"));
    block.push_str("\n);\n");
    block
}

impl Strategy for Pipeline {
    fn name(&self) -> &'static str {
        "pipeline"
    }

    fn prompt(&self, input: &PromptInput<'_>) -> Prompt {
        let k = input.knowledge;
        let r = input.retrieved;
        let mut system = String::from(match input.target {
            Target::Query => QUERY_HEAD,
            Target::Filter { .. } => FILTER_HEAD,
        });
        system.push_str(RULES);
        match input.target {
            Target::Query => {
                // Tables in catalog order, so questions over the same tables
                // share a prompt prefix the runtime keeps cached.
                system.push_str("\nTables:\n");
                for t in k.tables.iter().filter(|t| r.tables.contains(&t.name)) {
                    system.push_str(&table_block(t));
                }
                let joins: Vec<String> = k
                    .joins
                    .iter()
                    .filter(|j| r.tables.contains(&j.left) && r.tables.contains(&j.right))
                    .map(|j| format!("- {}", j.condition()))
                    .collect();
                if !joins.is_empty() {
                    system.push_str(&format!("\nJoin keys:\n{}\n", joins.join("\n")));
                }
            }
            Target::Filter { columns: cols, .. } => {
                system.push_str("\nColumns:\n");
                for (q, c, t) in cols {
                    // The qualifier's table first; an alias finds the column by name.
                    let info = k
                        .tables
                        .iter()
                        .filter(|ti| &ti.name == q)
                        .chain(&k.tables)
                        .flat_map(|ti| &ti.columns)
                        .find(|ci| &ci.name == c);
                    let name = if q.is_empty() { c.clone() } else { format!("{q}.{c}") };
                    let line = match info {
                        Some(ci) => column_line(&ColumnInfo { name, sql_type: t.clone(), ..ci.clone() }, true),
                        None => format!("  {name} {t}"),
                    };
                    system.push_str(&line);
                    system.push('\n');
                }
            }
        }
        if !r.examples.is_empty() {
            system.push_str("\nExamples:\n");
            for &i in &r.examples {
                if let Some(e) = k.examples.get(i) {
                    system.push_str(&format!("Question: {}\n```sql\n{}\n```\n", e.question, e.sql));
                }
            }
        }
        let mut user = match input.target {
            Target::Query => format!("Question: {}\n", input.question),
            Target::Filter { select_all, .. } => {
                format!("Complete `{select_all} WHERE ...` to keep only: {}\n", input.question)
            }
        };
        if !r.hints.is_empty() {
            let hints: Vec<String> = r
                .hints
                .iter()
                .map(|h| format!("{}.{} = '{}'", h.table, h.column, h.value.replace('\'', "''")))
                .collect();
            user.push_str(&format!("Values named in the question: {}\n", hints.join(", ")));
        }
        for a in input.attempts {
            user.push_str(&format!("\nThis answer was wrong:\n```sql\n{}\n```\nError: {}\n", a.sql, a.error));
        }
        if !input.attempts.is_empty() {
            user.push_str("Write a corrected answer.\n");
        }
        Prompt { system, user, max_tokens: MAX_TOKENS, sample: None }
    }

    fn retrieves(&self) -> bool {
        true
    }

    fn repairs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::knowledge::{Example, Join, Knowledge};
    use super::super::retrieve::ValueHint;
    use super::*;

    fn knowledge() -> Knowledge {
        let column = |name: &str, sql_type: &str, description: &str, values: &[&str]| ColumnInfo {
            name: name.into(),
            sql_type: sql_type.into(),
            description: description.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        Knowledge {
            tables: vec![
                TableInfo {
                    name: "customer".into(),
                    description: "customers who place orders".into(),
                    columns: vec![
                        column("c_custkey", "BIGINT", "customer id", &[]),
                        column("c_mktsegment", "VARCHAR", "market segment", &["AUTOMOBILE", "BUILDING"]),
                    ],
                },
                TableInfo {
                    name: "orders".into(),
                    description: String::new(),
                    columns: vec![
                        column("o_custkey", "BIGINT", "", &[]),
                        column("o_orderdate", "DATE", "date the order was placed", &[]),
                    ],
                },
            ],
            joins: vec![Join {
                left: "orders".into(),
                left_columns: vec!["o_custkey".into()],
                right: "customer".into(),
                right_columns: vec!["c_custkey".into()],
            }],
            examples: vec![Example {
                question: "How many customers are there?".into(),
                sql: "SELECT count(*) FROM customer".into(),
            }],
            version: "v".into(),
        }
    }

    /// Compares with `nl/tests/snapshots/<name>`; `UPDATE_SNAPSHOTS=1` rewrites it.
    fn snapshot(name: &str, prompt: &Prompt) {
        let text =
            format!("=== system\n{}\n=== user\n{}\n=== max_tokens {}\n", prompt.system, prompt.user, prompt.max_tokens);
        // The directory cargo runs the test from, so a binary built in another
        // checkout sharing the target folder reads this checkout's snapshots.
        let crate_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
        let path = std::path::Path::new(&crate_dir).join("tests/snapshots").join(name);
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let expected =
            std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} missing: UPDATE_SNAPSHOTS=1", path.display()));
        assert_eq!(text, expected, "the prompt changed: review the diff, then UPDATE_SNAPSHOTS=1");
    }

    #[test]
    fn pipeline_prompt_snapshot() {
        let k = knowledge();
        let retrieved = Retrieved {
            tables: vec!["orders".into(), "customer".into()],
            hints: vec![ValueHint {
                table: "customer".into(),
                column: "c_mktsegment".into(),
                value: "BUILDING".into(),
            }],
            examples: vec![0],
        };
        let attempts = vec![Attempt {
            sql: "SELECT count(*) FROM orders WHERE c_mktsegment = 'BUILDING'".into(),
            error: "cannot be planned: No field named c_mktsegment.".into(),
        }];
        let input = PromptInput {
            question: "How many orders did building customers place in 1995?",
            target: &Target::Query,
            knowledge: &k,
            retrieved: &retrieved,
            attempts: &attempts,
        };
        snapshot("nl_pipeline_query.txt", &Pipeline.prompt(&input));
        let filter = Target::Filter {
            select_all: "SELECT * FROM orders".into(),
            columns: vec![("orders".into(), "o_orderdate".into(), "DATE".into())],
        };
        let input = PromptInput { target: &filter, attempts: &[], question: "orders from 1995", ..input };
        snapshot("nl_pipeline_filter.txt", &Pipeline.prompt(&input));
        snapshot("nl_plain_query.txt", &Plain.prompt(&PromptInput { target: &Target::Query, ..input }));
    }
}
