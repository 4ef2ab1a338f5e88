//! Writing results as aligned tables, CSV or JSON lines.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::StreamExt;

use crate::connection::ResultStream;
use crate::error::ClientError;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a border.
    Table,
    /// Comma-separated values with a header row; NULL is an empty field.
    Csv,
    /// One JSON object per row.
    Json,
}

/// Writes a result to `out`; returns the number of rows. The table format
/// shows at most `max_rows` rows (it has to hold what it shows to align the
/// columns); CSV and JSON stream everything.
pub async fn write_result(
    result: ResultStream,
    format: Format,
    max_rows: usize,
    out: &mut (dyn Write + Send),
) -> Result<usize, ClientError> {
    let schema: SchemaRef = result.schema.clone().into();
    let mut batches = result.batches;
    let mut rows = 0;
    match format {
        Format::Table => {
            let mut shown: Vec<RecordBatch> = vec![];
            let mut shown_rows = 0;
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                if shown_rows < max_rows {
                    let take = (max_rows - shown_rows).min(batch.num_rows());
                    shown_rows += take;
                    shown.push(batch.slice(0, take));
                }
            }
            if shown.is_empty() {
                shown.push(RecordBatch::new_empty(schema));
            }
            let table = arrow::util::pretty::pretty_format_batches(&shown)?;
            writeln!(out, "{table}").map_err(io)?;
            if rows > shown_rows {
                writeln!(out, "({rows} rows, the first {shown_rows} shown; use --format csv for all)").map_err(io)?;
            }
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut *out);
            let mut wrote_any = false;
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
                wrote_any = true;
            }
            if !wrote_any {
                writer.write(&RecordBatch::new_empty(schema))?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut *out);
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            writer.finish()?;
        }
    }
    out.flush().map_err(io)?;
    Ok(rows)
}

fn io(e: std::io::Error) -> ClientError {
    ClientError::Io { path: "<output>".into(), source: e }
}
