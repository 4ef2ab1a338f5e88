//! `lakelink datagen`: demo lakes as Parquet, one folder per table, large
//! tables split into several files so that every executor gets a share of
//! the scan.
//!
//! * `tpch`: the eight TPC-H tables ([`tpch`](crate::datagen::tpch));
//! * `shop`: an online shop with customer reviews in plain sentences whose
//!   sentiment and topic are known ([`shop`](crate::datagen::shop)), for the `llm_*` functions.
//!   quality and cost measurements and as a second vocabulary for the NL
//!   compiler.

/// The online-shop lake.
pub mod shop;

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator,
    RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow, SupplierArrow,
};

use crate::error::ClientError;

/// Rows aimed at per file.
const ROWS_PER_FILE: f64 = 1_000_000.0;
/// Rows per record batch (and Parquet row group granularity).
const BATCH_ROWS: usize = 64 * 1024;

/// The TPC-H tables with their rows at scale factor 1.
const TABLES: &[(&str, f64)] = &[
    ("lineitem", 6_001_215.0),
    ("orders", 1_500_000.0),
    ("partsupp", 800_000.0),
    ("part", 200_000.0),
    ("customer", 150_000.0),
    ("supplier", 10_000.0),
    ("nation", 25.0),
    ("region", 5.0),
];

/// Descriptions and join keys of the TPC-H tables for the NL compiler,
/// written to `<lake>/_lakelink/catalog.toml`.
const CATALOG: &str = include_str!("tpch_catalog.toml");

/// Accepted question/SQL examples for the demo lake, written to
/// `<lake>/_lakelink/nl_examples.jsonl` when the lake has none.
const EXAMPLES: &str = include_str!("tpch_examples.jsonl");

/// Generates TPC-H at `scale` into `out`; returns (table, files, rows) per table.
pub fn tpch(scale: f64, out: &Path) -> Result<Vec<(String, usize, usize)>, ClientError> {
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(ClientError::Usage(format!("scale factor must be a positive number, got {scale}")));
    }
    std::fs::create_dir_all(out).map_err(|e| ClientError::Io { path: out.to_path_buf(), source: e })?;
    let mut summary = vec![];
    for &(table, rows_at_sf1) in TABLES {
        let rows = if matches!(table, "nation" | "region") { rows_at_sf1 } else { rows_at_sf1 * scale };
        // Tables with more than a few thousand rows are split at least in two.
        let parts = if rows < 5_000.0 { 1 } else { ((rows / ROWS_PER_FILE).ceil() as i32).max(2) };
        let dir = out.join(table);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| ClientError::Io { path: dir.clone(), source: e })?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| ClientError::Io { path: dir.clone(), source: e })?;
        let written = write_parts(table, scale, parts, &dir)?;
        summary.push((table.to_string(), parts as usize, written));
    }
    let metadata = out.join("_lakelink");
    std::fs::create_dir_all(&metadata).map_err(|e| ClientError::Io { path: metadata.clone(), source: e })?;
    let catalog = metadata.join("catalog.toml");
    std::fs::write(&catalog, CATALOG).map_err(|e| ClientError::Io { path: catalog, source: e })?;
    // A few accepted examples to start with; examples users accept later are kept.
    let examples = metadata.join("nl_examples.jsonl");
    if !examples.exists() {
        std::fs::write(&examples, EXAMPLES).map_err(|e| ClientError::Io { path: examples, source: e })?;
    }
    Ok(summary)
}

/// Writes the parts of one table, two at a time.
fn write_parts(table: &str, scale: f64, parts: i32, dir: &Path) -> Result<usize, ClientError> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as i32;
    let mut total = 0;
    let mut part = 1;
    while part <= parts {
        let last = (part + threads - 1).min(parts);
        let results: Vec<Result<usize, ClientError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (part..=last)
                .map(|p| {
                    let path = dir.join(format!("part-{}.parquet", p - 1));
                    s.spawn(move || write_part(table, scale, p, parts, &path))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("datagen thread panicked")).collect()
        });
        for r in results {
            total += r?;
        }
        part = last + 1;
    }
    Ok(total)
}

