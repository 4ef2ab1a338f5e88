//! The lake catalog: every entry of the lake folder is a table.
//!
//! * `orders.parquet` (or `.csv`, `.json`, `.avro`, `.arrow`) is a table named `orders`;
//! * a folder `orders/` is a table named `orders` holding every file below it,
//!   hive-style partition folders (`year=1995/`) included, which become columns.
//!
//! Names starting with `.` or `_` are skipped (metadata and temporary files).
//! The lake is a local folder or a folder of an object store
//! ([`lakelink_protocol::store`]).
//!
//! **Listing.** The catalog lists the whole lake in one recursive listing
//! and keeps what it saw: the tables, each table's files (handed to
//! DataFusion's file-list cache, so planning a scan lists nothing) and each
//! table's size. It lists again before each statement when the refresh
//! interval is 0 (the default for a local folder, where a listing costs
//! microseconds), every interval otherwise (60 s for an object store), and
//! on `REFRESH LAKE`. A table whose files changed (added, removed,
//! rewritten) has its schema inferred again at its next use; Parquet
//! footers are cached by DataFusion, keyed by file and checked against the
//! file's size and time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableConfigExt, ListingTableUrl};
use datafusion::execution::SessionState;
use datafusion::execution::cache::TableScopedPath;
use datafusion::execution::cache::cache_manager::CachedFileList;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use futures::TryStreamExt;
use lakelink_protocol::store::LakeLocation;
use object_store::ObjectMeta;
use object_store::path::Path;

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

/// The refresh interval of a lake on an object store when none is given.
pub const DEFAULT_REMOTE_REFRESH: Duration = Duration::from_secs(60);

/// The memory DataFusion's file-list cache may hold (the lake's listing).
pub const LIST_CACHE_BYTES: usize = 256 << 20;

/// A lake folder seen as one schema of tables.
#[derive(Debug)]
pub struct LakeSchema {
    location: LakeLocation,
    /// The session used to infer schemas; its runtime (object stores and
    /// caches) is the one every planning session of the scheduler shares.
    state: SessionState,
    /// How old the listing may grow before a statement lists again; zero:
    /// every statement lists.
    refresh: Duration,
    /// Each table's files as last listed.
    listing: RwLock<BTreeMap<String, Arc<TableFiles>>>,
    /// Held for a whole listing (one at a time): what of the store's
    /// metadata folder was brought over (file name, size, time).
    metadata_synced: tokio::sync::Mutex<HashMap<String, (u64, i64)>>,
    /// Each table's provider, inferred from the files the listing shows.
    cache: RwLock<HashMap<String, Arc<dyn TableProvider>>>,
    /// The metadata folder the NL compiler reads (see [`LakeSchema::metadata_dir`]).
    metadata_dir: std::path::PathBuf,
}

/// One table's files as listed.
#[derive(Debug, Clone, PartialEq)]
struct TableFiles {
    /// The table's file, or its folder.
    path: Path,
    folder: bool,
    /// Every object below the folder (or the file), as DataFusion lists
    /// them, by path: a change to any tells a changed table.
    objects: Vec<ObjectMeta>,
    /// Bytes of the table's files (hidden ones left out).
    bytes: u64,
}

/// One table of the lake and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeEntry {
    /// The table's name.
    pub name: String,
    /// The file or folder holding it, as a user knows it (a local path or a
    /// store URL).
    pub location: String,
}

/// What a listing of the lake found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshSummary {
    /// Tables in the lake.
    pub tables: usize,
    /// Files of those tables.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Tables added, removed or with files changed since the last listing.
    pub changed: usize,
}

