//! `llm_complete(prompt) -> text`: the model's answer to a prompt built in
//! SQL. The prompt is the user's own text (not fenced as data), one request
//! per distinct prompt.
//!
//! ```sql
//! SELECT n_name, llm_complete('One sentence about the economy of ' || n_name) FROM nation LIMIT 3;
//! ```

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Documentation};

use super::{DOC_SECTION, Distinct, SemanticFunction};
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;
use lakelink_model::prompt::Task;

/// The `llm_complete` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LlmComplete;

#[derive(Debug)]
struct CompleteTask;

impl Task for CompleteTask {
    fn function(&self) -> &'static str {
        "llm_complete"
    }
    fn instructions(&self) -> String {
        String::new()
    }
    fn batchable(&self) -> bool {
        false
    }
    fn answer_tokens(&self) -> u32 {
        u32::MAX
    }
    fn fenced(&self) -> bool {
        false
    }
    fn parse_one(&self, answer: &str) -> Result<Option<String>, String> {
        let text = answer.trim();
        if text.is_empty() { Err("the answer is empty".into()) } else { Ok(Some(text.to_string())) }
    }
}

#[async_trait]
impl SemanticFunction for LlmComplete {
    fn documentation(&self) -> &'static Documentation {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        DOC.get_or_init(|| {
            Documentation::builder(DOC_SECTION, "The model's answer to a prompt built in SQL. The prompt is the caller's own text (not fenced as data); one request per distinct prompt.", "llm_complete(prompt)")
                .with_sql_example("SELECT n_name, llm_complete('One sentence about the economy of ' || n_name) FROM nation LIMIT 3;")
                .with_argument("prompt", "Text expression: the prompt.")
                .build()
        })
    }
    fn name(&self) -> &'static str {
        "llm_complete"
    }
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        1..=1
    }
    fn first_constant(&self) -> usize {
        1
    }
    fn return_type(&self) -> DataType {
        DataType::Utf8
    }
    async fn evaluate(&self, args: &[ColumnarValue], rows: usize, options: LlmOptions) -> Result<ColumnarValue> {
        let (values, distinct) = Distinct::of(&args[0], rows)?;
        let answers = engine::answers(&options, Arc::new(CompleteTask), values).await?;
        Ok(ColumnarValue::Array(Arc::new(distinct.spread(&answers).into_iter().collect::<StringArray>())))
    }
}
