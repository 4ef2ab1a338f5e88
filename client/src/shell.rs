//! The interactive SQL shell and the one-shot modes (`-c`, `-f`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use rustyline::error::ReadlineError;

use crate::connection::Connection;
use crate::error::ClientError;
use crate::output::{Format, write_result};

/// Rows the table format shows in the interactive shell.
const INTERACTIVE_MAX_ROWS: usize = 200;

/// A shell session over one connection.
pub struct Shell {
    connection: Connection,
    format: Format,
    interactive: bool,
}

impl Shell {
    /// A shell printing in `format`; `interactive` adds timings and progress.
    pub fn new(connection: Connection, format: Format, interactive: bool) -> Self {
        Self { connection, format, interactive }
    }

    /// Runs one statement and prints its result.
    pub async fn run_statement(&mut self, sql: &str) -> Result<(), ClientError> {
        use futures::StreamExt;
        let started = Instant::now();
        let progress = if self.interactive { Progress::start(started, "running") } else { None };
        let mut result = self.connection.query(sql).await?;
        // The progress line stays until the first batch (or error) arrives.
        let mut batches = result.batches.peekable();
        let _ = std::pin::Pin::new(&mut batches).peek().await;
        drop(progress);
        result.batches = batches.boxed();
        let max_rows = if self.interactive { INTERACTIVE_MAX_ROWS } else { usize::MAX };
        let rows = {
            let mut stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
            write_result(result, self.format, max_rows, &mut stdout).await?
        };
        if self.interactive {
            eprintln!("{rows} row{} in {:.3} s", if rows == 1 { "" } else { "s" }, started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Runs every statement and backslash command of a script in order,
    /// stopping at the first error (or at `\q`).
    pub async fn run_script(&mut self, script: &str) -> Result<(), ClientError> {
        for item in script_items(script)? {
            match item {
                ScriptItem::Sql(statement) => self.run_statement(&statement).await?,
                ScriptItem::Command(command) => {
                    if !self.meta_command(&command).await? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `\nl` asks what to do with the SQL: only when a person is typing.
    fn prompting(&self) -> bool {
        self.interactive && std::io::stdin().is_terminal()
    }

    /// The first column of the first row of `sql`'s result, as text.
    async fn query_text(&mut self, sql: &str) -> Result<String, ClientError> {
        use futures::TryStreamExt;
        let result = self.connection.query(sql).await?;
        let batches: Vec<arrow::array::RecordBatch> = result.batches.try_collect().await?;
        let batch = batches
            .iter()
            .find(|b| b.num_rows() > 0 && b.num_columns() > 0)
            .ok_or_else(|| ClientError::Transfer("the server answered with no rows".into()))?;
        let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
        let strings = column.as_any().downcast_ref::<arrow::array::StringArray>().expect("cast to Utf8");
        if arrow::array::Array::is_null(strings, 0) {
            return Err(ClientError::Transfer("the server answered NULL".into()));
        }
        Ok(strings.value(0).to_string())
    }

    /// Asks the server to write SQL for `question` (`nl_sql`).
    async fn generate_sql(&mut self, question: &str) -> Result<String, ClientError> {
        let _progress = if self.interactive { Progress::start(Instant::now(), "writing SQL") } else { None };
        let sql = self.query_text(&nl_sql_statement(question)).await?;
        Ok(clean_sql(&sql).to_string())
    }

    /// Stores `sql` as the accepted answer to `question` (`nl_accept`) and
    /// prints the server's message.
    async fn accept(&mut self, question: &str, sql: &str) -> Result<(), ClientError> {
        let message = self.query_text(&nl_accept_statement(question, sql)).await?;
        println!("{message}");
        eprintln!("(accepted examples guide the SQL written for later questions on this lake)");
        Ok(())
    }

    /// `\nl QUESTION` without asking: prints the SQL written for the
    /// question and runs it.
    async fn nl_run(&mut self, question: &str) -> Result<(), ClientError> {
        let sql = self.generate_sql(question).await?;
        eprintln!("{sql};");
        self.run_statement(&sql).await
    }

    /// `\nl QUESTION` typed at the prompt: shows the SQL, then runs, edits
    /// or accepts it as the user chooses. Errors are printed; the shell goes on.
    fn nl_interactive(&mut self, rt: &tokio::runtime::Runtime, editor: &mut rustyline::DefaultEditor, question: &str) {
        let generated = rt.block_on(async {
            tokio::select! {
                r = self.generate_sql(question) => Some(r),
                _ = tokio::signal::ctrl_c() => None,
            }
        });
        let mut sql = match generated {
            Some(Ok(sql)) => sql,
            Some(Err(e)) => return eprintln!("error: {e}"),
            None => return eprintln!("cancelled"),
        };
        println!("{sql};");
        loop {
            let answer = match editor.readline(CHOICES) {
                Ok(answer) => answer,
                Err(ReadlineError::Interrupted | ReadlineError::Eof) => return,
                Err(e) => return eprintln!("error: {e}"),
            };
            match parse_choice(&answer) {
                Some(NlChoice::Run) => {
                    let _ = editor.add_history_entry(format!("{sql};"));
                    return self.run_interruptible(rt, &sql);
                }
                Some(NlChoice::Edit) => match editor.readline_with_initial("sql> ", (&sql, "")) {
                    Ok(edited) if !clean_sql(&edited).is_empty() => {
                        sql = clean_sql(&edited).to_string();
                        println!("{sql};");
                    }
                    Ok(_) => eprintln!("(empty: the SQL is unchanged)"),
                    Err(ReadlineError::Interrupted) => eprintln!("(the SQL is unchanged)"),
                    Err(ReadlineError::Eof) => return,
                    Err(e) => return eprintln!("error: {e}"),
                },
                Some(NlChoice::Accept) => {
                    let _ = editor.add_history_entry(format!("{sql};"));
                    if let Err(e) = rt.block_on(self.accept(question, &sql)) {
                        eprintln!("error: {e}");
                    }
                    return;
                }
                Some(NlChoice::Cancel) => return,
                None => eprintln!("answer r, e, a or c"),
            }
        }
    }

    /// Handles a backslash command.
    pub async fn meta_command(&mut self, line: &str) -> Result<bool, ClientError> {
        let mut words = line.split_whitespace();
        match (words.next().unwrap_or(""), words.next()) {
            ("\\q" | "\\quit", _) => return Ok(false),
            ("\\?" | "\\help", _) => println!("{HELP}"),
            ("\\d", None) => {
                let tables = self.connection.tables(None).await?;
                for t in &tables {
                    println!("{:<24} {} column(s)", t.name, t.schema.fields().len());
                }
                eprintln!("{} table(s)", tables.len());
            }
            ("\\d", Some(name)) => {
                let tables = self.connection.tables(Some(name)).await?;
                let table = tables
                    .iter()
                    .find(|t| t.name == name)
                    .ok_or_else(|| ClientError::Usage(format!("no table named '{name}'; \\d lists them")))?;
                for field in table.schema.fields() {
                    println!(
                        "{:<24} {:<28} {}",
                        field.name(),
                        field.data_type().to_string(),
                        if field.is_nullable() { "NULL" } else { "NOT NULL" }
                    );
                }
            }
            ("\\nl", _) => match nl_question(line) {
                Some(question) if !question.is_empty() => {
                    let question = question.to_string();
                    self.nl_run(&question).await?;
                }
                _ => return Err(ClientError::Usage(NL_USAGE.into())),
            },
            ("\\format", Some(f)) => {
                self.format = match f {
                    "table" => Format::Table,
                    "csv" => Format::Csv,
                    "json" => Format::Json,
                    other => return Err(ClientError::Usage(format!("unknown format '{other}': table, csv or json"))),
                };
            }
            (other, _) => return Err(ClientError::Usage(format!("unknown command {other}; \\? lists the commands"))),
        }
        Ok(true)
    }

    /// The interactive loop: line editing, history, multi-line statements
    /// ending with `;`. Runs on the calling thread; statements run on `rt`.
    pub fn repl(&mut self, rt: &tokio::runtime::Runtime) -> Result<(), ClientError> {
        let mut editor = rustyline::DefaultEditor::new().map_err(|e| ClientError::Usage(e.to_string()))?;
        let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".lakelink_history"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        let mut buffer = String::new();
        loop {
            let prompt = if buffer.is_empty() { "lakelink> " } else { "      -> " };
            match editor.readline(prompt) {
                Ok(line) => {
                    let trimmed = line.trim();
                    if buffer.is_empty() && trimmed.starts_with('\\') {
                        let _ = editor.add_history_entry(trimmed);
                        if let Some(question) = nl_question(trimmed).filter(|q| !q.is_empty())
                            && self.prompting()
                        {
                            self.nl_interactive(rt, &mut editor, question);
                            continue;
                        }
                        match rt.block_on(self.meta_command(trimmed)) {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(e) => eprintln!("error: {e}"),
                        }
                        continue;
                    }
                    if trimmed.is_empty() && buffer.is_empty() {
                        continue;
                    }
                    buffer.push_str(&line);
                    buffer.push('\n');
                    if !ends_statement(&buffer) {
                        continue;
                    }
                    let sql = std::mem::take(&mut buffer);
                    let _ = editor.add_history_entry(sql.trim());
                    self.run_interruptible(rt, &sql);
                }
                Err(ReadlineError::Interrupted) => buffer.clear(),
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(ClientError::Usage(e.to_string())),
            }
        }
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        Ok(())
    }

    /// Runs the statements of `sql`; Ctrl-C abandons the running one.
    fn run_interruptible(&mut self, rt: &tokio::runtime::Runtime, sql: &str) {
        let statements = match split_statements(sql) {
            Ok(s) => s,
            Err(e) => return eprintln!("error: {e}"),
        };
        for statement in statements {
            let outcome = rt.block_on(async {
                tokio::select! {
                    r = self.run_statement(&statement) => Some(r),
                    _ = tokio::signal::ctrl_c() => None,
                }
            });
            match outcome {
                Some(Ok(())) => {}
                Some(Err(e)) => return eprintln!("error: {e}"),
                None => return eprintln!("cancelled"),
            }
        }
    }
}

const HELP: &str = "\
  SQL statements end with ';' and may span lines.
  \\d              list tables
  \\d TABLE        describe a table
  \\nl QUESTION    write SQL for a question in plain words, then run, edit or accept it
  \\format F       print results as table, csv or json
  \\q              quit (or Ctrl-D); Ctrl-C cancels a running query";

const NL_USAGE: &str = "usage: \\nl QUESTION, e.g. \\nl how many orders are there (writes SQL for the question; \
                        at the prompt you then run, edit or accept it, in scripts it runs)";

/// The prompt after `\nl` has shown its SQL.
const CHOICES: &str = "[r]un, [e]dit, [a]ccept, [c]ancel? ";

/// What to do with SQL written by `\nl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NlChoice {
    Run,
    Edit,
    Accept,
    Cancel,
}

/// Reads an answer to [`CHOICES`]: a letter or the word, any case; empty
/// cancels. `None` for anything else.
fn parse_choice(answer: &str) -> Option<NlChoice> {
    match answer.trim().to_ascii_lowercase().as_str() {
        "r" | "run" => Some(NlChoice::Run),
        "e" | "edit" => Some(NlChoice::Edit),
        "a" | "accept" => Some(NlChoice::Accept),
        "" | "c" | "cancel" | "q" => Some(NlChoice::Cancel),
        _ => None,
    }
}

/// The question of a `\nl QUESTION` line (empty when there is none, with
/// any trailing `;` dropped); `None` when the line is another command.
fn nl_question(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("\\nl")?;
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    Some(rest.trim().trim_end_matches(';').trim_end())
}

/// `text` as a SQL string literal: in single quotes, a quote doubled.
pub fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The statement asking the server to write SQL for `question`.
fn nl_sql_statement(question: &str) -> String {
    format!("SELECT nl_sql({})", sql_literal(question))
}

/// The statement storing `sql` as the accepted answer to `question`.
fn nl_accept_statement(question: &str, sql: &str) -> String {
    format!("SELECT nl_accept({}, {})", sql_literal(question), sql_literal(sql))
}

/// SQL without surrounding whitespace and trailing semicolons.
fn clean_sql(sql: &str) -> &str {
    sql.trim().trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptItem {
    /// A SQL statement.
    Sql(String),
    /// A backslash command: a line starting with `\` between statements.
    Command(String),
}

/// Splits a script into statements and backslash commands, in order. A line
/// starting with `\` is a command (ending a statement that lacks its `;`)
/// unless it is inside a string or comment begun on an earlier line.
pub fn script_items(script: &str) -> Result<Vec<ScriptItem>, ClientError> {
    let mut items = vec![];
    let mut buffer = String::new();
    for line in script.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('\\') && tokenizes(&buffer) {
            items.extend(split_statements(&std::mem::take(&mut buffer))?.into_iter().map(ScriptItem::Sql));
            items.push(ScriptItem::Command(trimmed.to_string()));
            continue;
        }
        buffer.push_str(line);
        buffer.push('\n');
        if ends_statement(&buffer) {
            items.extend(split_statements(&std::mem::take(&mut buffer))?.into_iter().map(ScriptItem::Sql));
        }
    }
    items.extend(split_statements(&buffer)?.into_iter().map(ScriptItem::Sql));
    Ok(items)
}

/// Whether `sql` reads as whole tokens (not ending inside a string or comment).
fn tokenizes(sql: &str) -> bool {
    Tokenizer::new(&GenericDialect {}, sql).tokenize().is_ok()
}

/// Splits a script into statements at `;`, using the SQL tokenizer so that
/// semicolons inside strings and comments do not split.
pub fn split_statements(script: &str) -> Result<Vec<String>, ClientError> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, script)
        .tokenize()
        .map_err(|e| ClientError::Usage(format!("cannot read the SQL: {e}")))?;
    let mut statements = vec![];
    let mut current = String::new();
    let mut has_code = false;
    for token in tokens {
        match token {
            Token::SemiColon => {
                if has_code {
                    statements.push(current.trim().to_string());
                }
                current.clear();
                has_code = false;
            }
            Token::Whitespace(_) => current.push_str(&token.to_string()),
            other => {
                has_code = true;
                current.push_str(&other.to_string());
            }
        }
    }
    if has_code {
        statements.push(current.trim().to_string());
    }
    Ok(statements)
}

/// Whether the buffered lines end with a complete statement.
fn ends_statement(buffer: &str) -> bool {
    let dialect = GenericDialect {};
    match Tokenizer::new(&dialect, buffer).tokenize() {
        Ok(tokens) => tokens
            .iter()
            .rev()
            .find(|t| !matches!(t, Token::Whitespace(_)))
            .is_some_and(|t| matches!(t, Token::SemiColon)),
        // An unterminated string: keep reading lines.
        Err(_) => false,
    }
}

/// A "running 3.2 s" line on the terminal while a query runs (or the
/// server writes SQL).
struct Progress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(started: Instant, label: &'static str) -> Option<Self> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let frames = ['|', '/', '-', '\\'];
            let mut i = 0;
            // Quick queries finish before anything is drawn.
            std::thread::sleep(Duration::from_millis(300));
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                eprint!("\r{} {label} {:.1} s ", frames[i % 4], started.elapsed().as_secs_f64());
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            if i > 0 {
                eprint!("\r\x1b[2K");
            }
        });
        Some(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_strings_and_comments() {
        let script = "SELECT 'a;b' AS x; -- one; two\nSELECT 2;\n\n;";
        let statements = split_statements(script).unwrap();
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert_eq!(statements[0], "SELECT 'a;b' AS x");
        assert!(statements[1].ends_with("SELECT 2"));
    }

    #[test]
    fn literals_double_single_quotes() {
        assert_eq!(sql_literal("how many orders"), "'how many orders'");
        assert_eq!(sql_literal("customers' orders"), "'customers'' orders'");
        assert_eq!(sql_literal("''"), "''''''");
        assert_eq!(sql_literal(""), "''");
        assert_eq!(nl_sql_statement("what's the biggest order?"), "SELECT nl_sql('what''s the biggest order?')");
        assert_eq!(
            nl_accept_statement("building customers", "SELECT count(*) FROM customer WHERE c_mktsegment = 'BUILDING'"),
            "SELECT nl_accept('building customers', 'SELECT count(*) FROM customer WHERE c_mktsegment = ''BUILDING''')"
        );
    }

    #[test]
    fn quoted_statements_tokenize_back_to_the_original_text() {
        let question = "it's a \"test\"; -- not a comment\n/* nor this */ \\ back";
        let sql = "SELECT 'a''b' AS x;";
        let dialect = GenericDialect {};
        let tokens = Tokenizer::new(&dialect, &nl_accept_statement(question, sql)).tokenize().unwrap();
        let strings: Vec<&String> = tokens
            .iter()
            .filter_map(|t| match t {
                Token::SingleQuotedString(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(strings, [question, sql]);
        assert!(!tokens.iter().any(|t| matches!(t, Token::SemiColon)));
    }

    #[test]
    fn reads_the_nl_command() {
        assert_eq!(nl_question("\\nl how many orders are there"), Some("how many orders are there"));
        assert_eq!(nl_question("  \\nl   spaced out?  "), Some("spaced out?"));
        assert_eq!(nl_question("\\nl\thow many;"), Some("how many"));
        assert_eq!(nl_question("\\nl"), Some(""));
        assert_eq!(nl_question("\\nl   "), Some(""));
        assert_eq!(nl_question("\\nlx"), None);
        assert_eq!(nl_question("\\d orders"), None);
        assert_eq!(nl_question("SELECT 1"), None);
    }

    #[test]
    fn reads_the_choice_letters() {
        assert_eq!(parse_choice("r"), Some(NlChoice::Run));
        assert_eq!(parse_choice(" R "), Some(NlChoice::Run));
        assert_eq!(parse_choice("run"), Some(NlChoice::Run));
        assert_eq!(parse_choice("e"), Some(NlChoice::Edit));
        assert_eq!(parse_choice("Edit"), Some(NlChoice::Edit));
        assert_eq!(parse_choice("a"), Some(NlChoice::Accept));
        assert_eq!(parse_choice("accept"), Some(NlChoice::Accept));
        assert_eq!(parse_choice("c"), Some(NlChoice::Cancel));
        assert_eq!(parse_choice(""), Some(NlChoice::Cancel));
        assert_eq!(parse_choice("   "), Some(NlChoice::Cancel));
        assert_eq!(parse_choice("x"), None);
        assert_eq!(parse_choice("rerun"), None);
    }

    #[test]
    fn cleans_sql_of_trailing_semicolons() {
        assert_eq!(clean_sql("  SELECT 1 ;; \n"), "SELECT 1");
        assert_eq!(clean_sql("SELECT ';'"), "SELECT ';'");
        assert_eq!(clean_sql(" ; "), "");
    }

    #[test]
    fn scripts_mix_statements_and_commands() {
        use ScriptItem::{Command, Sql};
        assert_eq!(
            script_items("\\nl how many orders are there").unwrap(),
            [Command("\\nl how many orders are there".into())]
        );
        let items = script_items("-- counts\n\\d\nSELECT 1;\n  \\nl it's late\nSELECT\n 2; SELECT 3\n\\q").unwrap();
        assert_eq!(
            items,
            [
                Command("\\d".into()),
                Sql("SELECT 1".into()),
                Command("\\nl it's late".into()),
                Sql("SELECT\n 2".into()),
                Sql("SELECT 3".into()),
                Command("\\q".into()),
            ]
        );
        // A backslash line inside a string or comment stays in it.
        let items = script_items("SELECT 'a\n\\nl b';\n/*\n\\d\n*/ SELECT 2").unwrap();
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(matches!(&items[0], Sql(s) if s.contains("\\nl b")));
        assert!(matches!(&items[1], Sql(s) if s.contains("\\d") && s.ends_with("SELECT 2")));
        assert_eq!(script_items("SELECT 1; SELECT 2").unwrap(), [Sql("SELECT 1".into()), Sql("SELECT 2".into())]);
        assert!(script_items("").unwrap().is_empty());
    }

    #[test]
    fn statement_ends_only_at_a_real_semicolon() {
        assert!(ends_statement("SELECT 1;\n"));
        assert!(!ends_statement("SELECT ';\n"));
        assert!(!ends_statement("SELECT 1\n"));
    }
}