impl LakeSchema {
    /// Opens a lake (a local folder, `file://` or object-store URL) planned
    /// with `runtime`'s stores and caches; the lake is listed again after
    /// `refresh` (`None`: 0 for a local folder, [`DEFAULT_REMOTE_REFRESH`]
    /// for a store). Lists it once; a store that cannot be listed is an
    /// error here.
    pub async fn open(lake: &str, runtime: Arc<RuntimeEnv>, refresh: Option<Duration>) -> Result<Self, SchedulerError> {
        let unsupported = |reason: String| SchedulerError::UnsupportedLake { lake: lake.to_string(), reason };
        let location = LakeLocation::parse(lake).map_err(unsupported)?;
        location.check().await.map_err(unsupported)?;
        let refresh = refresh.unwrap_or(if location.is_remote() { DEFAULT_REMOTE_REFRESH } else { Duration::ZERO });
        let config = SessionConfig::new().set_bool(FORCE_VIEW_TYPES, false);
        let state =
            SessionStateBuilder::new().with_default_features().with_config(config).with_runtime_env(runtime).build();
        let metadata_dir = match &location.local {
            Some(root) => root.join(METADATA_DIR),
            None => state_dir().join("lakes").join(file_name_of(&location.to_string())).join(METADATA_DIR),
        };
        let lake_schema = Self {
            location,
            state,
            refresh,
            listing: RwLock::default(),
            metadata_synced: tokio::sync::Mutex::new(HashMap::new()),
            cache: RwLock::default(),
            metadata_dir,
        };
        lake_schema.refresh().await.map_err(|e| unsupported(e.strip_backtrace()))?;
        Ok(lake_schema)
    }

    /// Where the lake is.
    pub fn location(&self) -> &LakeLocation {
        &self.location
    }

    /// The lake's metadata folder (`_lakelink/`: `catalog.toml`,
    /// `nl_examples.jsonl`) as the NL compiler reads it: the lake's own for a
    /// local folder. For a lake on a store, a copy in the scheduler's state
    /// folder (`$LAKELINK_STATE_DIR`, else `~/.local/share/lakelink`, under
    /// `lakes/<lake URL as a file name>/`), brought over at every listing:
    /// `catalog.toml` replaced when the store's changed, the store's
    /// examples added to the ones kept here; examples accepted with
    /// `nl_accept` stay in the copy (the store is not written to).
    pub fn metadata_dir(&self) -> &std::path::Path {
        &self.metadata_dir
    }

    /// How old the listing may grow before it is taken again.
    pub fn refresh_interval(&self) -> Duration {
        self.refresh
    }

    /// Lists the lake before a statement when the refresh interval is 0
    /// (otherwise [`refresh_every`] keeps the listing fresh). A listing that
    /// fails keeps the previous one, and says so in the log: statements keep
    /// working on what was seen.
    pub async fn refresh_for_statement(&self) {
        if self.refresh.is_zero()
            && let Err(e) = self.refresh().await
        {
            tracing::warn!("the lake {} could not be listed; using the last listing: {e}", self.location);
        }
    }

    /// Lists the lake now (`REFRESH LAKE`, the refresh timer): tables
    /// added, removed or changed are seen from the next statement on.
    pub async fn refresh(&self) -> Result<RefreshSummary> {
        let mut synced = self.metadata_synced.lock().await;
        let (tables, metadata) = self.list().await?;
        if self.location.is_remote() {
            self.bring_metadata(metadata, &mut synced).await;
        }
        let mut listing = self.listing.write().expect("lake listing lock");
        let list_cache = self.state.runtime_env().cache_manager.get_list_files_cache();
        let mut changed = 0;
        for (name, old) in listing.iter() {
            if tables.get(name) != Some(old) {
                changed += 1;
                self.cache.write().expect("lake cache lock").remove(name);
                if let Some(cache) = &list_cache {
                    cache.remove(&TableScopedPath { table: None, path: old.path.clone() });
                }
            }
        }
        for (name, new) in &tables {
            let old = listing.get(name);
            if old.is_none() {
                changed += 1;
            }
            if old == Some(new) || !new.folder {
                continue;
            }
            // The table's files, as DataFusion would list them: planning a
            // scan of it needs no listing of its own.
            if let Some(cache) = &list_cache {
                cache.put(
                    &TableScopedPath { table: None, path: new.path.clone() },
                    CachedFileList::new(new.objects.clone()),
                );
            }
        }
        let summary = RefreshSummary {
            tables: tables.len(),
            files: tables.values().map(|t| t.objects.len()).sum(),
            bytes: tables.values().map(|t| t.bytes).sum(),
            changed,
        };
        *listing = tables;
        Ok(summary)
    }
}

/// Lists `lake` again every refresh interval in the background, so that
/// statements never wait for a listing; ends when the lake is dropped.
pub fn refresh_every(lake: &Arc<LakeSchema>) {
    if lake.refresh.is_zero() {
        return;
    }
    let (lake, every) = (Arc::downgrade(lake), lake.refresh);
    // Bare on purpose: a timer that ends with the lake.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(lake) = lake.upgrade() else { return };
            if let Err(e) = lake.refresh().await {
                tracing::warn!("the lake {} could not be listed; using the last listing: {e}", lake.location);
            }
        }
    });
}

