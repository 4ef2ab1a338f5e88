//! Retrieval: the tables, value hints and examples relevant to a question.
//!
//! Each table is scored by embedding similarity of the question to the
//! table's and its columns' descriptions, by the table's name appearing in
//! the question, and by sample values the question mentions ("Germany" finds
//! `nation.n_name = 'GERMANY'`). The best tables, plus the tables on the join
//! paths between them, go into the prompt, so the prompt stays small on a
//! lake of hundreds of tables.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::common::Result;

use super::knowledge::{Knowledge, TableInfo, stem};
use lakelink_model::cache::{self, Answer, DiskCache};
use lakelink_model::config::LlmOptions;
use lakelink_model::hub;

/// A value of a column that the question mentions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueHint {
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
    /// The value as stored.
    pub value: String,
}

/// What retrieval found for one question.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retrieved {
    /// Tables for the prompt, best first, join paths included.
    pub tables: Vec<String>,
    /// Values the question mentions.
    pub hints: Vec<ValueHint>,
    /// Indexes of the accepted examples most like the question.
    pub examples: Vec<usize>,
}

/// The embedding documents of a knowledge version: one per table, one per
/// column, one per example.
struct Docs {
    tables: Vec<Vec<f32>>,
    columns: Vec<Vec<Vec<f32>>>,
    examples: Vec<Vec<f32>>,
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let w = w.to_lowercase();
            // Plurals find their singular table ("suppliers" -> "supplier").
            if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") { w[..w.len() - 1].to_string() } else { w }
        })
        .collect()
}

