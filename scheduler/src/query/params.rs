//! Parameters of prepared statements: JDBC/ODBC-style `?` placeholders
//! become DataFusion's positional `$1`, `$2`, ...

use datafusion::common::{DataFusionError, Result};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Rewrites JDBC/ODBC-style `?` placeholders into DataFusion's positional
/// `$1`, `$2`, ... using the SQL tokenizer, so `?` inside strings, quoted
/// identifiers and comments is left alone. Only the placeholders' own
/// characters change: the rest of the text stays byte for byte what the
/// client sent (re-rendering tokens would lose the quoting of `''`).
pub fn number_question_marks(sql: &str) -> Result<String> {
    if !sql.contains('?') {
        return Ok(sql.to_string());
    }
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| DataFusionError::SQL(Box::new(e.into()), None))?;
    let mut placeholders = tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .peekable();
    if placeholders.peek().is_none() {
        return Ok(sql.to_string());
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut line, mut column, mut n) = (1u64, 1u64, 0);
    for ch in sql.chars() {
        if placeholders.peek() == Some(&(line, column)) {
            placeholders.next();
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_leave_quoted_quotes_alone() {
        let sql = "SELECT 'it''s?' AS a,\n  ? AS b FROM t WHERE n = 'X'' OR ''1''=''1' AND c = ?";
        assert_eq!(
            number_question_marks(sql).unwrap(),
            "SELECT 'it''s?' AS a,\n  $1 AS b FROM t WHERE n = 'X'' OR ''1''=''1' AND c = $2"
        );
        assert_eq!(number_question_marks("SELECT 'what?'").unwrap(), "SELECT 'what?'");
    }

    #[test]
    fn question_marks_become_positional() {
        let sql = "SELECT '?' AS q, \"a?\" FROM t WHERE a = ? AND b > ? -- why?";
        assert_eq!(
            number_question_marks(sql).unwrap(),
            "SELECT '?' AS q, \"a?\" FROM t WHERE a = $1 AND b > $2 -- why?"
        );
    }
}