impl LakeSchema {
    /// Copies the store's metadata files that changed since the last
    /// listing into [`LakeSchema::metadata_dir`]. A failure is logged: the
    /// NL compiler then works with the copy it has.
    async fn bring_metadata(&self, files: Vec<ObjectMeta>, synced: &mut HashMap<String, (u64, i64)>) {
        use object_store::ObjectStoreExt;
        for meta in files {
            let Some(name) = meta.location.filename().map(str::to_string) else { continue };
            let seen = (meta.size, meta.last_modified.timestamp_millis());
            if synced.get(&name) == Some(&seen) {
                continue;
            }
            let copied = async {
                let bytes = self.location.store.get(&meta.location).await?.bytes().await?;
                std::fs::create_dir_all(&self.metadata_dir)?;
                let path = self.metadata_dir.join(&name);
                if name == lakelink_nl::knowledge::EXAMPLES_FILE {
                    merge_lines(&path, &String::from_utf8_lossy(&bytes))?;
                } else {
                    std::fs::write(&path, &bytes)?;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            match copied.await {
                Ok(()) => {
                    synced.insert(name, seen);
                }
                Err(e) => tracing::warn!("cannot copy {} of the lake: {e}", self.location.show(&meta.location)),
            }
        }
    }

    /// One recursive listing of the lake, grouped by table, and the files of
    /// its metadata folder.
    async fn list(&self) -> Result<(BTreeMap<String, Arc<TableFiles>>, Vec<ObjectMeta>)> {
        let root = &self.location.prefix;
        let mut objects: Vec<ObjectMeta> = self.location.store.list(Some(root)).try_collect().await?;
        // Stores list in key order; a local folder in the order its
        // directories give. One order makes two listings comparable.
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        let mut tables: BTreeMap<String, TableFiles> = BTreeMap::new();
        let mut metadata = vec![];
        for meta in objects {
            let Some(parts) = meta.location.prefix_match(root) else { continue };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            if parts.len() == 2 && parts[0] == METADATA_DIR {
                metadata.push(meta);
                continue;
            }
            let Some(first) = parts.first().filter(|f| !f.starts_with(['.', '_'])) else { continue };
            if parts.len() == 1 {
                let Some(name) = table_file_stem(first) else { continue };
                // A folder of the same name wins over a file.
                if tables.get(name).is_none_or(|t| !t.folder) {
                    let bytes = meta.size;
                    let path = meta.location.clone();
                    tables.insert(name.to_string(), TableFiles { path, folder: false, objects: vec![meta], bytes });
                }
                continue;
            }
            let table = tables.entry(first.clone()).or_insert_with(|| TableFiles {
                path: root.clone().join(first.as_str()),
                folder: true,
                objects: vec![],
                bytes: 0,
            });
            if !table.folder {
                *table =
                    TableFiles { path: root.clone().join(first.as_str()), folder: true, objects: vec![], bytes: 0 };
            }
            if !parts[1..].iter().any(|p| p.starts_with(['.', '_'])) {
                table.bytes += meta.size;
            }
            table.objects.push(meta);
        }
        Ok((tables.into_iter().map(|(name, files)| (name, Arc::new(files))).collect(), metadata))
    }

    /// The tables of the lake as last listed, sorted by name.
    pub fn entries(&self) -> Vec<LakeEntry> {
        let listing = self.listing.read().expect("lake listing lock");
        listing
            .iter()
            .map(|(name, t)| LakeEntry { name: name.clone(), location: self.location.show(&t.path) })
            .collect()
    }

    fn files(&self, name: &str) -> Option<Arc<TableFiles>> {
        self.listing.read().expect("lake listing lock").get(name).cloned()
    }

    /// Whether the table `name` holds at least `min_bytes` (its file, or the
    /// files below its folder, hidden ones left out), as last listed; false
    /// for a name that is not a table.
    pub fn table_holds_at_least(&self, name: &str, min_bytes: u64) -> bool {
        self.files(name).is_some_and(|t| t.bytes >= min_bytes)
    }

    /// Resolves every table now, so that problems show at start. Returns the
    /// tables that could not be read with the reason.
    pub async fn check_all(&self) -> Vec<(String, DataFusionError)> {
        let mut broken = vec![];
        for entry in self.entries() {
            if let Err(e) = self.table(&entry.name).await {
                broken.push((entry.name, e));
            }
        }
        broken
    }

    async fn load(&self, name: &str, files: &TableFiles) -> Result<Arc<dyn TableProvider>> {
        if let Some(cached) = self.cache.read().expect("lake cache lock").get(name) {
            return Ok(cached.clone());
        }
        let table = self.infer(files).await.map_err(|e| {
            DataFusionError::Plan(format!(
                "table '{name}' ({}) cannot be read: {}",
                self.location.show(&files.path),
                e.strip_backtrace().replace("Parquet error: Parquet error: ", "Parquet error: ")
            ))
        })?;
        // Kept only while the listing still shows the files it was inferred from.
        if self.files(name).is_some_and(|now| *now == *files) {
            self.cache.write().expect("lake cache lock").insert(name.to_string(), table.clone());
        }
        Ok(table)
    }

    async fn infer(&self, files: &TableFiles) -> Result<Arc<dyn TableProvider>> {
        let url = ListingTableUrl::parse(self.location.url_of(&files.path, files.folder))?;
        let config = ListingTableConfig::new(url.clone()).infer_options(&self.state).await?;
        let options = config.options.clone().ok_or_else(|| DataFusionError::Plan("no files".into()))?;
        // Partition values are plain strings: DataFusion's default dictionary
        // type does not survive Ballista's shuffles.
        let partitions: Vec<(String, DataType)> =
            options.infer_partitions(&self.state, &url).await?.into_iter().map(|name| (name, DataType::Utf8)).collect();
        let inferred =
            config.with_listing_options(options.with_table_partition_cols(partitions)).infer_schema(&self.state).await;
        let config = match inferred {
            Ok(config) => config,
            Err(e) => {
                return Err(match self.first_unreadable_parquet(files).await {
                    Some(file) => DataFusionError::Plan(format!(
                        "{} is not a readable Parquet file: {}",
                        self.location.show(&file),
                        e.strip_backtrace()
                    )),
                    None => e,
                });
            }
        };
        let config = match config.file_schema.as_deref().and_then(without_view_types) {
            Some(plain) => config.with_schema(Arc::new(plain)),
            None => config,
        };
        Ok(Arc::new(ListingTable::try_new(config)?))
    }

    /// The first `.parquet` file of a table whose footer cannot be read, so
    /// that an error can name it.
    async fn first_unreadable_parquet(&self, files: &TableFiles) -> Option<Path> {
        let store = &self.location.store;
        for meta in &files.objects {
            if !meta.location.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet")) {
                continue;
            }
            if !parquet_footer_reads(store.as_ref(), meta).await {
                return Some(meta.location.clone());
            }
        }
        None
    }
}

/// Whether the Parquet footer of `meta` can be read (two range reads).
async fn parquet_footer_reads(store: &dyn object_store::ObjectStore, meta: &ObjectMeta) -> bool {
    use datafusion::parquet::file::metadata::ParquetMetaDataReader;
    use object_store::ObjectStoreExt;
    if meta.size < 12 {
        return false;
    }
    let Ok(tail) = store.get_range(&meta.location, meta.size - 8..meta.size).await else { return false };
    if &tail[4..] != b"PAR1" {
        return false;
    }
    let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if len + 8 > meta.size {
        return false;
    }
    let Ok(footer) = store.get_range(&meta.location, meta.size - 8 - len..meta.size - 8).await else { return false };
    ParquetMetaDataReader::decode_metadata(&footer).is_ok()
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
        self.listing.read().expect("lake listing lock").keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.files(name) {
            Some(files) => self.load(name, &files).await.map(Some),
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.listing.read().expect("lake listing lock").contains_key(name)
    }
}

/// The scheduler's state folder: `$LAKELINK_STATE_DIR`, else
/// `~/.local/share/lakelink`.
fn state_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("LAKELINK_STATE_DIR") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".local").join("share").join("lakelink")
}

