use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use datafusion::catalog::TableFunctionImpl;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{FunctionRegistry, SessionState, SessionStateBuilder};
use datafusion::logical_expr::{AggregateUDF, AggregateUDFImpl, ScalarUDF, ScalarUDFImpl};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;

use datafusion::optimizer::OptimizerRule;

use crate::codec::{LakeLinkLogicalCodec, LakeLinkPhysicalCodec};
use lakelink_model::config::LlmOptions;

/// A scalar function that carries state (an endpoint, a model name, options)
/// which must reach the executors together with the plan.
///
/// The state is written by the planning side and read back on the scheduler and
/// on every executor by the codecs of this crate.
pub trait StatefulScalarUDF: ScalarUDFImpl + Sized {
    /// Serializes the function's state.
    fn encode_state(&self) -> Result<Vec<u8>>;
    /// Rebuilds the function from the bytes that [`Self::encode_state`] wrote.
    fn decode_state(state: &[u8]) -> Result<Self>;
}

/// An aggregate function that carries state to the executors; see
/// [`StatefulScalarUDF`].
pub trait StatefulAggregateUDF: AggregateUDFImpl + Sized {
    /// Serializes the function's state.
    fn encode_state(&self) -> Result<Vec<u8>>;
    /// Rebuilds the function from the bytes that [`Self::encode_state`] wrote.
    fn decode_state(state: &[u8]) -> Result<Self>;
}

type Encoder<F> = Arc<dyn Fn(&F) -> Option<Result<Vec<u8>>> + Send + Sync>;
type Decoder<F> = Arc<dyn Fn(&[u8]) -> Result<Arc<F>> + Send + Sync>;

/// How one stateful function of kind `F` is written to and read from a plan.
pub(crate) struct StateCodec<F: ?Sized> {
    pub(crate) encode: Encoder<F>,
    pub(crate) decode: Decoder<F>,
}

impl<F: ?Sized> Clone for StateCodec<F> {
    fn clone(&self) -> Self {
        Self { encode: self.encode.clone(), decode: self.decode.clone() }
    }
}

/// The set of custom functions that every LakeLink node knows.
///
/// [`Extensions::lakelink`] is the set LakeLink ships; embedders and tests add
/// their own with the `with_*` builders. The same value configures all three
/// places a function must be known:
///
/// * the planning side: [`Extensions::register_all`] on a `SessionContext`, or
///   [`Extensions::session_state`] for a fresh state;
/// * the scheduler: [`Extensions::session_state`] as its session builder, and
///   [`Extensions::logical_codec`] / [`Extensions::physical_codec`];
/// * every executor: [`Extensions::function_registry`] and
///   [`Extensions::physical_codec`].
#[derive(Clone, Default)]
pub struct Extensions {
    scalar: Vec<Arc<ScalarUDF>>,
    aggregate: Vec<Arc<AggregateUDF>>,
    table: Vec<(String, Arc<dyn TableFunctionImpl>)>,
    scalar_codecs: HashMap<String, StateCodec<ScalarUDF>>,
    aggregate_codecs: HashMap<String, StateCodec<AggregateUDF>>,
    rules: Vec<Arc<dyn OptimizerRule + Send + Sync>>,
    llm_defaults: Option<LlmOptions>,
    /// The runtime (object stores, caches) of every session this set builds;
    /// `None`: a new one each time, with the process's object stores.
    runtime: Option<Arc<RuntimeEnv>>,
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("scalar", &self.scalar.iter().map(|u| u.name()).collect::<Vec<_>>())
            .field("aggregate", &self.aggregate.iter().map(|u| u.name()).collect::<Vec<_>>())
            .field("table", &self.table.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("rules", &self.rules.iter().map(|r| r.name()).collect::<Vec<_>>())
            .finish()
    }
}

impl Extensions {
    /// The functions LakeLink ships: the `llm_*` functions and their
    /// planning rule. The model settings come from the process defaults
    /// ([`lakelink_model::config`]) and each session's `lakelink.llm.*` options.
    pub fn lakelink() -> Self {
        Self::lakelink_with(lakelink_model::config::process_defaults().clone())
    }

