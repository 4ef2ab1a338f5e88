//! The `system` schema: tables about LakeLink itself, answered by the
//! scheduler.
//!
//! * `system.model_calls`: every model request of every process (and every
//!   batch of rows answered from the cache), read from the trail folder
//!   (`lakelink.llm.trail_dir`) when the table is scanned.
//! * `system.nl_tasks`: every compiled `nl_*` call: question, attempts with
//!   their errors, retrieved tables, final SQL, outcome and timings.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::Expr;
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
    read: fn(&str) -> Result<datafusion::arrow::array::RecordBatch>,
}

const TABLES: &[TrailTable] = &[
    TrailTable {
        name: "model_calls",
        schema: trail::schema,
        read: |dir| trail::to_batch(&trail::read_all(std::path::Path::new(dir))),
    },
    TrailTable {
        name: "nl_tasks",
        schema: lakelink_nl::task::schema,
        read: |dir| lakelink_nl::task::to_batch(&lakelink_nl::task::read_all(dir)),
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

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let options = LlmOptions::from_config(state.config_options());
        let read = self.read;
        let batch = tokio::task::spawn_blocking(move || read(&options.trail_dir))
            .await
            .map_err(|e| DataFusionError::Execution(format!("reading the trail failed: {e}")))??;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema(), projection.cloned())?)
    }
}