/// A column's name as words: `o_orderdate` -> `orderdate`, `ship_mode` -> `ship mode`.
fn readable(column: &str) -> String {
    stem(column).replace('_', " ")
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Embeds texts through the model layer, with each text's vector cached on disk.
async fn embed(options: &LlmOptions, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
    let embedder = hub::embedder(options).await.map_err(crate::NlError::Model)?;
    let disk = DiskCache::for_options(options);
    let keys: Vec<String> = texts.iter().map(|t| cache::key(&[embedder.id(), "nl-doc", t])).collect();
    let mut out: Vec<Option<Vec<f32>>> = keys
        .iter()
        .map(|k| if options.cache { disk.get(k) } else { None })
        .map(|a| match a {
            Some(Answer::Vector(v)) => Some(v),
            _ => None,
        })
        .collect();
    let missing: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
    for chunk in missing.chunks(64) {
        let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
        let vectors = embedder.embed(&batch).await.map_err(crate::NlError::Model)?;
        for (&i, v) in chunk.iter().zip(vectors.vectors) {
            if options.cache {
                disk.put(&keys[i], &Answer::Vector(v.clone()));
            }
            out[i] = Some(v);
        }
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

async fn docs(k: &Knowledge, options: &LlmOptions) -> Result<Arc<Docs>> {
    static DOCS: OnceLock<Mutex<HashMap<String, Arc<Docs>>>> = OnceLock::new();
    let memo = DOCS.get_or_init(Default::default);
    let id = format!("{}|{}|{}", k.version, options.backend, options.embedding_model);
    if let Some(d) = memo.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return Ok(d.clone());
    }
    let mut texts = Vec::new();
    for t in &k.tables {
        let cols: Vec<String> = t.columns.iter().map(|c| readable(&c.name)).collect();
        texts.push(format!("{}: {}. Columns: {}", t.name, t.description, cols.join(", ")));
    }
    for t in &k.tables {
        for c in &t.columns {
            texts.push(format!("{} {}: {}", t.name, readable(&c.name), c.description));
        }
    }
    for e in &k.examples {
        texts.push(e.question.clone());
    }
    let mut vectors = embed(options, texts).await?.into_iter();
    let tables: Vec<Vec<f32>> = k.tables.iter().map(|_| vectors.next().unwrap_or_default()).collect();
    let columns =
        k.tables.iter().map(|t| t.columns.iter().map(|_| vectors.next().unwrap_or_default()).collect()).collect();
    let examples = vectors.collect();
    let d = Arc::new(Docs { tables, columns, examples });
    let mut memo = memo.lock().unwrap_or_else(|e| e.into_inner());
    if memo.len() > 16 {
        memo.clear();
    }
    memo.insert(id, d.clone());
    Ok(d)
}

/// The values of low-cardinality columns that the question names: every
/// word of the value (ignoring codes such as `1-`) appears in the question.
pub fn value_hints(k: &Knowledge, question: &str) -> Vec<ValueHint> {
    let asked = words(question);
    let mut hints = Vec::new();
    for t in &k.tables {
        for c in &t.columns {
            for v in &c.values {
                let value_words: Vec<String> =
                    words(v).into_iter().filter(|w| w.len() >= 3 && w.chars().any(char::is_alphabetic)).collect();
                if !value_words.is_empty() && value_words.iter().all(|w| asked.contains(w)) {
                    hints.push(ValueHint { table: t.name.clone(), column: c.name.clone(), value: v.clone() });
                }
            }
        }
    }
    // A longer value that matched makes its shorter parts redundant ("REG AIR" over "AIR").
    let all = hints.clone();
    hints.retain(|h| {
        !all.iter().any(|o| {
            o.table == h.table && o.column == h.column && o.value.len() > h.value.len() && o.value.contains(&h.value)
        })
    });
    hints
}

/// Words too common in questions to tell tables apart.
const COMMON: &[&str] = &[
    "what", "which", "many", "much", "were", "each", "show", "their", "there", "with", "from", "that", "this", "than",
    "over", "total", "number", "average", "list", "give", "name", "have", "does", "most", "largest", "smallest",
    "highest", "lowest", "every", "into", "they", "them", "whose", "where", "when", "between",
];

/// Whether two words are the same word in another form (`shipped`,
/// `shipping`; `supply`, `supplier`): equal, or sharing five letters.
fn same_word(a: &str, b: &str) -> bool {
    a == b || (a.len() >= 5 && b.len() >= 5 && a.as_bytes()[..5] == b.as_bytes()[..5])
}

/// How many content words of the question the table's descriptions and
/// column names use ("discount", "shipped", "segment").
fn described_words(t: &TableInfo, asked: &[String]) -> usize {
    let mut vocabulary: Vec<String> = words(&t.description);
    for c in &t.columns {
        vocabulary.extend(words(&c.description));
        vocabulary.extend(words(&readable(&c.name)));
    }
    asked
        .iter()
        .filter(|w| w.len() >= 4 && !COMMON.contains(&w.as_str()))
        .filter(|w| vocabulary.iter().any(|v| same_word(w, v)))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Finds the tables, values and examples for `question`.
pub async fn retrieve(k: &Knowledge, question: &str, options: &LlmOptions, max_tables: usize) -> Result<Retrieved> {
    let hints = value_hints(k, question);
    if k.tables.is_empty() {
        return Ok(Retrieved { hints, ..Default::default() });
    }
    let d = docs(k, options).await?;
    let q = embed(options, vec![question.to_string()]).await?.pop().unwrap_or_default();
    let asked = words(question);
    let mut scores: Vec<(String, f32, bool)> = k
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let table_sim = dot(&q, &d.tables[i]);
            let column_sim = d.columns[i].iter().map(|v| dot(&q, v)).fold(f32::MIN, f32::max);
            let named = words(&t.name).iter().all(|w| asked.contains(w));
            let hinted = hints.iter().any(|h| h.table == t.name);
            let described = described_words(t, &asked).min(3) as f32;
            let score = table_sim.max(column_sim)
                + if named { 0.3 } else { 0.0 }
                + if hinted { 0.4 } else { 0.0 }
                + 0.15 * described;
            (t.name.clone(), score, named || hinted)
        })
        .collect();
    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    let best = scores[0].1;
    let mut picked: Vec<String> = Vec::new();
    for (name, score, named) in &scores {
        // Tables the question names (or names a value of) always go in.
        let strong = *score >= best - 0.2 || *named;
        if picked.is_empty() || (strong && picked.len() < max_tables) {
            picked.push(name.clone());
        }
    }
    let mut tables = k.connect(&picked);
    tables.truncate(max_tables.max(picked.len()) + 2);
    let mut examples: Vec<(usize, f32)> =
        d.examples.iter().enumerate().map(|(i, v)| (i, dot(&q, v))).filter(|(_, s)| *s >= 0.6).collect();
    examples.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Retrieved { tables, hints, examples: examples.into_iter().take(3).map(|(i, _)| i).collect() })
}

#[cfg(test)]
mod tests {
    use super::super::knowledge::tests::table;
    use super::*;

    #[test]
    fn values_named_in_the_question_become_hints() {
        let mut nation = table("nation", &["n_nationkey", "n_name"]);
        nation.columns[1].values =
            vec!["FRANCE".into(), "GERMANY".into(), "UNITED KINGDOM".into(), "UNITED STATES".into()];
        let mut orders = table("orders", &["o_orderkey", "o_orderpriority"]);
        orders.columns[1].values = vec!["1-URGENT".into(), "2-HIGH".into()];
        let k = Knowledge { tables: vec![nation, orders], joins: vec![], examples: vec![], version: String::new() };
        let hints = value_hints(&k, "Urgent orders from suppliers in Germany and the United States");
        let got: Vec<&str> = hints.iter().map(|h| h.value.as_str()).collect();
        assert_eq!(got, vec!["GERMANY", "UNITED STATES", "1-URGENT"]);
        assert!(value_hints(&k, "orders in 1995").is_empty());
    }
}
