//! `llm_extract(text, what) -> text`: the value described by `what` taken
//! from the text, or NULL when the text holds none.
//!
//! ```sql
//! SELECT llm_extract(c_comment, 'the product mentioned') AS product FROM customer LIMIT 10;
//! ```
//! The answer is one line; an empty or multi-line answer is retried once
//! and then handled by `lakelink.llm.on_error`.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Documentation};

use super::{DOC_SECTION, Distinct, SemanticFunction, constant};
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;
use lakelink_model::prompt::{Task, word};

/// The `llm_extract` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LlmExtract;

#[derive(Debug)]
struct ExtractTask {
    what: String,
}

impl Task for ExtractTask {
    fn function(&self) -> &'static str {
        "llm_extract"
    }
    fn instructions(&self) -> String {
        format!(
            "Extract from the row: {}\nAnswer with the extracted value only, on one line, or NONE if the row does not contain it.",
            self.what.trim()
        )
    }
    fn batchable(&self) -> bool {
        true
    }
    fn answer_tokens(&self) -> u32 {
        48
    }
    fn parse_one(&self, answer: &str) -> Result<Option<String>, String> {
        let value = answer.trim();
        if value.is_empty() {
            return Err("the answer is empty".into());
        }
        if value.lines().count() > 1 {
            return Err("the answer spans several lines".into());
        }
        let value = word(value);
        Ok(if value.eq_ignore_ascii_case("none") { None } else { Some(value) })
    }
}

#[async_trait]
impl SemanticFunction for LlmExtract {
    fn documentation(&self) -> &'static Documentation {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        DOC.get_or_init(|| {
            Documentation::builder(DOC_SECTION, "The value described by `what`, taken from the text, or NULL when the text holds none. One line; an unusable answer is retried once, then handled by `lakelink.llm.on_error`.", "llm_extract(text, what)")
                .with_sql_example("SELECT llm_extract(c_comment, 'the product mentioned') AS product FROM customer LIMIT 10;")
                .with_argument("text", "Text expression: the row's text.")
                .with_argument("what", "Constant string: what to extract.")
                .build()
        })
    }
    fn name(&self) -> &'static str {
        "llm_extract"
    }
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        2..=2
    }
    fn first_constant(&self) -> usize {
        1
    }
    fn return_type(&self) -> DataType {
        DataType::Utf8
    }
    async fn evaluate(&self, args: &[ColumnarValue], rows: usize, options: LlmOptions) -> Result<ColumnarValue> {
        let task = Arc::new(ExtractTask { what: constant(args, 1, "llm_extract", "description of what to extract")? });
        let (values, distinct) = Distinct::of(&args[0], rows)?;
        let answers = engine::answers(&options, task, values).await?;
        Ok(ColumnarValue::Array(Arc::new(distinct.spread(&answers).into_iter().collect::<StringArray>())))
    }
}