    /// The functions LakeLink ships, with `defaults` in place of the process
    /// defaults for the sessions this set configures (embedders and tests
    /// running several clusters in one process).
    pub fn lakelink_with(defaults: LlmOptions) -> Self {
        let mut ext = Self { llm_defaults: Some(defaults.clone()), ..Self::default() };
        for udf in crate::functions::scalar_functions(defaults.embedding_dim) {
            ext = ext.with_scalar(udf);
        }
        ext.with_stateful_aggregate(crate::functions::LlmSummarize::with_options(defaults))
            .with_optimizer_rule(Arc::new(crate::planner::LlmPlanning))
    }

    /// Builds every session of [`Extensions::session_state`] on `runtime`:
    /// the scheduler's planning sessions share one, so that what one learns
    /// of the lake (file lists, Parquet footers) serves the next.
    pub fn with_runtime_env(mut self, runtime: Arc<RuntimeEnv>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The runtime [`Extensions::with_runtime_env`] set, or a new one with
    /// the process's object stores ([`lakelink_protocol::store::registry`]).
    pub fn runtime_env(&self) -> Result<Arc<RuntimeEnv>> {
        match &self.runtime {
            Some(runtime) => Ok(runtime.clone()),
            None => {
                RuntimeEnvBuilder::new().with_object_store_registry(lakelink_protocol::store::registry()).build_arc()
            }
        }
    }

    /// Adds a logical optimizer rule to every planning session.
    pub fn with_optimizer_rule(mut self, rule: Arc<dyn OptimizerRule + Send + Sync>) -> Self {
        self.rules.push(rule);
        self
    }

    /// Adds a scalar function without state: executors find it by name.
    pub fn with_scalar(mut self, udf: ScalarUDF) -> Self {
        self.scalar.push(Arc::new(udf));
        self
    }

    /// Adds a scalar function whose state travels with the plan.
    pub fn with_stateful_scalar<F: StatefulScalarUDF>(mut self, fun: F) -> Self {
        let name = fun.name().to_string();
        let codec = StateCodec::<ScalarUDF> {
            encode: Arc::new(|udf: &ScalarUDF| {
                let inner: &dyn Any = udf.inner().as_ref();
                inner.downcast_ref::<F>().map(F::encode_state)
            }),
            decode: Arc::new(|bytes: &[u8]| Ok(Arc::new(ScalarUDF::new_from_impl(F::decode_state(bytes)?)))),
        };
        self.scalar_codecs.insert(name, codec);
        self.scalar.push(Arc::new(ScalarUDF::new_from_impl(fun)));
        self
    }

    /// Adds an aggregate function without state.
    pub fn with_aggregate(mut self, udaf: AggregateUDF) -> Self {
        self.aggregate.push(Arc::new(udaf));
        self
    }

    /// Adds an aggregate function whose state travels with the plan.
    pub fn with_stateful_aggregate<F: StatefulAggregateUDF>(mut self, fun: F) -> Self {
        let name = fun.name().to_string();
        let codec = StateCodec::<AggregateUDF> {
            encode: Arc::new(|udaf: &AggregateUDF| {
                let inner: &dyn Any = udaf.inner().as_ref();
                inner.downcast_ref::<F>().map(F::encode_state)
            }),
            decode: Arc::new(|bytes: &[u8]| Ok(Arc::new(AggregateUDF::new_from_impl(F::decode_state(bytes)?)))),
        };
        self.aggregate_codecs.insert(name, codec);
        self.aggregate.push(Arc::new(AggregateUDF::new_from_impl(fun)));
        self
    }

    /// Adds a table function. Table functions are resolved where SQL is
    /// planned (the planning side and the scheduler), so they need no codec:
    /// they must return a provider that Ballista can serialize (a listing table
    /// or a view built from SQL).
    pub fn with_table_function(mut self, name: impl Into<String>, fun: Arc<dyn TableFunctionImpl>) -> Self {
        self.table.push((name.into(), fun));
        self
    }

    /// Names of every scalar, aggregate and table function in the set.
    pub fn function_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.scalar.iter().map(|u| u.name().to_string()).collect();
        names.extend(self.aggregate.iter().map(|u| u.name().to_string()));
        names.extend(self.table.iter().map(|(n, _)| n.clone()));
        names
    }

