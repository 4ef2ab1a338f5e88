//! The `system` schema: tables about LakeLink itself, answered by the
//! scheduler.
//!
//! * `system.model_calls`: every model request of every process (and every
//!   batch of rows answered from the cache), read when the table is scanned
//!   from the scheduler's trail folder (`lakelink.llm.trail_dir`) and from
//!   every executor's host (`lakelink_protocol::members`), each trail file
//!   once (executors on the scheduler's host share its folder); a filter on
//!   `time` (`>`, `>=`) or `query_id` (`=`) narrows what is read
//!   ([`Scan`](lakelink_model::trail::Scan)).
//! * `system.nl_tasks`: every compiled `nl_*` call: question, attempts with
//!   their errors, retrieved tables, final SQL, outcome and timings.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use lakelink_model::trail;
use lakelink_protocol::members::TrailChunk;
use lakelink_udf::LlmOptions;

use crate::query::Cluster;

/// The schema name.
pub const SCHEMA: &str = "system";

/// The `system` schema; with a cluster, `model_calls` holds its executors'
/// hosts' calls too.
#[derive(Default)]
pub struct SystemSchema {
    /// The executors whose hosts' trails are read.
    pub cluster: Option<Arc<dyn Cluster>>,
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemSchema").field("cluster", &self.cluster.is_some()).finish()
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.name.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        Ok(TABLES.iter().find(|t| t.name == name).map(|t| {
            let remote = if t.across_hosts { self.cluster.clone() } else { None };
            Arc::new(SystemTable { table: *t, remote }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.iter().any(|t| t.name == name)
    }
}

/// A table read from the trail folder when scanned.
#[derive(Debug, Clone, Copy)]
struct TrailTable {
    name: &'static str,
    schema: fn() -> SchemaRef,
    /// Whether the executors' hosts' trails are read too.
    across_hosts: bool,
    /// Reads the table from a trail folder, adding the files of other
    /// hosts' trails given (ones the folder also holds are skipped).
    read: fn(&str, &trail::Scan, Vec<TrailChunk>) -> Result<datafusion::arrow::array::RecordBatch>,
}

const TABLES: &[TrailTable] = &[
    TrailTable { name: "model_calls", schema: trail::schema, across_hosts: true, read: read_model_calls },
    TrailTable {
        name: "nl_tasks",
        schema: lakelink_nl::task::schema,
        across_hosts: false,
        read: |dir, _, _| lakelink_nl::task::to_batch(&lakelink_nl::task::read_all(dir)),
    },
];

/// The model calls of the trail in `dir` and of the `remote` files it does not hold.
fn read_model_calls(
    dir: &str,
    scan: &trail::Scan,
    remote: Vec<TrailChunk>,
) -> Result<datafusion::arrow::array::RecordBatch> {
    let local = trail::read_files(std::path::Path::new(dir), scan);
    let here: std::collections::HashSet<&str> = local.iter().map(|(name, _)| name.as_str()).collect();
    let mut calls: Vec<trail::ModelCall> = local.iter().flat_map(|(_, lines)| trail::parse_lines(lines)).collect();
    calls.extend(remote.iter().filter(|c| !here.contains(c.file.as_str())).flat_map(|c| trail::parse_lines(&c.lines)));
    calls.sort_by_key(|c| c.time_ms);
    trail::to_batch(&calls)
}

/// A `system` table, with the cluster whose executors' trails it reads.
#[derive(Clone)]
struct SystemTable {
    table: TrailTable,
    remote: Option<Arc<dyn Cluster>>,
}

impl std::fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.table.fmt(f)
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        (self.table.schema)()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // They narrow what is read; DataFusion still applies every one.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let options = LlmOptions::from_config(state.config_options());
        let (read, scan) = (self.table.read, scan_of(filters));
        let remote = match &self.remote {
            Some(cluster) => {
                // Executors on this host share its trail folder: they send
                // none of the files read here.
                let skip_files = trail::file_names(std::path::Path::new(&options.trail_dir));
                cluster.trails(&trail::Scan { skip_files, ..scan.clone() }).await
            }
            None => vec![],
        };
        let batch = tokio::task::spawn_blocking(move || read(&options.trail_dir, &scan, remote))
            .await
            .map_err(|e| DataFusionError::Execution(format!("reading the trail failed: {e}")))??;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema(), projection.cloned())?)
    }
}

/// What of the trail `filters` need: `time > / >= literal` and
/// `query_id = 'literal'` narrow the read; other filters read everything.
fn scan_of(filters: &[Expr]) -> trail::Scan {
    let mut scan = trail::Scan::default();
    for filter in filters {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = filter else { continue };
        let (Expr::Column(column), Expr::Literal(value, _)) = (left.as_ref(), right.as_ref()) else { continue };
        match (column.name.as_str(), op, value) {
            ("query_id", Operator::Eq, ScalarValue::Utf8(Some(id))) => {
                scan.needle = serde_json::to_string(id).ok();
            }
            ("time", Operator::Gt | Operator::GtEq, time) => {
                let ms = match time {
                    ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1000),
                    ScalarValue::TimestampMillisecond(Some(v), _) => Some(*v),
                    ScalarValue::TimestampMicrosecond(Some(v), _) => Some(v / 1000),
                    ScalarValue::TimestampNanosecond(Some(v), _) => Some(v / 1_000_000),
                    _ => None,
                };
                scan.since_ms = ms.max(scan.since_ms);
            }
            _ => {}
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn time_and_query_filters_narrow_the_read() {
        let since = lit(ScalarValue::TimestampMillisecond(Some(1_700_000_000_000), Some("UTC".into())));
        let scan = scan_of(&[col("time").gt_eq(since), col("query_id").eq(lit("q-1")), col("rows").gt(lit(3u64))]);
        assert_eq!(scan.since_ms, Some(1_700_000_000_000));
        assert_eq!(scan.needle.as_deref(), Some("\"q-1\""));
        let scan = scan_of(&[col("time").lt(lit(ScalarValue::TimestampMillisecond(Some(5), None)))]);
        assert_eq!((scan.since_ms, scan.needle), (None, None), "an upper bound reads everything");
    }
}
