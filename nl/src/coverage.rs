//! Coverage: whether a query that checks (parses, plans, is allowed)
//! answers the question it was written for, told by code. A gap goes back to
//! the model as a precise hint, like a planning error; a query whose only
//! fault is a gap is still the answer when the attempts run out.
//!
//! * contradictory equalities: `x = 'a' AND x = 'b'` in one conjunction
//!   matches no row (the model's way of writing "a or b"); when the
//!   question's words stand for one listed value of `x`, [`settle`] puts
//!   it in place without the model;
//! * named values: a value of a listed low-cardinality column that the
//!   question names as a word (a nation, a ship mode, a segment) must be in
//!   the query;
//! * years: a year the question names must be in the query (or the next
//!   one, the end of a half-open range);
//! * top N: "top 5" asks for `LIMIT 5`.

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Query, Value, ValueWithSpan, Visit, Visitor, visit_expressions_mut,
};

use crate::knowledge::Knowledge;

/// The first gap between `question` and `query` (rendered as `sql`), as a
/// hint for the model; `None` when none is seen.
pub fn gap(question: &str, query: &Query, sql: &str, knowledge: &Knowledge) -> Option<String> {
    contradiction(question, query, knowledge)
        .or_else(|| missing_value(question, sql, knowledge))
        .or_else(|| missing_year(question, sql, knowledge))
        .or_else(|| missing_limit(question, sql))
}

/// `column = 'a' AND column = 'b'` (a ≠ b) in one conjunction. When the
/// question's words stand for exactly one listed value of the column
/// ([`stands_for`]), the hint names it; else it offers `IN` for either.
fn contradiction(question: &str, query: &Query, knowledge: &Knowledge) -> Option<String> {
    let (column, other, value) = clash(query)?;
    let clash = format!("`{column} = '{other}'` and `{column} = '{value}'` cannot both hold, so no row matches");
    Some(match stands_for(question, &column, knowledge) {
        Some(one) => format!("{clash}; the question's words stand for `{column} = '{one}'`"),
        None => format!("{clash}; for either one write `{column} IN ('{other}', '{value}')`"),
    })
}