/// `text` with every character but letters, digits, `-` and `.` made `_`.
fn file_name_of(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

/// Appends to the file at `path` the lines of `text` it does not hold yet.
fn merge_lines(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let held = std::fs::read_to_string(path).unwrap_or_default();
    let known: std::collections::HashSet<&str> = held.lines().collect();
    let new: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !known.contains(l)).collect();
    if new.is_empty() {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    if !held.is_empty() && !held.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    for line in new {
        writeln!(file, "{line}")?;
    }
    Ok(())
}

/// The table name of a file directly in the lake folder, if it is a table.
fn table_file_stem(file_name: &str) -> Option<&str> {
    let (stem, ext) = file_name.rsplit_once('.')?;
    TABLE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()).then_some(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &std::path::Path, refresh: Option<Duration>) -> LakeSchema {
        LakeSchema::open(dir.to_str().unwrap(), Arc::new(RuntimeEnv::default()), refresh).await.unwrap()
    }

    #[tokio::test]
    async fn entries_name_tables_by_file_stem_or_folder() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("orders.parquet"), b"").unwrap();
        std::fs::write(dir.join("notes.txt"), b"").unwrap();
        std::fs::create_dir(dir.join("lineitem")).unwrap();
        std::fs::write(dir.join("lineitem/part-0.parquet"), b"1234").unwrap();
        std::fs::write(dir.join("lineitem/_SUCCESS"), b"123456").unwrap();
        std::fs::create_dir(dir.join("empty")).unwrap();
        std::fs::create_dir(dir.join(".lakelink")).unwrap();
        std::fs::write(dir.join(".lakelink/x.parquet"), b"").unwrap();
        std::fs::write(dir.join("_SUCCESS"), b"").unwrap();
        let lake = open(&dir, None).await;
        let names: Vec<_> = lake.entries().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["lineitem", "orders"]);
        assert!(lake.table_holds_at_least("lineitem", 4) && !lake.table_holds_at_least("lineitem", 5));
        assert_eq!(lake.refresh_interval(), Duration::ZERO);
    }

    #[tokio::test]
    async fn unsupported_scheme_is_a_clear_error() {
        let err = LakeSchema::open("ftp://host/lake", Arc::new(RuntimeEnv::default()), None).await.unwrap_err();
        assert!(err.to_string().contains("ftp://"), "{err}");
    }

    #[tokio::test]
    async fn a_listing_is_kept_until_the_lake_is_refreshed() {
        let dir = tempfile_dir();
        write_ids(&dir.join("t/part-0.parquet"), &[1, 2]);
        let lake = open(&dir, Some(Duration::from_secs(3600))).await;
        let count = |lake: &LakeSchema| lake.table_names().len();
        assert_eq!(count(&lake), 1);
        write_ids(&dir.join("t/part-1.parquet"), &[3]);
        write_ids(&dir.join("u.parquet"), &[4]);
        lake.refresh_for_statement().await;
        assert_eq!(count(&lake), 1, "listed again before the interval passed");
        let summary = lake.refresh().await.unwrap();
        assert_eq!((summary.tables, summary.files, summary.changed), (2, 3, 2));
        assert_eq!(lake.refresh().await.unwrap().changed, 0);
        // The new file is planned from the seeded file list.
        let ctx = datafusion::prelude::SessionContext::new_with_state(lake.state.clone());
        ctx.register_table("t", lake.table("t").await.unwrap().unwrap()).unwrap();
        let batches = ctx.sql("SELECT count(*) FROM t").await.unwrap().collect().await.unwrap();
        let n = batches[0].column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap().value(0);
        assert_eq!(n, 3);
    }

    #[test]
    fn merged_examples_keep_both_sides_once() {
        let dir = tempfile_dir();
        let path = dir.join("nl_examples.jsonl");
        std::fs::write(&path, "{\"a\":1}").unwrap();
        merge_lines(&path, "{\"b\":2}\n{\"a\":1}\n\n").unwrap();
        merge_lines(&path, "{\"b\":2}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(file_name_of("s3://bucket/a b/lake"), "s3___bucket_a_b_lake");
    }

    fn write_ids(path: &std::path::Path, ids: &[i64]) {
        use datafusion::arrow::array::{Int64Array, RecordBatch};
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids.to_vec()))]).unwrap();
        let mut writer =
            datafusion::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
                .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
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

        let lake = open(&dir, None).await;
        let table = lake.table("people").await.unwrap().unwrap();
        assert_eq!(table.schema().field_with_name("name").unwrap().data_type(), &DataType::Utf8);
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("people", table).unwrap();
        let batches = ctx.sql("SELECT name FROM people ORDER BY id").await.unwrap().collect().await.unwrap();
        let names = batches[0].column(0).as_any().downcast_ref::<StringArray>().expect("plain Utf8 values");
        assert_eq!(names.len(), 2);
        assert_eq!(names.value(1), "a string longer than twelve bytes");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lakelink-catalog-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
