//! The lake catalog: every entry of the lake folder is a table.
//!
//! * `orders.parquet` (or `.csv`, `.json`, `.avro`, `.arrow`) is a table named `orders`;
//! * a folder `orders/` is a table named `orders` holding every file below it,
//!   hive-style partition folders (`year=1995/`) included, which become columns.
//!
//! Names starting with `.` or `_` are skipped (metadata and temporary files).
//! The folder is listed on every catalog lookup, so a table added to the lake
//! later is visible to the next query without a restart; a table's schema is
//! inferred once and inferred again when its folder or file changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableConfigExt, ListingTableUrl};
use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::parquet::file::reader::SerializedFileReader;
use datafusion::prelude::SessionConfig;

use crate::error::SchedulerError;

/// DataFusion's setting that reads Parquet strings as `Utf8View`.
///
/// LakeLink reads them as plain `Utf8`: a view array read from Parquet shares
/// its page buffers with neighbouring batches, and Arrow IPC (every shuffle,
/// every Flight result) sends those buffers whole with each batch: 9 GB on the
/// wire for the 1 GB of SF1 `lineitem`.
pub const FORCE_VIEW_TYPES: &str = "datafusion.execution.parquet.schema_force_view_types";

/// The lake's metadata folder (descriptions, joins, accepted NL examples);
/// its leading `_` keeps it out of the tables.
pub const METADATA_DIR: &str = "_lakelink";

/// The file extensions a table can be read from.
const TABLE_EXTENSIONS: &[&str] = &["parquet", "csv", "json", "avro", "arrow"];

/// A lake folder seen as one schema of tables.
#[derive(Debug)]
pub struct LakeSchema {
    root: PathBuf,
    /// The session used to list files and infer schemas.
    state: SessionState,
    cache: RwLock<HashMap<String, CachedTable>>,
}

#[derive(Debug, Clone)]
struct CachedTable {
    modified: Option<SystemTime>,
    table: Arc<dyn TableProvider>,
}

/// One table of the lake and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeEntry {
    /// The table's name.
    pub name: String,
    /// The file or folder holding it.
    pub path: PathBuf,
}

impl LakeSchema {
    /// Opens a lake given as a local folder or a `file://` URL.
    pub fn open(lake: &str) -> Result<Self, SchedulerError> {
        let root = lake_root(lake)?;
        let config = SessionConfig::new().set_bool(FORCE_VIEW_TYPES, false);
        let state = SessionStateBuilder::new().with_default_features().with_config(config).build();
        Ok(Self { root, state, cache: RwLock::new(HashMap::new()) })
    }

