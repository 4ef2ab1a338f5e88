//! What the NL compiler knows about a lake: its tables and columns with
//! types and descriptions, sample values of low-cardinality text columns,
//! join keys, and the question/SQL examples users accepted.
//!
//! Descriptions and joins come from `<lake>/_lakelink/catalog.toml` (and a
//! field's `description` or `comment` metadata); examples from
//! `<lake>/_lakelink/nl_examples.jsonl`. Knowledge is built once per catalog
//! version and shared by every question.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use lakelink_model::cache;

/// The file of table and column descriptions and joins, in the metadata folder.
pub const CATALOG_FILE: &str = "catalog.toml";
/// The file of accepted question/SQL examples, in the metadata folder.
pub const EXAMPLES_FILE: &str = "nl_examples.jsonl";
/// Rows read from each table to find sample values.
const SAMPLE_ROWS: usize = 20_000;
/// A text column with at most this many distinct values in the sample lists them.
const MAX_VALUES: usize = 50;
/// Longer values are not listed (free text, not categories).
const MAX_VALUE_LEN: usize = 40;

/// One column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    /// Its name.
    pub name: String,
    /// Its SQL type (`BIGINT`, `DECIMAL(15,2)`, `VARCHAR`, `DATE`, ...).
    pub sql_type: String,
    /// What it holds, from the catalog file or field metadata; may be empty.
    pub description: String,
    /// Every value of a low-cardinality text column (sorted); empty otherwise.
    pub values: Vec<String>,
}

/// One table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    /// Its name in the catalog.
    pub name: String,
    /// What it holds; may be empty.
    pub description: String,
    /// Its columns, in schema order.
    pub columns: Vec<ColumnInfo>,
}

/// How two tables join: `left.left_columns[i] = right.right_columns[i]` for every `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// One table.
    pub left: String,
    /// Its key columns.
    pub left_columns: Vec<String>,
    /// The other table.
    pub right: String,
    /// Its key columns, matching `left_columns`.
    pub right_columns: Vec<String>,
}

impl Join {
    /// The join condition in SQL.
    pub fn condition(&self) -> String {
        self.left_columns
            .iter()
            .zip(&self.right_columns)
            .map(|(l, r)| format!("{}.{l} = {}.{r}", self.left, self.right))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The other side of the join from `table`, if `table` is one side.
    pub fn other(&self, table: &str) -> Option<&str> {
        if self.left == table {
            Some(&self.right)
        } else if self.right == table {
            Some(&self.left)
        } else {
            None
        }
    }
}

/// A question and the SQL a user accepted for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The question.
    pub question: String,
    /// The accepted SQL.
    pub sql: String,
}

/// Everything the compiler knows about one catalog version.
#[derive(Debug, Clone, PartialEq)]
pub struct Knowledge {
    /// Tables the caller may read, sorted by name.
    pub tables: Vec<TableInfo>,
    /// Join keys between them.
    pub joins: Vec<Join>,
    /// Accepted examples.
    pub examples: Vec<Example>,
    /// A fingerprint of all of the above: part of every cache key.
    pub version: String,
}

impl Knowledge {
    /// Every join touching `table`.
    pub fn joins_of<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a Join> + 'a {
        self.joins.iter().filter(move |j| j.other(table).is_some())
    }

    /// Tables on a shortest join path connecting all of `tables` (which are
    /// included), in the order found.
    pub fn connect(&self, tables: &[String]) -> Vec<String> {
        let mut chosen: Vec<String> = Vec::new();
        for t in tables {
            if chosen.is_empty() {
                chosen.push(t.clone());
                continue;
            }
            if chosen.contains(t) {
                continue;
            }
            // Breadth-first from the tables chosen so far to `t`.
            let mut previous: HashMap<String, String> = HashMap::new();
            let mut frontier: Vec<String> = chosen.clone();
            let mut seen: Vec<String> = chosen.clone();
            let mut found = false;
            while !frontier.is_empty() && !found {
                let mut next = Vec::new();
                for node in &frontier {
                    for j in self.joins_of(node) {
                        let other = j.other(node).expect("join of node").to_string();
                        if seen.contains(&other) {
                            continue;
                        }
                        seen.push(other.clone());
                        previous.insert(other.clone(), node.clone());
                        if &other == t {
                            found = true;
                        }
                        next.push(other);
                    }
                }
                frontier = next;
            }
            let mut path = vec![t.clone()];
            if found {
                let mut at = t.clone();
                while let Some(p) = previous.get(&at) {
                    if chosen.contains(p) {
                        break;
                    }
                    path.push(p.clone());
                    at = p.clone();
                }
            }
            for p in path.into_iter().rev() {
                if !chosen.contains(&p) {
                    chosen.push(p);
                }
            }
        }
        chosen
    }
}

