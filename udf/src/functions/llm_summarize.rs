//! `llm_summarize(text, instruction)`: an aggregate that summarises the
//! group's texts as the instruction asks.
//!
//! ```sql
//! SELECT o_orderpriority, llm_summarize(o_comment, 'the common complaints, in one sentence')
//! FROM orders WHERE o_orderdate = DATE '1995-03-15' GROUP BY o_orderpriority;
//! ```
//! Texts are gathered across partitions (the partial state is the list of
//! texts), sorted so the answer does not depend on arrival order, and sent
//! in chunks that fit the model's context; several chunks are summarised
//! one by one and their summaries summarised again.
//!
//! Aggregates receive no session settings when they run, so the planner
//! binds the session's `lakelink.llm.*` options into each `llm_summarize`
//! call ([`crate::planner`]); the options travel to executors as the
//! function's state.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Documentation, Signature, Volatility};
use datafusion::physical_expr::expressions::Literal;

use crate::extensions::StatefulAggregateUDF;
use lakelink_model::config::{LlmOptions, process_defaults};
use lakelink_model::engine;
use lakelink_model::prompt::Task;

/// Characters of text per summarising request.
const CHUNK_CHARS: usize = 6_000;

/// The `llm_summarize` aggregate, with the options it runs under.
#[derive(Debug)]
pub struct LlmSummarize {
    options: LlmOptions,
    signature: Signature,
}

impl PartialEq for LlmSummarize {
    fn eq(&self, other: &Self) -> bool {
        self.options == other.options
    }
}
impl Eq for LlmSummarize {}
impl std::hash::Hash for LlmSummarize {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.options.query_id.hash(state);
        self.options.model.hash(state);
    }
}

impl Default for LlmSummarize {
    fn default() -> Self {
        Self::with_options(process_defaults().clone())
    }
}

impl LlmSummarize {
    /// The aggregate running under `options`.
    pub fn with_options(options: LlmOptions) -> Self {
        Self { options, signature: Signature::user_defined(Volatility::Volatile) }
    }

    /// The options it runs under.
    pub fn options(&self) -> &LlmOptions {
        &self.options
    }
}

impl AggregateUDFImpl for LlmSummarize {
    fn name(&self) -> &str {
        "llm_summarize"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 {
            return plan_err!("llm_summarize takes 2 arguments (text, instruction), got {}", arg_types.len());
        }
        Ok(vec![DataType::Utf8, DataType::Utf8])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn documentation(&self) -> Option<&Documentation> {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        Some(DOC.get_or_init(|| {
            Documentation::builder(
                super::DOC_SECTION,
                "An aggregate: one text summarising the group's texts as the instruction asks. Texts are sorted \
                 (the answer does not depend on arrival order) and sent in chunks that fit the model's context; \
                 several chunks are summarised one by one and their summaries summarised again.",
                "llm_summarize(text, instruction)",
            )
            .with_sql_example(
                "SELECT o_orderpriority, llm_summarize(o_comment, 'the common complaints, in one sentence')\n\
                 FROM orders WHERE o_orderdate = DATE '1995-03-15' GROUP BY o_orderpriority;",
            )
            .with_argument("text", "Text expression: the group's texts.")
            .with_argument("instruction", "Constant string: what the summary should say.")
            .build()
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[texts]", args.name),
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ))])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let instruction = args
            .exprs
            .get(1)
            .and_then(|e| {
                let any: &dyn Any = e.as_ref();
                any.downcast_ref::<Literal>()
            })
            .and_then(|l| match l.value() {
                ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => {
                    Some(s.clone())
                }
                _ => None,
            })
            .ok_or_else(|| DataFusionError::Plan("llm_summarize: the instruction must be a constant string".into()))?;
        Ok(Box::new(Summarizer { options: self.options.clone(), instruction, texts: Vec::new() }))
    }
}

impl StatefulAggregateUDF for LlmSummarize {
    fn encode_state(&self) -> Result<Vec<u8>> {
        let pairs: Vec<(&str, String)> = lakelink_model::config::SETTINGS
            .iter()
            .filter_map(|s| Some((s.key, self.options.get_key(s.key)?)))
            .collect();
        serde_json::to_vec(&pairs).map_err(|e| DataFusionError::Internal(e.to_string()))
    }
    fn decode_state(state: &[u8]) -> Result<Self> {
        let pairs: Vec<(String, String)> =
            serde_json::from_slice(state).map_err(|e| DataFusionError::Plan(format!("llm_summarize state: {e}")))?;
        let mut options = LlmOptions::default();
        for (k, v) in pairs {
            options.set_key(&k, &v)?;
        }
        Ok(Self::with_options(options))
    }
}

#[derive(Debug)]
struct SummarizeTask {
    instruction: String,
}

impl Task for SummarizeTask {
    fn function(&self) -> &'static str {
        "llm_summarize"
    }
    fn instructions(&self) -> String {
        format!("Summarise the texts in the row as follows: {}\nAnswer with the summary only.", self.instruction.trim())
    }
    fn batchable(&self) -> bool {
        false
    }
    fn answer_tokens(&self) -> u32 {
        200
    }
    fn parse_one(&self, answer: &str) -> Result<Option<String>, String> {
        let text = answer.trim();
        if text.is_empty() { Err("the summary is empty".into()) } else { Ok(Some(text.to_string())) }
    }
}

#[derive(Debug)]
struct Summarizer {
    options: LlmOptions,
    instruction: String,
    texts: Vec<String>,
}

/// Runs the model layer from the synchronous aggregate interface.
fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| DataFusionError::Execution("llm_summarize needs a Tokio runtime".into()))?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return exec_err!("llm_summarize needs a multi-threaded Tokio runtime");
    }
    tokio::task::block_in_place(|| handle.block_on(future))
}

impl Summarizer {
    async fn summarize(options: LlmOptions, instruction: String, mut texts: Vec<String>) -> Result<Option<String>> {
        if texts.is_empty() {
            return Ok(None);
        }
        texts.sort();
        let task: Arc<dyn Task> = Arc::new(SummarizeTask { instruction });
        loop {
            let mut chunks: Vec<String> = Vec::new();
            let mut current = String::new();
            for t in &texts {
                let t: String = t.chars().take(CHUNK_CHARS).collect();
                if !current.is_empty() && current.len() + t.len() > CHUNK_CHARS {
                    chunks.push(std::mem::take(&mut current));
                }
                current.push_str("- ");
                current.push_str(&t);
                current.push('\n');
            }
            chunks.push(current);
            let single = chunks.len() == 1;
            let answers = engine::answers(&options, task.clone(), chunks).await?;
            let summaries: Vec<String> = answers.into_iter().flatten().collect();
            if single || summaries.len() <= 1 {
                return Ok(summaries.into_iter().next());
            }
            texts = summaries;
        }
    }
}

impl Accumulator for Summarizer {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let texts = values[0].as_string::<i32>();
        self.texts.extend(texts.iter().flatten().map(str::to_string));
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        for list in lists.iter().flatten() {
            self.texts.extend(list.as_string::<i32>().iter().flatten().map(str::to_string));
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values = StringArray::from_iter_values(self.texts.iter());
        let list = ListArray::new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            datafusion::arrow::buffer::OffsetBuffer::from_lengths([values.len()]),
            Arc::new(values),
            None,
        );
        Ok(vec![ScalarValue::List(Arc::new(list))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let future = Self::summarize(self.options.clone(), self.instruction.clone(), self.texts.clone());
        Ok(ScalarValue::Utf8(block_on(future)?))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.texts.iter().map(|t| t.capacity() + 24).sum::<usize>()
    }
}
