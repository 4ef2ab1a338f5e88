//! The `system` schema: tables about LakeLink itself, answered by the
//! scheduler.
//!
//! * `system.model_calls`: every model request of every process (and every
//!   batch of rows answered from the cache), read from the trail folder
//!   (`lakelink.llm.trail_dir`) when the table is scanned; a filter on
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
use lakelink_udf::LlmOptions;

/// The schema name.
pub const SCHEMA: &str = "system";

/// The `system` schema.
#[derive(Debug, Default)]
pub struct SystemSchema;

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.name.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        Ok(TABLES.iter().find(|t| t.name == name).map(|t| Arc::new(*t) as Arc<dyn TableProvider>))
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
    read: fn(&str, &trail::Scan) -> Result<datafusion::arrow::array::RecordBatch>,
}

const TABLES: &[TrailTable] = &[
    TrailTable {
        name: "model_calls",
        schema: trail::schema,
        read: |dir, scan| trail::to_batch(&trail::read_calls(std::path::Path::new(dir), scan)),
    },
    TrailTable {
        name: "nl_tasks",
        schema: lakelink_nl::task::schema,
        read: |dir, _| lakelink_nl::task::to_batch(&lakelink_nl::task::read_all(dir)),
    },
];

#[async_trait]
impl TableProvider for TrailTable {
    fn schema(&self) -> SchemaRef {
        (self.schema)()
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
        let (read, scan) = (self.read, scan_of(filters));
        let batch = tokio::task::spawn_blocking(move || read(&options.trail_dir, &scan))
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