/// The optional descriptions file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    tables: BTreeMap<String, TableDoc>,
    /// `"orders.o_custkey = customer.c_custkey"`; when given, replaces the
    /// joins found from column names.
    joins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableDoc {
    #[serde(default)]
    description: String,
    #[serde(default)]
    columns: BTreeMap<String, String>,
}

/// The SQL name of an Arrow type, as a model knows it.
pub fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => "SMALLINT".into(),
        DataType::Int32 | DataType::UInt32 => "INT".into(),
        DataType::Int64 | DataType::UInt64 => "BIGINT".into(),
        DataType::Float16 | DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, _) => "TIMESTAMP".into(),
        other => other.to_string().to_ascii_uppercase(),
    }
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The tables the caller may read: the default schema's, filtered by the
/// `nl_tables` allowlist (empty: all).
pub async fn allowed_tables(state: &SessionState, allow: &str) -> Result<Vec<(String, Arc<dyn TableProvider>)>> {
    let options = state.config().options();
    let catalog = state.catalog_list().catalog(&options.catalog.default_catalog).ok_or_else(|| {
        DataFusionError::Plan(format!("the catalog {} is not registered", options.catalog.default_catalog))
    })?;
    let schema = catalog.schema(&options.catalog.default_schema).ok_or_else(|| {
        DataFusionError::Plan(format!("the schema {} is not registered", options.catalog.default_schema))
    })?;
    let allow: Vec<&str> = allow.split(',').filter(|t| !t.is_empty()).collect();
    let mut names = schema.table_names();
    names.sort();
    let mut tables = Vec::new();
    for name in names {
        if !allow.is_empty() && !allow.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        if let Some(table) = schema.table(&name).await? {
            tables.push((name, table));
        }
    }
    Ok(tables)
}

/// The knowledge of the given tables, built once per version.
pub async fn load(tables: &[(String, Arc<dyn TableProvider>)], metadata_dir: Option<&Path>) -> Result<Arc<Knowledge>> {
    let catalog_text = metadata_dir.and_then(|d| std::fs::read_to_string(d.join(CATALOG_FILE)).ok());
    let examples_text = metadata_dir.and_then(|d| std::fs::read_to_string(d.join(EXAMPLES_FILE)).ok());
    let mut parts: Vec<String> = tables.iter().map(|(n, t)| format!("{n}:{}", t.schema())).collect();
    parts.push(catalog_text.clone().unwrap_or_default());
    parts.push(examples_text.clone().unwrap_or_default());
    let version = cache::key(&parts.iter().map(String::as_str).collect::<Vec<_>>());

    static BUILT: OnceLock<Mutex<HashMap<String, Arc<Knowledge>>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    if let Some(k) = built.lock().unwrap_or_else(|e| e.into_inner()).get(&version) {
        return Ok(k.clone());
    }
    let file: CatalogFile = match &catalog_text {
        Some(text) => toml::from_str(text).map_err(|e| {
            DataFusionError::Plan(format!(
                "{} is not a valid catalog description: {e}",
                metadata_dir.map(|d| d.join(CATALOG_FILE)).unwrap_or_default().display()
            ))
        })?,
        None => CatalogFile::default(),
    };
    let mut infos = Vec::new();
    for (name, table) in tables {
        infos.push(describe(name, table, file.tables.get(name)).await?);
    }
    let joins = match &file.joins {
        Some(list) => list.iter().map(|j| parse_join(j, &infos)).collect::<Result<Vec<_>>>()?,
        None => infer_joins(&infos),
    };
    let examples = examples_text.map(|t| parse_examples(&t)).unwrap_or_default();
    let knowledge = Arc::new(Knowledge { tables: infos, joins, examples, version: version.clone() });
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if built.len() > 16 {
        built.clear();
    }
    built.insert(version, knowledge.clone());
    Ok(knowledge)
}

