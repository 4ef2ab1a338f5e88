//! `llm_rank(text, criterion) -> double`: how well the text fits a
//! criterion, from 0 to 1; the semantic top-k.
//!
//! ```sql
//! SELECT id, review FROM reviews
//! ORDER BY llm_rank(review, 'the customer complains about a late delivery') DESC
//! LIMIT 10;
//! ```
//! The score is the model's probability of `yes` to whether the text fits
//! the criterion (1 or 0 from a model that reports no probabilities). Under
//! `ORDER BY llm_rank(...) LIMIT k` the planner lets the model score only
//! the `k * lakelink.llm.rank_pool` rows whose embeddings are most similar
//! to the criterion (see [`crate::planner`]), not every row.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::Float64Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Documentation};

use super::{DOC_SECTION, Distinct, SemanticFunction, constant};
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;
use lakelink_model::prompt::{Allowed, Task, yes_and_no, yes_or_no};

/// The `llm_rank` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LlmRank;

#[derive(Debug)]
struct RankTask {
    criterion: String,
}

impl Task for RankTask {
    fn function(&self) -> &'static str {
        "llm_rank"
    }
    fn instructions(&self) -> String {
        format!(
            "Decide whether the text fits this description: {}\nAnswer yes if it fits and no if it does not.",
            self.criterion.trim()
        )
    }
    fn batchable(&self) -> bool {
        true
    }
    fn answer_tokens(&self) -> u32 {
        4
    }
    fn parse_one(&self, answer: &str) -> Result<Option<String>, String> {
        yes_or_no(answer, "1", "0")
    }
    fn allowed(&self) -> Option<Vec<Allowed>> {
        Some(yes_and_no("1", "0"))
    }
    fn scored(&self) -> bool {
        true
    }
    fn question(&self) -> Option<String> {
        let criterion = self.criterion.trim().trim_end_matches(['.', '?']);
        Some(format!("Does the text say that {criterion}? Answer yes or no."))
    }
}

#[async_trait]
impl SemanticFunction for LlmRank {
    fn documentation(&self) -> &'static Documentation {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        DOC.get_or_init(|| {
            Documentation::builder(DOC_SECTION, "How well the text fits a criterion, from 0 to 1: the model's probability of yes to whether it fits. Under `ORDER BY llm_rank(...) LIMIT k` the model scores only the `k * lakelink.llm.rank_pool` rows most similar to the criterion by embedding, not every row.", "llm_rank(text, criterion)")
                .with_sql_example("SELECT id, review FROM reviews\nORDER BY llm_rank(review, 'the customer complains about a late delivery') DESC\nLIMIT 10;")
                .with_argument("text", "Text expression: the row's text.")
                .with_argument("criterion", "Constant string: what the best rows are like, in plain words.")
                .build()
        })
    }
    fn name(&self) -> &'static str {
        "llm_rank"
    }
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        2..=2
    }
    fn first_constant(&self) -> usize {
        1
    }
    fn return_type(&self) -> DataType {
        DataType::Float64
    }
    async fn evaluate(&self, args: &[ColumnarValue], rows: usize, options: LlmOptions) -> Result<ColumnarValue> {
        let task = Arc::new(RankTask { criterion: constant(args, 1, "llm_rank", "criterion")? });
        let (values, distinct) = Distinct::of(&args[0], rows)?;
        let answers = engine::answers(&options, task, values).await?;
        let scores: Vec<Option<f64>> = answers.into_iter().map(|a| a.and_then(|v| v.parse().ok())).collect();
        Ok(ColumnarValue::Array(Arc::new(distinct.spread(&scores).into_iter().collect::<Float64Array>())))
    }
}
