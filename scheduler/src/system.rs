//! The `system` schema: tables about LakeLink itself, answered by the
//! scheduler.
//!
//! * `system.model_calls`: every model request of every process (and every
//!   batch of rows answered from the cache), read from the trail folder
//!   (`lakelink.llm.trail_dir`) when the table is scanned.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use lakelink_udf::LlmOptions;
use lakelink_udf::llm::trail;

/// The schema name.
pub const SCHEMA: &str = "system";

/// The `system` schema.
#[derive(Debug, Default)]
pub struct SystemSchema;

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        vec!["model_calls".into()]
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        Ok(match name {
            "model_calls" => Some(Arc::new(ModelCalls)),
            _ => None,
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        name == "model_calls"
    }
}

/// `system.model_calls`.
#[derive(Debug)]
struct ModelCalls;

#[async_trait]
impl TableProvider for ModelCalls {
    fn schema(&self) -> SchemaRef {
        trail::schema()
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
        let dir = std::path::PathBuf::from(&options.trail_dir);
        let calls = tokio::task::spawn_blocking(move || trail::read_all(&dir))
            .await
            .map_err(|e| DataFusionError::Execution(format!("reading the model-call trail failed: {e}")))?;
        let batch = trail::to_batch(&calls)?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema(), projection.cloned())?)
    }
}
