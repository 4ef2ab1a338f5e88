//! `llm_pick(text, candidates, condition) -> text`: the one candidate (of a
//! list of texts) for which a condition between the text and it holds, or
//! NULL when the model finds it holds for none.
//!
//! ```sql
//! SELECT review, llm_pick(review, ['kettle', 'tent', 'yoga mat'], 'the review is about this product')
//! FROM reviews LIMIT 5;
//! ```
//! The model chooses among the candidates (and `none`) by its probabilities
//! of them, as `llm_classify` chooses a label: one request per distinct text
//! and candidate list, however many candidates. A semantic join
//! (`JOIN ... ON llm_match(...)`) is planned with it: each left value's
//! candidates are the right values most similar to it by embedding, and
//! the model picks among them in one request (see [`crate::planner`]).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::logical_expr::{ColumnarValue, Documentation};
use futures::future::try_join_all;

use super::{DOC_SECTION, SemanticFunction, constant, text_array};
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;
use lakelink_model::prompt::{Allowed, Task, clip, word};

/// The most candidates one row may offer.
pub const MAX_CANDIDATES: usize = 100;

/// The `llm_pick` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LlmPick;

#[derive(Debug)]
struct PickTask {
    condition: String,
    candidates: Vec<String>,
}

impl Task for PickTask {
    fn function(&self) -> &'static str {
        "llm_pick"
    }
    fn instructions(&self) -> String {
        let list: Vec<String> = self.candidates.iter().map(|c| format!("- {c}")).collect();
        format!(
            "The candidates are:\n{}\nChoose the one candidate for which this statement about the text and the \
             candidate is true: {}\nAnswer with the candidate only, or none if it is true for none.",
            list.join("\n"),
            self.condition.trim()
        )
    }
    fn question(&self) -> Option<String> {
        Some("Which candidate is it? Answer with the candidate only, or none.".into())
    }
    fn batchable(&self) -> bool {
        false
    }
    fn answer_tokens(&self) -> u32 {
        self.candidates.iter().map(|c| c.len() as u32 / 2 + 4).max().unwrap_or(8)
    }
    fn parse_one(&self, answer: &str) -> Result<Option<String>, String> {
        let given = answer.trim().trim_matches(['"', '\'', '.', '-', ' ']);
        if let Some(c) = self.candidates.iter().find(|c| c.eq_ignore_ascii_case(given)) {
            return Ok(Some(c.clone()));
        }
        if word(answer).eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        Err(format!("'{}' is not one of the candidates", clip(answer)))
    }
    fn allowed(&self) -> Option<Vec<Allowed>> {
        let mut allowed: Vec<Allowed> = self.candidates.iter().map(|c| Allowed::spelled(Some(c), c)).collect();
        allowed.push(Allowed::spelled(None, "none"));
        Some(allowed)
    }
}

/// Each row's candidates: sorted, without repeats, NULLs or empty texts.
fn candidate_lists(arg: &ColumnarValue, rows: usize) -> Result<Vec<Option<Vec<String>>>> {
    let list_type = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
    let array = cast(&arg.to_array(rows)?, &list_type)?;
    let lists = array.as_list::<i32>();
    let mut out = Vec::with_capacity(rows);
    for i in 0..rows {
        if lists.is_null(i) {
            out.push(None);
            continue;
        }
        let value = lists.value(i);
        let mut candidates: Vec<String> =
            value.as_string::<i32>().iter().flatten().filter(|c| !c.trim().is_empty()).map(str::to_string).collect();
        candidates.sort();
        candidates.dedup();
        if candidates.len() > MAX_CANDIDATES {
            return exec_err!("llm_pick: a row offers {} candidates; at most {MAX_CANDIDATES}", candidates.len());
        }
        out.push(Some(candidates).filter(|c| !c.is_empty()));
    }
    Ok(out)
}

#[async_trait]
impl SemanticFunction for LlmPick {
    fn documentation(&self) -> &'static Documentation {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        DOC.get_or_init(|| {
            Documentation::builder(DOC_SECTION, "The one candidate (of a list of texts, at most 100) for which a condition between the text and it holds, by the model's probabilities of the candidates; NULL when it holds for none. One request per distinct text and list. Semantic joins (`JOIN ... ON llm_match(...)`) are planned with it.", "llm_pick(text, candidates, condition)")
                .with_sql_example("SELECT review, llm_pick(review, ['kettle', 'tent', 'yoga mat'], 'the review is about this product')\nFROM reviews LIMIT 5;")
                .with_argument("text", "Text expression.")
                .with_argument("candidates", "List of texts (a column or a constant list).")
                .with_argument("condition", "Constant string: the condition between the text and a candidate, in plain words.")
                .build()
        })
    }
    fn name(&self) -> &'static str {
        "llm_pick"
    }
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        3..=3
    }
    fn first_constant(&self) -> usize {
        2
    }
    fn return_type(&self) -> DataType {
        DataType::Utf8
    }
    fn list_argument(&self) -> Option<usize> {
        Some(1)
    }
    async fn evaluate(&self, args: &[ColumnarValue], rows: usize, options: LlmOptions) -> Result<ColumnarValue> {
        let condition = constant(args, 2, "llm_pick", "condition")?;
        let texts = text_array(&args[0], rows)?;
        let texts = texts.as_string::<i32>();
        let lists = candidate_lists(&args[1], rows)?;
        // Rows grouped by candidates (one prompt each), then by text.
        let mut pairs: HashMap<(Vec<String>, &str), Vec<usize>> = HashMap::new();
        for (row, list) in lists.into_iter().enumerate() {
            if let (Some(list), true) = (list, texts.is_valid(row)) {
                pairs.entry((list, texts.value(row))).or_default().push(row);
            }
        }
        let mut groups: HashMap<Vec<String>, (Vec<String>, Vec<Vec<usize>>)> = HashMap::new();
        for ((list, text), rows_of) in pairs {
            let (values, rows) = groups.entry(list).or_default();
            values.push(text.to_string());
            rows.push(rows_of);
        }
        let asked = try_join_all(groups.into_iter().map(|(candidates, (values, rows_of))| {
            let task = Arc::new(PickTask { condition: condition.clone(), candidates });
            let options = &options;
            async move { Ok::<_, DataFusionError>((engine::answers(options, task, values).await?, rows_of)) }
        }))
        .await?;
        let mut out: Vec<Option<String>> = vec![None; rows];
        for (answers, rows_of) in asked {
            for (answer, rows) in answers.into_iter().zip(rows_of) {
                for row in rows {
                    out[row] = answer.clone();
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.into_iter().collect::<StringArray>())))
    }
}