fn write_part(table: &str, scale: f64, part: i32, parts: i32, path: &Path) -> Result<usize, ClientError> {
    let (schema, batches): (SchemaRef, Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>>) =
        match table {
            "lineitem" => {
                boxed(LineItemArrow::new(LineItemGenerator::new(scale, part, parts)).with_batch_size(BATCH_ROWS))
            }
            "orders" => boxed(OrderArrow::new(OrderGenerator::new(scale, part, parts)).with_batch_size(BATCH_ROWS)),
            "partsupp" => {
                boxed(PartSuppArrow::new(PartSuppGenerator::new(scale, part, parts)).with_batch_size(BATCH_ROWS))
            }
            "part" => boxed(PartArrow::new(PartGenerator::new(scale, part, parts)).with_batch_size(BATCH_ROWS)),
            "customer" => {
                boxed(CustomerArrow::new(CustomerGenerator::new(scale, part, parts)).with_batch_size(BATCH_ROWS))
            }
            "supplier" => {
                boxed(SupplierArrow::new(SupplierGenerator::new(scale, part, parts)).with_batch_size(BATCH_ROWS))
            }
            "nation" => boxed(NationArrow::new(NationGenerator::new(scale, part, parts)).with_batch_size(BATCH_ROWS)),
            "region" => boxed(RegionArrow::new(RegionGenerator::new(scale, part, parts)).with_batch_size(BATCH_ROWS)),
            other => return Err(ClientError::Usage(format!("unknown TPC-H table {other}"))),
        };
    write_batches(path, schema, batches)
}

/// Writes record batches as one Parquet file (zstd); returns the rows written.
pub(crate) fn write_batches(
    path: &Path,
    schema: SchemaRef,
    batches: impl IntoIterator<Item = Result<RecordBatch, arrow::error::ArrowError>>,
) -> Result<usize, ClientError> {
    let path = path.to_path_buf();
    let file = std::fs::File::create(&path).map_err(|e| ClientError::Io { path: path.clone(), source: e })?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level")))
        .set_max_row_group_row_count(Some(BATCH_ROWS * 8))
        .build();
    let parquet_err =
        |e: parquet::errors::ParquetError| ClientError::Io { path: path.clone(), source: std::io::Error::other(e) };
    // No embedded Arrow schema: it would ask readers for the generator's
    // `Utf8View` strings, and each engine picks its own string type anyway.
    let options = ArrowWriterOptions::new().with_properties(props).with_skip_arrow_metadata(true);
    let mut writer = ArrowWriter::try_new_with_options(file, schema, options).map_err(parquet_err)?;
    let mut rows = 0;
    for batch in batches {
        let batch = batch.map_err(|e| ClientError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
        rows += batch.num_rows();
        writer.write(&batch).map_err(parquet_err)?;
    }
    writer.close().map_err(parquet_err)?;
    Ok(rows)
}

fn boxed<I>(it: I) -> (SchemaRef, Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>>)
where
    I: arrow::array::RecordBatchReader + 'static,
{
    (arrow::array::RecordBatchReader::schema(&it), Box::new(it))
}

/// `out` when it names an object store (`s3://`, `gs://`, ...), not a local
/// folder or `file://` URL.
pub fn store_url(out: &str) -> Option<&str> {
    out.split_once("://").filter(|(scheme, _)| *scheme != "file").map(|_| out)
}

/// Uploads every file below `folder` to the lake at `url`, keeping the
/// layout; large files go in parts.
pub async fn upload(folder: &Path, url: &str) -> Result<(), ClientError> {
    use object_store::{ObjectStoreExt, WriteMultipart};
    use std::io::Read;
    let lake = lakelink_protocol::store::LakeLocation::parse(url)
        .map_err(|reason| ClientError::Store(format!("cannot use {url}: {reason}")))?;
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| ClientError::Io { path: dir.clone(), source: e })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(folder).expect("below the folder");
            let mut key = lake.prefix.clone();
            for part in relative.iter() {
                key = key.join(part.to_string_lossy().as_ref());
            }
            let failed = |e: object_store::Error| ClientError::Store(format!("cannot write {}: {e}", lake.show(&key)));
            let mut writer = WriteMultipart::new(lake.store.put_multipart(&key).await.map_err(failed)?);
            let mut file = std::fs::File::open(&path).map_err(|e| ClientError::Io { path: path.clone(), source: e })?;
            let mut buffer = vec![0u8; 8 << 20];
            loop {
                let n = file.read(&mut buffer).map_err(|e| ClientError::Io { path: path.clone(), source: e })?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await.map_err(failed)?;
                writer.write(&buffer[..n]);
            }
            writer.finish().await.map_err(failed)?;
        }
    }
    Ok(())
}