    /// The lake's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lists the tables of the lake, sorted by name.
    pub fn entries(&self) -> Vec<LakeEntry> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return vec![];
        };
        let mut entries: Vec<LakeEntry> = dir.filter_map(|e| e.ok()).filter_map(|e| table_entry(&e.path())).collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries
    }

    fn entry(&self, name: &str) -> Option<LakeEntry> {
        self.entries().into_iter().find(|e| e.name == name)
    }

    /// Whether the table `name` holds at least `min_bytes` on disk (its file,
    /// or the files below its folder, hidden ones left out). Stops counting
    /// once the limit is reached; false for a name that is not a table.
    pub fn table_holds_at_least(&self, name: &str, min_bytes: u64) -> bool {
        let Some(entry) = self.entry(name) else { return false };
        let mut total = 0u64;
        let mut pending = vec![entry.path];
        while let Some(path) = pending.pop() {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_dir() {
                let Ok(dir) = std::fs::read_dir(&path) else { continue };
                pending.extend(
                    dir.flatten()
                        .filter(|e| !e.file_name().to_string_lossy().starts_with(['.', '_']))
                        .map(|e| e.path()),
                );
            } else {
                total += meta.len();
                if total >= min_bytes {
                    return true;
                }
            }
        }
        false
    }

    /// Resolves every table now, so that problems show at start. Returns the
    /// tables that could not be read with the reason.
    pub async fn check_all(&self) -> Vec<(String, DataFusionError)> {
        let mut broken = vec![];
        for entry in self.entries() {
            if let Err(e) = self.load(&entry).await {
                broken.push((entry.name, e));
            }
        }
        broken
    }

    async fn load(&self, entry: &LakeEntry) -> Result<Arc<dyn TableProvider>> {
        let modified = modified_time(&entry.path);
        if let Some(cached) = self.cache.read().expect("lake cache lock").get(&entry.name)
            && cached.modified == modified
        {
            return Ok(cached.table.clone());
        }
        let table = self.infer(entry).await.map_err(|e| {
            DataFusionError::Plan(format!(
                "table '{}' ({}) cannot be read: {}",
                entry.name,
                entry.path.display(),
                e.strip_backtrace().replace("Parquet error: Parquet error: ", "Parquet error: ")
            ))
        })?;
        self.cache
            .write()
            .expect("lake cache lock")
            .insert(entry.name.clone(), CachedTable { modified, table: table.clone() });
        Ok(table)
    }

    async fn infer(&self, entry: &LakeEntry) -> Result<Arc<dyn TableProvider>> {
        let mut location = entry.path.to_string_lossy().into_owned();
        if entry.path.is_dir() && !location.ends_with('/') {
            location.push('/');
        }
        let url = ListingTableUrl::parse(&location)?;
        let config = ListingTableConfig::new(url.clone()).infer_options(&self.state).await?;
        let options = config.options.clone().ok_or_else(|| DataFusionError::Plan("no files".into()))?;
        // Partition values are plain strings: DataFusion's default dictionary
        // type does not survive Ballista's shuffles.
        let partitions: Vec<(String, DataType)> =
            options.infer_partitions(&self.state, &url).await?.into_iter().map(|name| (name, DataType::Utf8)).collect();
        let config = config
            .with_listing_options(options.with_table_partition_cols(partitions))
            .infer_schema(&self.state)
            .await
            .map_err(|e| match first_unreadable_parquet(&entry.path) {
                Some(file) => DataFusionError::Plan(format!(
                    "{} is not a readable Parquet file: {}",
                    file.display(),
                    e.strip_backtrace()
                )),
                None => e,
            })?;
        let config = match config.file_schema.as_deref().and_then(without_view_types) {
            Some(plain) => config.with_schema(Arc::new(plain)),
            None => config,
        };
        Ok(Arc::new(ListingTable::try_new(config)?))
    }
}

/// `schema` with its string and binary view columns as plain `Utf8` and
/// `Binary`, or `None` when it has none. Files written from Arrow may ask for
/// view types in their embedded schema (the TPC-H lakes of `lakelink datagen`
/// do), which [`FORCE_VIEW_TYPES`] cannot turn off; such columns are read as
/// views and made plain at the scan, before any shuffle could send shared page
/// buffers with every batch (a 48 MB message for one batch of TPC-H Q10's
/// customers at SF 10).
fn without_view_types(schema: &Schema) -> Option<Schema> {
    let plain = |t: &DataType| match t {
        DataType::Utf8View => Some(DataType::Utf8),
        DataType::BinaryView => Some(DataType::Binary),
        _ => None,
    };
    if !schema.fields().iter().any(|f| plain(f.data_type()).is_some()) {
        return None;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match plain(f.data_type()) {
            Some(t) => f.as_ref().clone().with_data_type(t),
            None => f.as_ref().clone(),
        })
        .collect();
    Some(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        self.entries().into_iter().map(|e| e.name).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.entry(name) {
            Some(entry) => self.load(&entry).await.map(Some),
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.entry(name).is_some()
    }
}

/// The table a lake entry stands for, if any.
fn table_entry(path: &Path) -> Option<LakeEntry> {
    let file_name = path.file_name()?.to_str()?;
    if file_name.starts_with('.') || file_name.starts_with('_') {
        return None;
    }
    if path.is_dir() {
        return Some(LakeEntry { name: file_name.to_string(), path: path.to_path_buf() });
    }
    let (stem, ext) = file_name.rsplit_once('.')?;
    TABLE_EXTENSIONS
        .contains(&ext.to_ascii_lowercase().as_str())
        .then(|| LakeEntry { name: stem.to_string(), path: path.to_path_buf() })
}

/// The first `.parquet` file at or below `path` whose footer cannot be read,
/// so that an error can name it.
fn first_unreadable_parquet(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        let mut children: Vec<PathBuf> = std::fs::read_dir(path).ok()?.flatten().map(|e| e.path()).collect();
        children.sort();
        return children.iter().find_map(|c| first_unreadable_parquet(c));
    }
    let is_parquet = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let file = std::fs::File::open(path).ok()?;
    (is_parquet && SerializedFileReader::new(file).is_err()).then(|| path.to_path_buf())
}

