//! `llm_classify(text, label, label, ...) -> text`: the one label (of those
//! given) that fits the text, or NULL when the model says none fits.
//!
//! ```sql
//! SELECT llm_classify(review, 'positive', 'negative', 'neutral') AS sentiment, count(*)
//! FROM reviews GROUP BY 1;
//! ```
//! The answer is the label (or `none`, NULL) the model finds most probable
//! (its probabilities of the answers, one row per request; the probability
//! lands in the trail as the call's `confidence`). A model that reports no
//! probabilities answers in words: one of the labels (case and quotes are
//! ignored) or `none`; anything else is retried once and then handled by
//! `lakelink.llm.on_error`.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Documentation};

use super::{DOC_SECTION, Distinct, SemanticFunction, constant};
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;
use lakelink_model::prompt::{Allowed, Task, clip, word};

/// The `llm_classify` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LlmClassify;

#[derive(Debug)]
struct ClassifyTask {
    labels: Vec<String>,
}

impl Task for ClassifyTask {
    fn function(&self) -> &'static str {
        "llm_classify"
    }
    fn version(&self) -> u32 {
        3
    }
    fn instructions(&self) -> String {
        format!(
            "Classify the text into exactly one of these labels: {}.\nAnswer with the label only, or none if no label fits.",
            self.labels.join(", ")
        )
    }
    fn batchable(&self) -> bool {
        true
    }
    fn answer_tokens(&self) -> u32 {
        self.labels.iter().map(|l| l.len() as u32 / 2 + 4).max().unwrap_or(8)
    }
    fn parse_one(&self, answer: &str) -> Result<Option<String>, String> {
        let given = word(answer);
        if let Some(label) = self.labels.iter().find(|l| l.eq_ignore_ascii_case(&given)) {
            return Ok(Some(label.clone()));
        }
        if given.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        Err(format!("'{}' is not one of the labels {}", clip(answer), self.labels.join(", ")))
    }
    // Measured with the local model: calibrated labels are right more often
    // (a yes/no filter is not calibrated: that made it worse).
    fn calibrated(&self) -> bool {
        true
    }
    fn allowed(&self) -> Option<Vec<Allowed>> {
        let mut allowed: Vec<Allowed> = self.labels.iter().map(|l| Allowed::spelled(Some(l), l)).collect();
        allowed.push(Allowed::spelled(None, "none"));
        Some(allowed)
    }
}

#[async_trait]
impl SemanticFunction for LlmClassify {
    fn documentation(&self) -> &'static Documentation {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        DOC.get_or_init(|| {
            Documentation::builder(DOC_SECTION, "The label (of those given) that fits the text best, by the model's probabilities of the labels; NULL when the model finds none fits. With `lakelink.llm.cascade_target` set, the label most similar to the text by embedding answers where it leads the others clearly enough, checked on a sample the model answers first.", "llm_classify(text, label[, label, ...])")
                .with_sql_example("SELECT llm_classify(review, 'positive', 'negative') AS sentiment, count(*)\nFROM reviews GROUP BY 1;")
                .with_argument("text", "Text expression: the row's text.")
                .with_argument("label", "Constant strings: two or more labels.")
                .build()
        })
    }
    fn name(&self) -> &'static str {
        "llm_classify"
    }
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        3..=usize::MAX
    }
    fn first_constant(&self) -> usize {
        1
    }
    fn return_type(&self) -> DataType {
        DataType::Utf8
    }
    async fn evaluate(&self, args: &[ColumnarValue], rows: usize, options: LlmOptions) -> Result<ColumnarValue> {
        let mut labels = Vec::new();
        for i in 1..args.len() {
            let label = constant(args, i, "llm_classify", "label")?.trim().to_string();
            if labels.iter().any(|l: &String| l.eq_ignore_ascii_case(&label)) {
                return Err(crate::FunctionError::DuplicateLabel(label).into());
            }
            labels.push(label);
        }
        let (values, distinct) = Distinct::of(&args[0], rows)?;
        let task = Arc::new(ClassifyTask { labels: labels.clone() });
        let ask = |values: Vec<String>| engine::answers(&options, task.clone(), values);
        let answers = if options.cascade_target > 0.0 {
            super::cascade::classify(&options, &labels, values, ask).await?
        } else {
            ask(values).await?
        };
        Ok(ColumnarValue::Array(Arc::new(distinct.spread(&answers).into_iter().collect::<StringArray>())))
    }
}