/// The first contradiction of `query`: (the column as written, one text, the other).
fn clash(query: &Query) -> Option<(String, String, String)> {
    struct Find(Option<(String, String, String)>);
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::BinaryOp { op: BinaryOperator::And, .. } = expr {
                let mut equal: HashMap<String, String> = HashMap::new();
                for part in conjuncts(expr) {
                    let Some((column, value)) = equality(part) else { continue };
                    match equal.get(&column.to_lowercase()) {
                        Some(other) if other != &value => {
                            self.0 = Some((column, other.clone(), value));
                            return ControlFlow::Break(());
                        }
                        _ => {
                            equal.insert(column.to_lowercase(), value);
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut find = Find(None);
    let _ = query.visit(&mut find);
    find.0
}

/// The one listed value of `column` (as written, maybe qualified) that the
/// question's words stand for ([`abbreviated`]: 'MED BOX' for "a medium
/// box"); `None` when none or several do.
fn stands_for(question: &str, column: &str, knowledge: &Knowledge) -> Option<String> {
    let name = column.rsplit('.').next().unwrap_or(column).trim_matches('"');
    let listed = knowledge.tables.iter().flat_map(|t| &t.columns).filter(|c| c.name.eq_ignore_ascii_case(name));
    let asked = words(question);
    let mut matching: Vec<&String> = listed.flat_map(|c| &c.values).filter(|v| abbreviated(&asked, v)).collect();
    matching.sort();
    matching.dedup();
    match matching.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

/// `query` with its contradiction settled without the model, when the
/// question's words stand for one listed value of the column: every
/// equality of that column with either text compares with that value
/// instead. A small model given the hint usually writes the same SQL again.
pub fn settle(question: &str, query: &Query, knowledge: &Knowledge) -> Option<String> {
    let (column, other, value) = clash(query)?;
    let one = stands_for(question, &column, knowledge)?;
    let mut fixed = query.clone();
    let _ = visit_expressions_mut(&mut fixed, |e| {
        if let Some((c, text)) = equality(e)
            && c.eq_ignore_ascii_case(&column)
            && (text == other || text == value)
            && let Expr::BinaryOp { left, right, .. } = e
        {
            for side in [left, right] {
                if let Expr::Value(ValueWithSpan { value: Value::SingleQuotedString(s), .. }) = side.as_mut() {
                    *s = one.clone();
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Some(fixed.to_string())
}

/// Whether every word of `value` begins a word of the question, in order,
/// at least one of them with three letters or more ('MED BOX' in "parts in a
/// medium box", 'LG CASE' in "a large case" does not: 'lg' begins no word).
fn abbreviated(asked: &[String], value: &str) -> bool {
    let wanted = words(value);
    if wanted.is_empty() || !wanted.iter().any(|w| w.chars().count() >= 3) {
        return false;
    }
    let mut from = 0;
    for w in &wanted {
        match asked[from..].iter().position(|a| a.starts_with(w.as_str())) {
            Some(i) => from += i + 1,
            None => return false,
        }
    }
    true
}

/// The parts of an `AND` chain.
fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            let mut parts = conjuncts(left);
            parts.extend(conjuncts(right));
            parts
        }
        Expr::Nested(inner) => conjuncts(inner),
        other => vec![other],
    }
}

/// `column = 'text'` (either way round): the column as written and the text.
fn equality(expr: &Expr) -> Option<(String, String)> {
    let Expr::BinaryOp { left, op: BinaryOperator::Eq, right } = expr else { return None };
    let text = |e: &Expr| match e {
        Expr::Value(ValueWithSpan { value: Value::SingleQuotedString(s), .. }) => Some(s.clone()),
        _ => None,
    };
    let column = |e: &Expr| match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => Some(e.to_string()),
        _ => None,
    };
    column(left).zip(text(right)).or_else(|| column(right).zip(text(left)))
}

/// The words of `text`, lower case: runs of letters, digits, `-` and `_`
/// (so `REG AIR` is two words and `1-URGENT` one).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether `phrase` (one or more words) stands in `words` as whole words.
fn names(words: &[String], phrase: &str) -> bool {
    let wanted = self::words(phrase);
    !wanted.is_empty() && words.windows(wanted.len()).any(|w| w == wanted.as_slice())
}

/// A listed value the question names that the query leaves out.
fn missing_value(question: &str, sql: &str, knowledge: &Knowledge) -> Option<String> {
    let asked = words(question);
    let used = sql.to_lowercase();
    for table in &knowledge.tables {
        for column in &table.columns {
            for value in &column.values {
                // Short codes ('R', 'O', '1') are not told from ordinary words.
                if value.chars().count() < 3 || !names(&asked, value) {
                    continue;
                }
                // Another listed value holding this one as a word ('AIR' in
                // 'REG AIR') that the query uses covers it.
                if used.contains(&value.to_lowercase()) {
                    continue;
                }
                return Some(format!(
                    "the question names '{value}' ({}.{}) but the query does not use it; filter on it",
                    table.name, column.name
                ));
            }
        }
    }
    None
}

/// A year (1900–2099) the question names that the query leaves out; the
/// hint names the date columns of the tables the query reads (of every
/// table when it reads none that has one).
fn missing_year(question: &str, sql: &str, knowledge: &Knowledge) -> Option<String> {
    for word in words(question) {
        let Ok(year) = word.parse::<u32>() else { continue };
        if !(1900..2100).contains(&year) || word.len() != 4 {
            continue;
        }
        if !sql.contains(&year.to_string()) && !sql.contains(&(year + 1).to_string()) {
            let dates = date_columns(sql, knowledge);
            let example = dates.first().map_or("date_column", |(_, c)| c.as_str());
            let range = format!("`{example} >= DATE '{year}-01-01' AND {example} < DATE '{}-01-01'`", year + 1);
            let candidates = match dates.len() {
                0 | 1 => String::new(),
                _ => {
                    let named: Vec<String> = dates.iter().map(|(t, c)| format!("{t}.{c}")).collect();
                    format!(" on the date column the question means ({})", named.join(", "))
                }
            };
            return Some(format!(
                "the question names the year {year} but the query does not restrict any date to it; add \
                 {range}{candidates} (or the part of the year asked for)"
            ));
        }
    }
    None
}

/// (table, column) of every DATE or TIMESTAMP column of the tables `sql`
/// names, or of every table when it names none that has one.
fn date_columns(sql: &str, knowledge: &Knowledge) -> Vec<(String, String)> {
    let used = words(sql);
    let dates = |only_used: bool| -> Vec<(String, String)> {
        knowledge
            .tables
            .iter()
            .filter(|t| !only_used || used.contains(&t.name.to_lowercase()))
            .flat_map(|t| {
                t.columns
                    .iter()
                    .filter(|c| c.sql_type.starts_with("DATE") || c.sql_type.starts_with("TIMESTAMP"))
                    .map(|c| (t.name.clone(), c.name.clone()))
            })
            .collect()
    };
    let read = dates(true);
    if read.is_empty() { dates(false) } else { read }
}

/// "top N" without `LIMIT N`.
fn missing_limit(question: &str, sql: &str) -> Option<String> {
    let asked = words(question);
    let number = |w: &str| -> Option<u64> {
        w.parse().ok().or_else(|| {
            let small = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];
            small.iter().position(|s| *s == w).map(|i| i as u64 + 1)
        })
    };
    let n = asked.windows(2).find(|w| w[0] == "top").and_then(|w| number(&w[1]))?;
    let limit = words(sql).windows(2).find(|w| w[0] == "limit").and_then(|w| w[1].parse::<u64>().ok());
    match limit {
        Some(l) if l == n => None,
        Some(l) => Some(format!("the question asks for the top {n}, but the query has LIMIT {l}; use LIMIT {n}")),
        None => Some(format!("the question asks for the top {n}; order the rows and end with LIMIT {n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knowledge::{ColumnInfo, TableInfo};

    fn query(sql: &str) -> Box<Query> {
        use datafusion::sql::sqlparser::ast::Statement;
        use datafusion::sql::sqlparser::dialect::GenericDialect;
        use datafusion::sql::sqlparser::parser::Parser;
        match Parser::parse_sql(&GenericDialect {}, sql).unwrap().remove(0) {
            Statement::Query(q) => q,
            other => panic!("not a query: {other}"),
        }
    }

    fn knowledge() -> Knowledge {
        let column = |name: &str, values: &[&str]| ColumnInfo {
            name: name.into(),
            sql_type: "VARCHAR".into(),
            description: String::new(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        Knowledge {
            tables: vec![
                TableInfo {
                    name: "nation".into(),
                    description: String::new(),
                    columns: vec![column("n_name", &["FRANCE", "JAPAN", "UNITED STATES"])],
                },
                TableInfo {
                    name: "lineitem".into(),
                    description: String::new(),
                    columns: vec![
                        column("l_shipmode", &["AIR", "REG AIR", "SHIP"]),
                        column("l_returnflag", &["A", "N", "R"]),
                        ColumnInfo { sql_type: "DATE".into(), ..column("l_shipdate", &[]) },
                        ColumnInfo { sql_type: "DATE".into(), ..column("l_receiptdate", &[]) },
                    ],
                },
                TableInfo {
                    name: "orders".into(),
                    description: String::new(),
                    columns: vec![ColumnInfo { sql_type: "DATE".into(), ..column("o_orderdate", &[]) }],
                },
                TableInfo {
                    name: "part".into(),
                    description: String::new(),
                    columns: vec![column("p_container", &["LG BOX", "MED BAG", "MED BOX", "SM BOX"])],
                },
            ],
            joins: vec![],
            examples: vec![],
            version: String::new(),
        }
    }

    fn gap_of(question: &str, sql: &str) -> Option<String> {
        gap(question, &query(sql), sql, &knowledge())
    }

    #[test]
    fn contradictory_equalities_are_a_gap() {
        let sql = "SELECT count(*) FROM lineitem WHERE l_shipmode = 'AIR' AND l_quantity > 3 AND l_shipmode = 'SHIP'";
        let hint = gap_of("How many items were shipped by air or ship?", sql).unwrap();
        assert!(hint.contains("IN ('AIR', 'SHIP')"), "{hint}");
        // The question's words stand for one listed value: the hint names it.
        let boxes = "SELECT avg(p_retailprice) FROM part WHERE p_container = 'LG BOX' AND p_container = 'SM BOX'";
        let hint = gap_of("What is the average retail price of parts in a medium box?", boxes).unwrap();
        assert!(hint.contains("`p_container = 'MED BOX'`"), "{hint}");
        assert!(!hint.contains(" IN ("), "{hint}");
        // No listed value fits every word ("medium" alone fits neither 'MED
        // BOX' nor 'MED BAG'): the hint offers IN.
        let settled = settle("parts in a medium box", &query(boxes), &knowledge()).unwrap();
        assert_eq!(
            settled,
            "SELECT avg(p_retailprice) FROM part WHERE p_container = 'MED BOX' AND p_container = 'MED BOX'"
        );
        let hint = gap_of("What is the average retail price of medium parts?", boxes).unwrap();
        assert!(hint.contains("IN ('LG BOX', 'SM BOX')"), "{hint}");
        assert_eq!(settle("What is the average retail price of medium parts?", &query(boxes), &knowledge()), None);
        let either = "SELECT count(*) FROM lineitem WHERE l_shipmode = 'AIR' OR l_shipmode = 'SHIP'";
        assert_eq!(gap_of("How many items were shipped by air or ship?", either), None);
    }

    #[test]
    fn a_named_value_must_be_used() {
        let question = "How many orders did customers from Japan place?";
        let hint = gap_of(question, "SELECT count(*) FROM orders").unwrap();
        assert!(hint.contains("'JAPAN' (nation.n_name)"), "{hint}");
        assert_eq!(
            gap_of(question, "SELECT count(*) FROM orders o JOIN nation n ON 1=1 WHERE n.n_name = 'JAPAN'"),
            None
        );
        // 'AIR' inside 'REG AIR' is covered by it; short codes are not checked.
        assert_eq!(gap_of("Items shipped by reg air", "SELECT 1 FROM lineitem WHERE l_shipmode = 'REG AIR'"), None);
        assert_eq!(gap_of("Is a returned item an R?", "SELECT 1"), None);
        // A value names the question only as whole words.
        assert_eq!(gap_of("The frances of the world", "SELECT 1"), None);
    }

    #[test]
    fn a_named_year_must_be_used() {
        let question = "Revenue in 1995 by nation";
        assert!(gap_of(question, "SELECT 1").unwrap().contains("1995"));
        // The hint names the date columns of the tables read.
        let hint = gap_of("Orders placed in 1995", "SELECT count(*) FROM orders").unwrap();
        assert!(hint.contains("`o_orderdate >= DATE '1995-01-01' AND o_orderdate < DATE '1996-01-01'`"), "{hint}");
        let hint = gap_of("Items shipped in 1995", "SELECT count(*) FROM lineitem").unwrap();
        assert!(
            hint.contains("(lineitem.l_shipdate, lineitem.l_receiptdate)") && !hint.contains("o_orderdate"),
            "{hint}"
        );
        assert_eq!(gap_of(question, "SELECT 1 WHERE d >= DATE '1995-01-01' AND d < DATE '1996-01-01'"), None);
        assert_eq!(gap_of("Orders until 1996", "SELECT 1 WHERE d < DATE '1997-01-01'"), None);
    }

    #[test]
    fn top_n_asks_for_its_limit() {
        assert!(gap_of("the top 5 suppliers", "SELECT 1").unwrap().contains("LIMIT 5"));
        assert!(gap_of("the top ten suppliers", "SELECT 1 LIMIT 5").unwrap().contains("LIMIT 10"));
        assert_eq!(gap_of("the top 5 suppliers", "SELECT 1 ORDER BY 1 DESC LIMIT 5"), None);
    }
}