/// Columns, types, descriptions and sample values of one table.
async fn describe(name: &str, table: &Arc<dyn TableProvider>, doc: Option<&TableDoc>) -> Result<TableInfo> {
    let schema = table.schema();
    let text_columns: Vec<usize> =
        schema.fields().iter().enumerate().filter(|(_, f)| is_text(f.data_type())).map(|(i, _)| i).collect();
    let mut values: HashMap<usize, Vec<String>> = HashMap::new();
    if !text_columns.is_empty() {
        // Sample on a local session: the first rows of the table are enough
        // to tell categories (a handful of values) from free text.
        let ctx = SessionContext::new();
        ctx.register_table("sampled", table.clone())?;
        let list: Vec<String> =
            text_columns.iter().map(|&i| format!("\"{}\"", schema.field(i).name().replace('"', "\"\""))).collect();
        let batches =
            ctx.sql(&format!("SELECT {} FROM sampled LIMIT {SAMPLE_ROWS}", list.join(", "))).await?.collect().await?;
        for (k, &i) in text_columns.iter().enumerate() {
            let mut seen: std::collections::BTreeSet<String> = Default::default();
            let mut too_many = false;
            'batches: for batch in &batches {
                let column = datafusion::arrow::compute::cast(batch.column(k), &DataType::Utf8)?;
                let column = column.as_string::<i32>();
                for row in 0..column.len() {
                    if column.is_null(row) {
                        continue;
                    }
                    let v = column.value(row);
                    if v.len() > MAX_VALUE_LEN {
                        too_many = true;
                        break 'batches;
                    }
                    if seen.len() < MAX_VALUES || seen.contains(v) {
                        seen.insert(v.to_string());
                    } else {
                        too_many = true;
                        break 'batches;
                    }
                }
            }
            if !too_many && !seen.is_empty() {
                values.insert(i, seen.into_iter().collect());
            }
        }
    }
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let description = doc
                .and_then(|d| d.columns.get(f.name()).cloned())
                .or_else(|| f.metadata().get("description").or_else(|| f.metadata().get("comment")).cloned())
                .unwrap_or_default();
            ColumnInfo {
                name: f.name().clone(),
                sql_type: sql_type(f.data_type()),
                description,
                values: values.remove(&i).unwrap_or_default(),
            }
        })
        .collect();
    Ok(TableInfo {
        name: name.to_string(),
        description: doc.map(|d| d.description.clone()).unwrap_or_default(),
        columns,
    })
}

/// `"orders.o_custkey = customer.c_custkey AND ..."` against the known tables.
fn parse_join(text: &str, tables: &[TableInfo]) -> Result<Join> {
    let bad = |why: &str| DataFusionError::Plan(format!("{CATALOG_FILE}: join '{text}' {why}"));
    let mut join: Option<Join> = None;
    for part in text.split(" AND ").flat_map(|p| p.split(" and ")) {
        let (l, r) = part.split_once('=').ok_or_else(|| bad("needs table.column = table.column"))?;
        let side = |s: &str| -> Result<(String, String)> {
            let (t, c) = s.trim().split_once('.').ok_or_else(|| bad("needs table.column = table.column"))?;
            let info = tables.iter().find(|i| i.name == t).ok_or_else(|| bad(&format!("names no table {t}")))?;
            if !info.columns.iter().any(|col| col.name == c) {
                return Err(bad(&format!("names no column {c} of {t}")));
            }
            Ok((t.to_string(), c.to_string()))
        };
        let ((lt, lc), (rt, rc)) = (side(l)?, side(r)?);
        let j = join.get_or_insert_with(|| Join {
            left: lt.clone(),
            left_columns: vec![],
            right: rt.clone(),
            right_columns: vec![],
        });
        if j.left != lt || j.right != rt {
            return Err(bad("joins more than two tables"));
        }
        j.left_columns.push(lc);
        j.right_columns.push(rc);
    }
    join.ok_or_else(|| bad("is empty"))
}

/// The part of a column name after a table prefix such as `o_`.
pub(crate) fn stem(column: &str) -> &str {
    match column.split_once('_') {
        Some((prefix, rest)) if prefix.len() <= 3 && !rest.is_empty() => rest,
        _ => column,
    }
}

fn is_key(stem: &str) -> bool {
    stem.ends_with("key") || stem.ends_with("_id") || stem == "id"
}

/// Whether `table` owns the key `stem` (is the table it identifies): the key
/// is the table's first column, or the table's name starts with the key's
/// name (`part` owns `partkey`, `customer` owns `custkey`).
fn owns(table: &TableInfo, key_stem: &str) -> bool {
    let base = key_stem.trim_end_matches("key").trim_end_matches("_id").trim_end_matches('_');
    table.columns.first().is_some_and(|c| stem(&c.name) == key_stem)
        || (!base.is_empty() && table.name.starts_with(base))
}

