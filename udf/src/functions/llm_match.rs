//! `llm_match(left, right, condition) -> boolean`: whether a condition in
//! plain words holds between two texts; the semantic join.
//!
//! ```sql
//! SELECT r.id, p.name FROM reviews r
//! JOIN products p ON llm_match(r.review, p.name, 'the review is about this product');
//! ```
//! Outside a join the answer is the more probable of `yes` and `no`, as for
//! `llm_filter`. In a join the planner never asks the model about every
//! pair: for each left value it keeps the `lakelink.llm.match_candidates`
//! right values whose embeddings are most similar to it (blocking) and the
//! model picks the one the condition holds for, or none, in one request
//! (`llm_pick`; see [`crate::planner`]). Each left value then matches at most
//! one right value; `match_candidates = 0` asks yes or no for every pair.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, BooleanArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Documentation};

use super::{DOC_SECTION, Distinct, SemanticFunction, constant, flags, text_array};
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;
use lakelink_model::prompt::{Allowed, Task, yes_and_no, yes_or_no};

/// The `llm_match` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LlmMatch;

#[derive(Debug)]
struct MatchTask {
    condition: String,
}

impl Task for MatchTask {
    fn function(&self) -> &'static str {
        "llm_match"
    }
    fn instructions(&self) -> String {
        format!(
            "The row holds two texts, the first after 'first:' and the second after 'second:'.\n\
             Decide whether this statement about the two texts is true: {}\n\
             Answer yes if it is true and no if it is false.",
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

/// The one text the model reads for a pair (NULL when either side is).
fn pairs(left: &ColumnarValue, right: &ColumnarValue, rows: usize) -> Result<ColumnarValue> {
    let (left, right) = (text_array(left, rows)?, text_array(right, rows)?);
    let (left, right) = (left.as_string::<i32>(), right.as_string::<i32>());
    let items: StringArray = (0..rows)
        .map(|i| {
            (left.is_valid(i) && right.is_valid(i))
                .then(|| format!("first: {}\nsecond: {}", left.value(i), right.value(i)))
        })
        .collect();
    Ok(ColumnarValue::Array(Arc::new(items)))
}

#[async_trait]
impl SemanticFunction for LlmMatch {
    fn documentation(&self) -> &'static Documentation {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        DOC.get_or_init(|| {
            Documentation::builder(DOC_SECTION, "Whether a condition in plain words holds between two texts (the more probable of the model's answers yes and no); NULL when either text is NULL. In `JOIN ... ON` it is a semantic join: for each left value the model picks, in one request, the one of the `lakelink.llm.match_candidates` right values most similar to it by embedding that the condition holds for (so at most one match per left value), never asking about every pair; `match_candidates = 0` asks about every pair.", "llm_match(left, right, condition)")
                .with_sql_example("SELECT r.id, p.name FROM reviews r\nJOIN products p ON llm_match(r.review, p.name, 'the review is about this product');")
                .with_argument("left", "Text expression: the left text.")
                .with_argument("right", "Text expression: the right text.")
                .with_argument("condition", "Constant string: the condition between the two, in plain words.")
                .build()
        })
    }
    fn name(&self) -> &'static str {
        "llm_match"
    }
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        3..=3
    }
    fn first_constant(&self) -> usize {
        2
    }
    fn return_type(&self) -> DataType {
        DataType::Boolean
    }
    async fn evaluate(&self, args: &[ColumnarValue], rows: usize, options: LlmOptions) -> Result<ColumnarValue> {
        let task = Arc::new(MatchTask { condition: constant(args, 2, "llm_match", "condition")? });
        let (values, distinct) = Distinct::of(&pairs(&args[0], &args[1], rows)?, rows)?;
        let answers = flags(engine::answers(&options, task, values).await?);
        Ok(ColumnarValue::Array(Arc::new(distinct.spread(&answers).into_iter().collect::<BooleanArray>())))
    }
}