/// The newest modification time of a table's file or folder tree, so that a
/// file added anywhere below a table folder shows as a change.
fn modified_time(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let mut newest = meta.modified().ok()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ok()?.flatten() {
            if let Some(t) = modified_time(&entry.path()) {
                newest = newest.max(t);
            }
        }
    }
    Some(newest)
}

/// Turns the `--lake` argument into a local folder.
fn lake_root(lake: &str) -> Result<PathBuf, SchedulerError> {
    let path = match lake.split_once("://") {
        None => PathBuf::from(lake),
        Some(("file", rest)) => PathBuf::from(rest),
        Some((scheme, _)) => {
            return Err(SchedulerError::UnsupportedLake {
                lake: lake.to_string(),
                reason: format!("the '{scheme}://' scheme is not supported yet; use a local folder or file:// URL"),
            });
        }
    };
    let root = path
        .canonicalize()
        .map_err(|e| SchedulerError::UnsupportedLake { lake: lake.to_string(), reason: e.to_string() })?;
    if !root.is_dir() {
        return Err(SchedulerError::UnsupportedLake { lake: lake.to_string(), reason: "not a folder".into() });
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_tables_by_file_stem_or_folder() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("orders.parquet"), b"").unwrap();
        std::fs::write(dir.join("notes.txt"), b"").unwrap();
        std::fs::create_dir(dir.join("lineitem")).unwrap();
        std::fs::create_dir(dir.join(".lakelink")).unwrap();
        std::fs::write(dir.join("_SUCCESS"), b"").unwrap();
        let lake = LakeSchema::open(dir.to_str().unwrap()).unwrap();
        let names: Vec<_> = lake.entries().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["lineitem", "orders"]);
    }

    #[test]
    fn unsupported_scheme_is_a_clear_error() {
        let err = LakeSchema::open("s3://bucket/lake").unwrap_err().to_string();
        assert!(err.contains("s3://"), "{err}");
    }

    #[tokio::test]
    async fn view_typed_files_are_read_as_plain_strings() {
        use datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray, StringViewArray};
        let dir = tempfile_dir();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8View, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringViewArray::from(vec!["a short one", "a string longer than twelve bytes"])),
            ],
        )
        .unwrap();
        let file = std::fs::File::create(dir.join("people.parquet")).unwrap();
        let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        let lake = LakeSchema::open(dir.to_str().unwrap()).unwrap();
        let table = lake.table("people").await.unwrap().unwrap();
        assert_eq!(table.schema().field_with_name("name").unwrap().data_type(), &DataType::Utf8);
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("people", table).unwrap();
        let batches = ctx.sql("SELECT name FROM people ORDER BY id").await.unwrap().collect().await.unwrap();
        let names = batches[0].column(0).as_any().downcast_ref::<StringArray>().expect("plain Utf8 values");
        assert_eq!(names.len(), 2);
        assert_eq!(names.value(1), "a string longer than twelve bytes");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lakelink-catalog-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
