//! `llm_filter(text, condition) -> boolean`: whether a condition in plain
//! words holds for the text.
//!
//! ```sql
//! SELECT o_orderkey, o_comment FROM orders
//! WHERE o_orderpriority = '1-URGENT'              -- runs first: cheap predicates filter before the model
//!   AND llm_filter(o_comment, 'mentions a deposit')
//! LIMIT 20;
//! ```
//! The model is shown the condition and its negation ("it is not the case
//! that ...") as two labels, and the answer is the statement it is the more
//! likely to write: each is scored whole (its probability token by token,
//! one row per request) and calibrated against a content-free row, as
//! `llm_classify`'s labels are; the probability lands in the trail as the
//! call's `confidence`. A model that reports no probabilities answers in
//! words: either statement, `yes`/`no`, `true`/`false`, or `none` (false);
//! anything else is retried once and then handled by `lakelink.llm.on_error`.
//! With `lakelink.llm.cascade_target` set, an embedding proxy answers the
//! values it is sure about ([`cascade`](super::cascade)).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Documentation};

use super::{DOC_SECTION, Distinct, SemanticFunction, constant, flags};
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;
use lakelink_model::prompt::{Allowed, Task, clip, word, yes_or_no};

/// The `llm_filter` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LlmFilter;

#[derive(Debug)]
struct FilterTask {
    condition: String,
    negation: String,
}

impl FilterTask {
    fn new(condition: &str) -> Self {
        let condition = condition.trim().to_string();
        // The two statements begin with different words, neither the start
        // of the other: an endpoint that reports the first token's
        // probabilities tells them apart by it.
        let first = first_word(&condition);
        let lead = if "it".starts_with(&first) || first.starts_with("it") {
            "not the case that"
        } else {
            "it is not the case that"
        };
        let negation = format!("{lead} {condition}");
        FilterTask { condition, negation }
    }
}

/// The first word of `text`, lower case.
fn first_word(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric()).find(|w| !w.is_empty()).unwrap_or_default().to_lowercase()
}

impl Task for FilterTask {
    fn function(&self) -> &'static str {
        "llm_filter"
    }
    fn version(&self) -> u32 {
        3
    }
    // The condition against its negation, as two labels: the small local
    // model reads a choice between two statements far better than a yes or
    // no to one (benches/results/llm-filter-prompts.txt).
    fn instructions(&self) -> String {
        format!(
            "Classify the text into exactly one of these labels: {}, {}.\nAnswer with the label only, or none if no label fits.",
            self.condition, self.negation
        )
    }
    fn batchable(&self) -> bool {
        true
    }
    fn answer_tokens(&self) -> u32 {
        self.negation.len() as u32 / 2 + 4
    }
    fn parse_one(&self, answer: &str) -> Result<Option<String>, String> {
        let given = word(answer).to_lowercase();
        if given == self.negation.to_lowercase() || given == "none" {
            return Ok(Some("false".into()));
        }
        if given == self.condition.to_lowercase() {
            return Ok(Some("true".into()));
        }
        yes_or_no(answer, "true", "false")
            .map_err(|_| format!("'{}' is neither '{}' nor '{}'", clip(answer), self.condition, self.negation))
    }
    // Calibrated against a content-free row, as llm_classify's labels are.
    fn calibrated(&self) -> bool {
        true
    }
    // Each statement is scored whole (its words carry the answer, not its
    // first word), as written: the model copies a label as it was listed.
    fn allowed(&self) -> Option<Vec<Allowed>> {
        Some(vec![
            Allowed { value: Some("true".into()), spellings: vec![self.condition.clone()] },
            Allowed { value: Some("false".into()), spellings: vec![self.negation.clone()] },
        ])
    }
}

#[async_trait]
impl SemanticFunction for LlmFilter {
    fn documentation(&self) -> &'static Documentation {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        DOC.get_or_init(|| {
            Documentation::builder(DOC_SECTION, "Whether a condition in plain words holds for the text: the more probable, by the model's probabilities, of the condition and its negation (\"it is not the case that ...\"), one row per request. NULL text gives NULL. Cheap predicates of the same WHERE run first. With `lakelink.llm.cascade_target` set, an embedding-similarity proxy answers the values it is sure about, checked on a sample the model answers first.", "llm_filter(text, condition)")
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
        let task = Arc::new(FilterTask::new(&condition));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_negation_begins_with_another_word() {
        let task = FilterTask::new("  the customer is happy ");
        assert_eq!(task.condition, "the customer is happy");
        assert_eq!(task.negation, "it is not the case that the customer is happy");
        for condition in ["it mentions a deposit", "I like it", "items are missing", "...?"] {
            let task = FilterTask::new(condition);
            assert_eq!(task.negation, format!("not the case that {condition}"));
        }
        let allowed = FilterTask::new("green").allowed().expect("closed answers");
        assert_eq!(allowed[0].spellings, ["green"]);
        assert_eq!(allowed[1].spellings, ["it is not the case that green"]);
        assert_eq!((allowed[0].value.as_deref(), allowed[1].value.as_deref()), (Some("true"), Some("false")));
    }

    #[test]
    fn a_text_answer_is_one_of_the_statements_or_yes_or_no() {
        let task = FilterTask::new("the customer is happy");
        let parse = |answer: &str| task.parse_one(answer);
        assert_eq!(parse("The customer is happy."), Ok(Some("true".into())));
        assert_eq!(parse("'it is not the case that the customer is happy'"), Ok(Some("false".into())));
        assert_eq!(parse("none"), Ok(Some("false".into())));
        assert_eq!(parse("Yes"), Ok(Some("true".into())));
        assert_eq!(parse("no"), Ok(Some("false".into())));
        let err = parse("the customer is sad").unwrap_err();
        assert!(err.contains("neither 'the customer is happy' nor 'it is not the case that"), "{err}");
    }
}
