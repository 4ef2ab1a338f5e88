//! Codecs wrap Ballista's own and add the state of LakeLink's stateful
//! functions. A function without a registered state codec is written by name
//! only, and the receiving node resolves it from its function registry.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{Result, TableReference};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use crate::extensions::{StateCodec, state_error};

/// State codecs of the stateful functions, shared by both plan codecs.
#[derive(Clone, Default)]
struct FunctionStates {
    scalar: HashMap<String, StateCodec<ScalarUDF>>,
    aggregate: HashMap<String, StateCodec<AggregateUDF>>,
}

impl FunctionStates {
    fn encode_udf(&self, udf: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        if let Some(codec) = self.scalar.get(udf.name())
            && let Some(state) = (codec.encode)(udf)
        {
            buf.extend_from_slice(&state?);
        }
        Ok(())
    }

    fn decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        match self.scalar.get(name) {
            Some(codec) => (codec.decode)(buf).map_err(|e| state_error("scalar", name, e)),
            None => Err(datafusion::common::DataFusionError::Plan(format!(
                "scalar function '{name}' arrived with state, but this node has no codec for it; \
                 register it with lakelink_udf::Extensions on every node"
            ))),
        }
    }

    fn encode_udaf(&self, udaf: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        if let Some(codec) = self.aggregate.get(udaf.name())
            && let Some(state) = (codec.encode)(udaf)
        {
            buf.extend_from_slice(&state?);
        }
        Ok(())
    }

    fn decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        match self.aggregate.get(name) {
            Some(codec) => (codec.decode)(buf).map_err(|e| state_error("aggregate", name, e)),
            None => Err(datafusion::common::DataFusionError::Plan(format!(
                "aggregate function '{name}' arrived with state, but this node has no codec for it; \
                 register it with lakelink_udf::Extensions on every node"
            ))),
        }
    }
}

/// Ballista's logical codec plus the state of LakeLink's functions.
pub struct LakeLinkLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
    states: FunctionStates,
}

impl LakeLinkLogicalCodec {
    pub(crate) fn new(
        scalar: HashMap<String, StateCodec<ScalarUDF>>,
        aggregate: HashMap<String, StateCodec<AggregateUDF>>,
    ) -> Self {
        Self { inner: BallistaLogicalExtensionCodec::default(), states: FunctionStates { scalar, aggregate } }
    }
}

impl fmt::Debug for LakeLinkLogicalCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeLinkLogicalCodec").finish_non_exhaustive()
    }
}

impl LogicalExtensionCodec for LakeLinkLogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        self.inner.try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn FileFormatFactory>) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.states.decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.states.encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.states.decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.states.encode_udaf(node, buf)
    }
}

/// Ballista's physical codec plus the state of LakeLink's functions.
pub struct LakeLinkPhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
    states: FunctionStates,
}

impl LakeLinkPhysicalCodec {
    pub(crate) fn new(
        scalar: HashMap<String, StateCodec<ScalarUDF>>,
        aggregate: HashMap<String, StateCodec<AggregateUDF>>,
    ) -> Self {
        Self { inner: BallistaPhysicalExtensionCodec::default(), states: FunctionStates { scalar, aggregate } }
    }
}

impl fmt::Debug for LakeLinkPhysicalCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeLinkPhysicalCodec").finish_non_exhaustive()
    }
}

impl PhysicalExtensionCodec for LakeLinkPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.states.decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.states.encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.states.decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.states.encode_udaf(node, buf)
    }
}
