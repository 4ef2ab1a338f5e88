//! The `llm_*` SQL functions, one file each.
//!
//! Scalar functions are asynchronous (DataFusion runs them in an
//! `AsyncFuncExec` on the executors): each batch sends only its distinct
//! values to the model layer ([`lakelink_model::engine`]), which dedupes across
//! batches, caches, batches rows into requests and enforces the budget.
//! Every function is volatile, so the planner never folds it into a constant.

pub mod cascade;
mod llm_classify;
mod llm_complete;
mod llm_embed;
mod llm_extract;
mod llm_filter;
mod llm_match;
mod llm_pick;
mod llm_rank;
mod llm_similarity;
mod llm_summarize;

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue};

use crate::error::FunctionError;
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

pub use llm_classify::LlmClassify;
pub use llm_complete::LlmComplete;
pub use llm_embed::LlmEmbed;
pub use llm_extract::LlmExtract;
pub use llm_filter::LlmFilter;
pub use llm_match::LlmMatch;
pub use llm_pick::LlmPick;
pub use llm_rank::LlmRank;
pub use llm_similarity::LlmSimilarity;
pub use llm_summarize::LlmSummarize;

use lakelink_model::config::LlmOptions;

/// What each scalar `llm_*` function defines; [`Semantic`] turns it into a
/// DataFusion async UDF.
#[async_trait]
pub trait SemanticFunction: Debug + PartialEq + Eq + Hash + Send + Sync + 'static {
    /// The SQL name.
    fn name(&self) -> &'static str;
    /// Allowed numbers of arguments (all text).
    fn arity(&self) -> std::ops::RangeInclusive<usize>;
    /// Which arguments must be constants (the instruction, the labels).
    fn first_constant(&self) -> usize;
    /// The SQL result type.
    fn return_type(&self) -> DataType;
    /// The argument that is a list of texts rather than a text, if any.
    fn list_argument(&self) -> Option<usize> {
        None
    }
    /// Computes a batch. `args` are text arrays (or constant strings).
    async fn evaluate(&self, args: &[ColumnarValue], rows: usize, options: LlmOptions) -> Result<ColumnarValue>;
    /// What the function does, with its syntax and an example (the source
    /// of `docs/functions.md`).
    fn documentation(&self) -> &'static Documentation;
}

/// The documentation section of the `llm_*` functions.
pub const DOC_SECTION: DocSection = DocSection {
    include: true,
    label: "Semantic functions",
    description: Some("Call a model at execution time, once per distinct input."),
};

/// A [`SemanticFunction`] as a DataFusion async scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Semantic<F> {
    function: F,
    signature: Signature,
}

impl<F: SemanticFunction> Semantic<F> {
    /// The function as a registrable scalar UDF.
    pub fn udf(function: F) -> ScalarUDF {
        // Types are checked in `return_type` and cast to text when the
        // function runs (the async wrapper leaves coercion to the signature).
        let arity = function.arity();
        let signature = if arity.start() == arity.end() {
            Signature::any(*arity.start(), Volatility::Volatile)
        } else {
            Signature::variadic_any(Volatility::Volatile)
        };
        let semantic = Self { function, signature };
        AsyncScalarUDF::new(Arc::new(semantic)).into_scalar_udf()
    }
}

impl<F: SemanticFunction> ScalarUDFImpl for Semantic<F> {
    fn name(&self) -> &str {
        self.function.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let name = self.function.name();
        let arity = self.function.arity();
        if !arity.contains(&arg_types.len()) {
            let expected = if arity.end() == &usize::MAX {
                format!("at least {}", arity.start())
            } else if arity.start() == arity.end() {
                arity.start().to_string()
            } else {
                format!("{} to {}", arity.start(), arity.end())
            };
            let got = arg_types.len();
            return Err(FunctionError::ArgumentCount { function: name.into(), expected, got }.into());
        }
        for (i, t) in arg_types.iter().enumerate() {
            if self.function.list_argument() == Some(i) {
                if !matches!(t, DataType::List(f) | DataType::LargeList(f) if f.data_type().is_string()) {
                    let (function, position, found) = (name.into(), i + 1, t.clone());
                    let error = FunctionError::ArgumentType { function, position, expected: "a list of texts", found };
                    return Err(error.into());
                }
                continue;
            }
            let text_like = matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null)
                || matches!(t, DataType::Dictionary(_, v) if v.is_string())
                || t.is_numeric()
                || t.is_temporal()
                || t == &DataType::Boolean;
            if !text_like {
                let (function, position, found) = (name.into(), i + 1, t.clone());
                let error = FunctionError::ArgumentType { function, position, expected: "text", found };
                return Err(error.into());
            }
        }
        Ok(self.function.return_type())
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(self.function.documentation())
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Err(DataFusionError::Internal(format!("{} runs asynchronously", self.function.name())))
    }
}

