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
        let progress = if self.interactive { Progress::start(started) } else { None };
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

    /// Runs every statement of a script in order, stopping at the first error.
    pub async fn run_script(&mut self, script: &str) -> Result<(), ClientError> {
        for statement in split_statements(script)? {
            self.run_statement(&statement).await?;
        }
        Ok(())
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
  \\format F       print results as table, csv or json
  \\q              quit (or Ctrl-D); Ctrl-C cancels a running query";

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

/// A "running 3.2 s" line on the terminal while a query runs.
struct Progress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(started: Instant) -> Option<Self> {
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
                eprint!("\r{} running {:.1} s ", frames[i % 4], started.elapsed().as_secs_f64());
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
    fn statement_ends_only_at_a_real_semicolon() {
        assert!(ends_statement("SELECT 1;\n"));
        assert!(!ends_statement("SELECT ';\n"));
        assert!(!ends_statement("SELECT 1\n"));
    }
}
