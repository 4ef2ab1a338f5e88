//! `llm_filter(text, condition) -> boolean`: whether a condition in plain
//! words holds for the text.
//!
//! ```sql
//! SELECT o_orderkey, o_comment FROM orders
//! WHERE o_orderpriority = '1-URGENT'              -- runs first: cheap predicates filter before the model
//!   AND llm_filter(o_comment, 'mentions a deposit')
//! LIMIT 20;
//! ```
//! The model is asked whether the condition holds and the answer is the
//! more probable of `yes` and `no` (the model's probabilities of the two
//! answers, one row per request; the probability lands in the trail as the
//! call's `confidence`). A model that reports no probabilities answers in
//! words: `yes`/`no` (or `true`/`false`); anything else is retried once and
//! then handled by `lakelink.llm.on_error`. With `lakelink.llm.cascade_target`
//! set, an embedding proxy answers the values it is sure about
//! ([`cascade`](super::cascade)).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Documentation};

use super::{DOC_SECTION, Distinct, SemanticFunction, constant, flags};
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;
use lakelink_model::prompt::{Allowed, Task, yes_and_no, yes_or_no};

/// The `llm_filter` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LlmFilter;

#[derive(Debug)]
struct FilterTask {
    condition: String,
}

impl Task for FilterTask {
    fn function(&self) -> &'static str {
        "llm_filter"
    }
    fn version(&self) -> u32 {
        2
    }
    fn instructions(&self) -> String {
        format!(
            "Decide whether this statement about the text is true: {}\nAnswer yes if it is true and no if it is false.",
            self.condition.trim()
        )
    }
    fn batchable(&self) -> bool {
        true
    }
    fn answer_tokens(&self) -> u32 {
        4
    }
    fn parse_one(&self, answer: &str) -> Result<Option<String>, String> {
        yes_or_no(answer, "true", "false")
    }
    fn allowed(&self) -> Option<Vec<Allowed>> {
        Some(yes_and_no("true", "false"))
    }
}

#[async_trait]
impl SemanticFunction for LlmFilter {
    fn documentation(&self) -> &'static Documentation {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        DOC.get_or_init(|| {
            Documentation::builder(DOC_SECTION, "Whether a condition in plain words holds for the text: the more probable of the model's answers yes and no (its probabilities of the two, one row per request). NULL text gives NULL. Cheap predicates of the same WHERE run first. With `lakelink.llm.cascade_target` set, an embedding-similarity proxy answers the values it is sure about, checked on a sample the model answers first.", "llm_filter(text, condition)")
                .with_sql_example("SELECT o_orderkey, o_comment FROM orders\nWHERE o_orderpriority = '1-URGENT' AND llm_filter(o_comment, 'mentions a deposit')\nLIMIT 20;")
                .with_argument("text", "Text expression: the row's text.")
                .with_argument("condition", "Constant string: the condition, in plain words.")
                .build()
        })
    }
    fn name(&self) -> &'static str {
        "llm_filter"
    }
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        2..=2
    }
    fn first_constant(&self) -> usize {
        1
    }
    fn return_type(&self) -> DataType {
        DataType::Boolean
    }
    async fn evaluate(&self, args: &[ColumnarValue], rows: usize, options: LlmOptions) -> Result<ColumnarValue> {
        let condition = constant(args, 1, "llm_filter", "condition")?;
        let task = Arc::new(FilterTask { condition: condition.clone() });
        let (values, distinct) = Distinct::of(&args[0], rows)?;
        let ask = |values: Vec<String>| {
            let (options, task) = (&options, task.clone());
            async move { Ok(flags(engine::answers(options, task, values).await?)) }
        };
        let answers = if options.cascade_target > 0.0 {
            super::cascade::filter(&options, &condition, values, ask).await?
        } else {
            ask(values).await?
        };
        Ok(ColumnarValue::Array(Arc::new(distinct.spread(&answers).into_iter().collect::<BooleanArray>())))
    }
}