#[async_trait]
impl<F: SemanticFunction> AsyncScalarUDFImpl for Semantic<F> {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // An error raised while the query runs reaches the scheduler as text
        // (Ballista sends a task's error as its Debug form): send the message.
        self.run(args).await.map_err(|e| match e {
            DataFusionError::External(inner) if inner.is::<FunctionError>() => {
                DataFusionError::Execution(inner.to_string())
            }
            other => other,
        })
    }
}

impl<F: SemanticFunction> Semantic<F> {
    async fn run(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.function.name();
        for (i, arg) in args.args.iter().enumerate().skip(self.function.first_constant()) {
            if let ColumnarValue::Array(_) = arg {
                return Err(FunctionError::NotConstant { function: name.into(), position: i + 1 }.into());
            }
        }
        let options = LlmOptions::from_config(&args.config_options);
        self.function.evaluate(&args.args, args.number_rows, options).await
    }
}

/// Each row's position among a text argument's distinct non-null values.
pub(crate) struct Distinct {
    /// For each row, the index of its value (`None` for NULL).
    rows: Vec<Option<usize>>,
}

impl Distinct {
    /// The distinct values of `arg` over `rows` rows, in order of first
    /// appearance (what the model is asked), and where each row's value is.
    pub fn of(arg: &ColumnarValue, rows: usize) -> Result<(Vec<String>, Self)> {
        let array = text_array(arg, rows)?;
        let strings = array.as_string::<i32>();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut values = Vec::new();
        let mut out = Vec::with_capacity(rows);
        for v in strings.iter() {
            out.push(v.map(|s| {
                *seen.entry(s).or_insert_with(|| {
                    values.push(s.to_string());
                    values.len() - 1
                })
            }));
        }
        Ok((values, Self { rows: out }))
    }

    /// Each row's value index.
    pub fn rows(&self) -> &[Option<usize>] {
        &self.rows
    }

    /// Spreads per-value answers back to the rows.
    pub fn spread<T: Clone>(&self, answers: &[Option<T>]) -> Vec<Option<T>> {
        self.rows.iter().map(|r| r.and_then(|i| answers[i].clone())).collect()
    }
}

/// The cosine similarity of two embeddings (unit length, as every
/// embedder returns them: their dot product).
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(p, q)| (p * q) as f64).sum()
}

/// Yes/no answers (`"true"`/`"false"`) as booleans.
pub(crate) fn flags(answers: Vec<Option<String>>) -> Vec<Option<bool>> {
    answers.into_iter().map(|a| a.map(|v| v == "true")).collect()
}

pub(crate) fn text_array(arg: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    let array = arg.to_array(rows)?;
    if array.data_type() == &DataType::Utf8 { Ok(array) } else { Ok(cast(&array, &DataType::Utf8)?) }
}

/// A constant text argument.
pub(crate) fn constant(args: &[ColumnarValue], i: usize, function: &str, what: &str) -> Result<String> {
    let bad = |problem: String| -> DataFusionError {
        FunctionError::BadConstant { function: function.into(), what: what.into(), problem }.into()
    };
    match args.get(i) {
        Some(ColumnarValue::Scalar(s)) => match s {
            ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) | ScalarValue::Utf8View(Some(v)) => {
                if v.trim().is_empty() { Err(bad("must not be empty".into())) } else { Ok(v.clone()) }
            }
            ScalarValue::Utf8(None) | ScalarValue::LargeUtf8(None) | ScalarValue::Utf8View(None) => {
                Err(bad("must not be NULL".into()))
            }
            other => Ok(other.to_string()),
        },
        _ => Err(bad(format!("(argument {}) must be a constant string", i + 1))),
    }
}

/// Each scalar `llm_*` function's name and documentation (DataFusion's
/// async wrapper does not pass `documentation()` on).
pub fn documentation() -> Vec<(&'static str, &'static Documentation)> {
    let embed = LlmEmbed::new(384);
    vec![
        (LlmComplete.name(), LlmComplete.documentation()),
        (LlmFilter.name(), LlmFilter.documentation()),
        (LlmClassify.name(), LlmClassify.documentation()),
        (LlmExtract.name(), LlmExtract.documentation()),
        (embed.name(), embed.documentation()),
        (LlmSimilarity.name(), LlmSimilarity.documentation()),
        (LlmMatch.name(), LlmMatch.documentation()),
        (LlmPick.name(), LlmPick.documentation()),
        (LlmRank.name(), LlmRank.documentation()),
    ]
}

/// Every `llm_*` function LakeLink ships, as registrable UDFs.
pub fn scalar_functions(embedding_dim: usize) -> Vec<ScalarUDF> {
    vec![
        Semantic::udf(LlmComplete),
        Semantic::udf(LlmFilter),
        Semantic::udf(LlmClassify),
        Semantic::udf(LlmExtract),
        Semantic::udf(LlmEmbed::new(embedding_dim)),
        Semantic::udf(LlmSimilarity),
        Semantic::udf(LlmMatch),
        Semantic::udf(LlmPick),
        Semantic::udf(LlmRank),
    ]
}