/// Joins found from column names: two tables sharing key names (after the
/// table prefix) where one of them owns one of the keys.
fn infer_joins(tables: &[TableInfo]) -> Vec<Join> {
    let mut joins = Vec::new();
    for (i, a) in tables.iter().enumerate() {
        for b in &tables[i + 1..] {
            let mut join =
                Join { left: a.name.clone(), left_columns: vec![], right: b.name.clone(), right_columns: vec![] };
            let mut owned = false;
            for ca in &a.columns {
                let s = stem(&ca.name);
                if !is_key(s) {
                    continue;
                }
                if let Some(cb) = b.columns.iter().find(|c| stem(&c.name) == s) {
                    owned |= owns(a, s) || owns(b, s);
                    join.left_columns.push(ca.name.clone());
                    join.right_columns.push(cb.name.clone());
                }
            }
            // Shared keys join when one side owns one of them; the others
            // complete a composite key (`partsupp` by part and supplier).
            if owned {
                joins.push(join);
            }
        }
    }
    joins
}

fn parse_examples(text: &str) -> Vec<Example> {
    text.lines().filter_map(|l| serde_json::from_str::<Example>(l.trim()).ok()).collect()
}

/// Appends an accepted example to the metadata folder.
pub fn accept_example(metadata_dir: &Path, example: &Example) -> Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(metadata_dir)?;
    let path = metadata_dir.join(EXAMPLES_FILE);
    let mut line = serde_json::to_string(example).map_err(|e| DataFusionError::External(Box::new(e)))?;
    line.push('\n');
    std::fs::OpenOptions::new().create(true).append(true).open(&path)?.write_all(line.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn column(name: &str) -> ColumnInfo {
        ColumnInfo { name: name.into(), sql_type: "BIGINT".into(), description: String::new(), values: vec![] }
    }

    pub(crate) fn table(name: &str, columns: &[&str]) -> TableInfo {
        TableInfo {
            name: name.into(),
            description: String::new(),
            columns: columns.iter().map(|c| column(c)).collect(),
        }
    }

    #[test]
    fn joins_follow_key_names_and_owners() {
        let tables = vec![
            table("customer", &["c_custkey", "c_nationkey", "c_name"]),
            table("lineitem", &["l_orderkey", "l_partkey", "l_suppkey"]),
            table("nation", &["n_nationkey", "n_name", "n_regionkey"]),
            table("orders", &["o_orderkey", "o_custkey"]),
            table("partsupp", &["ps_partkey", "ps_suppkey"]),
            table("supplier", &["s_suppkey", "s_nationkey"]),
        ];
        let joins: Vec<String> = infer_joins(&tables).iter().map(Join::condition).collect();
        assert!(joins.contains(&"customer.c_custkey = orders.o_custkey".to_string()));
        assert!(joins.contains(&"customer.c_nationkey = nation.n_nationkey".to_string()));
        assert!(joins.contains(&"lineitem.l_orderkey = orders.o_orderkey".to_string()));
        assert!(joins.contains(
            &"lineitem.l_partkey = partsupp.ps_partkey AND lineitem.l_suppkey = partsupp.ps_suppkey".to_string()
        ));
        // Both only refer to a nation: no join of their own.
        assert!(!joins.iter().any(|j| j.starts_with("customer.c_nationkey = supplier")));
        let k = Knowledge { tables, joins: infer_joins(&[]), examples: vec![], version: String::new() };
        assert_eq!(k.connect(&["orders".into()]), vec!["orders".to_string()]);
    }

    #[test]
    fn connect_adds_the_tables_between() {
        let tables = vec![
            table("customer", &["c_custkey", "c_nationkey"]),
            table("nation", &["n_nationkey", "n_regionkey"]),
            table("orders", &["o_orderkey", "o_custkey"]),
            table("region", &["r_regionkey"]),
        ];
        let joins = infer_joins(&tables);
        let k = Knowledge { tables, joins, examples: vec![], version: String::new() };
        let mut got = k.connect(&["orders".into(), "region".into()]);
        got.sort();
        assert_eq!(got, vec!["customer", "nation", "orders", "region"]);
    }

    #[test]
    fn catalog_file_joins_are_checked() {
        let tables = vec![table("a", &["a_id"]), table("b", &["b_aid"])];
        assert_eq!(parse_join("a.a_id = b.b_aid", &tables).unwrap().condition(), "a.a_id = b.b_aid");
        assert!(parse_join("a.nope = b.b_aid", &tables).unwrap_err().to_string().contains("no column nope"));
        assert!(parse_join("a.a_id", &tables).is_err());
    }
}