    /// Registers every function of the set on a planning session.
    ///
    /// Call it again after `SessionContext::remote_with_state` or
    /// `standalone_with_state`: Ballista replaces the scalar functions of the
    /// context it returns.
    pub fn register_all(&self, ctx: &SessionContext) {
        for udf in &self.scalar {
            ctx.register_udf(udf.as_ref().clone());
        }
        for udaf in &self.aggregate {
            ctx.register_udaf(udaf.as_ref().clone());
        }
        for (name, fun) in &self.table {
            ctx.register_udtf(name, fun.clone());
        }
        for rule in &self.rules {
            if !ctx.state().optimizers().iter().any(|r| r.name() == rule.name()) {
                ctx.add_optimizer_rule(rule.clone());
            }
        }
    }

    /// Registers every function of the set on a session state.
    pub fn register_on_state(&self, state: &mut SessionState) -> Result<()> {
        for udf in &self.scalar {
            state.register_udf(udf.clone())?;
        }
        for udaf in &self.aggregate {
            state.register_udaf(udaf.clone())?;
        }
        for (name, fun) in &self.table {
            state.register_udtf(name, fun.clone());
        }
        let missing: Vec<_> =
            self.rules.iter().filter(|rule| !state.optimizers().iter().any(|r| r.name() == rule.name())).collect();
        if !missing.is_empty() {
            let mut builder = datafusion::execution::SessionStateBuilder::new_from_existing(state.clone());
            for rule in missing {
                builder = builder.with_optimizer_rule(rule.clone());
            }
            *state = builder.build();
        }
        Ok(())
    }

    /// Puts the set's codecs and the `lakelink.llm.*` options (with this
    /// process's defaults) into a session config, so that the Ballista client
    /// serializes plans with them and the options can be set and travel.
    pub fn configure(&self, config: SessionConfig) -> SessionConfig {
        let config = if config.options().extensions.get::<LlmOptions>().is_some() {
            config
        } else {
            let defaults = self.llm_defaults.clone();
            config.with_option_extension(defaults.unwrap_or_else(|| lakelink_model::config::process_defaults().clone()))
        };
        config
            .with_ballista_logical_extension_codec(self.logical_codec())
            .with_ballista_physical_extension_codec(self.physical_codec())
    }

    /// A Ballista session state for `config` with every function registered
    /// and the codecs configured: the scheduler's session builder.
    pub fn session_state(&self, config: SessionConfig) -> Result<SessionState> {
        let state = ballista_core::utils::default_session_builder(self.configure(config))?;
        let mut state = SessionStateBuilder::new_from_existing(state).with_runtime_env(self.runtime_env()?).build();
        self.register_on_state(&mut state)?;
        Ok(state)
    }

    /// The function registry an executor resolves functions by name with:
    /// DataFusion's and Ballista's built-ins plus this set.
    pub fn function_registry(&self) -> BallistaFunctionRegistry {
        let mut registry = BallistaFunctionRegistry::default();
        for udf in &self.scalar {
            registry.scalar_functions.insert(udf.name().to_string(), udf.clone());
        }
        for udaf in &self.aggregate {
            registry.aggregate_functions.insert(udaf.name().to_string(), udaf.clone());
        }
        registry
    }

    /// The logical codec: Ballista's, plus the state of this set's functions.
    pub fn logical_codec(&self) -> Arc<dyn LogicalExtensionCodec> {
        Arc::new(LakeLinkLogicalCodec::new(self.scalar_codecs.clone(), self.aggregate_codecs.clone()))
    }

    /// The physical codec: Ballista's, plus the state of this set's functions.
    pub fn physical_codec(&self) -> Arc<dyn PhysicalExtensionCodec> {
        Arc::new(LakeLinkPhysicalCodec::new(self.scalar_codecs.clone(), self.aggregate_codecs.clone()))
    }
}

/// The error a codec gives for state it cannot read.
pub(crate) fn state_error(kind: &str, name: &str, e: impl fmt::Display) -> DataFusionError {
    crate::FunctionError::State { kind: kind.to_string(), name: name.to_string(), reason: e.to_string() }.into()
}
