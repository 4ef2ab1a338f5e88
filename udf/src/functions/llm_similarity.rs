//! `llm_similarity(a, b) -> double`: the cosine similarity (-1 to 1) of the
//! two texts' embeddings; related texts score higher than unrelated ones.
//!
//! ```sql
//! SELECT p_name FROM part
//! ORDER BY llm_similarity(p_name, 'green metal parts') DESC LIMIT 10;
//! ```

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::Float64Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, Documentation};

use super::{DOC_SECTION, Distinct, SemanticFunction, cosine};
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;

/// The `llm_similarity` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LlmSimilarity;

#[async_trait]
impl SemanticFunction for LlmSimilarity {
    fn documentation(&self) -> &'static Documentation {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        DOC.get_or_init(|| {
            Documentation::builder(DOC_SECTION, "The cosine similarity (-1 to 1) of the two texts' embeddings: related texts score higher than unrelated ones.", "llm_similarity(a, b)")
                .with_sql_example("SELECT p_name FROM part ORDER BY llm_similarity(p_name, 'green metal parts') DESC LIMIT 10;")
                .with_argument("a", "Text expression.")
                .with_argument("b", "Text expression.")
                .build()
        })
    }
    fn name(&self) -> &'static str {
        "llm_similarity"
    }
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        2..=2
    }
    fn first_constant(&self) -> usize {
        2
    }
    fn return_type(&self) -> DataType {
        DataType::Float64
    }
    async fn evaluate(&self, args: &[ColumnarValue], rows: usize, options: LlmOptions) -> Result<ColumnarValue> {
        let (mut texts, a) = Distinct::of(&args[0], rows)?;
        let (b_values, b) = Distinct::of(&args[1], rows)?;
        // One embedding per distinct text of either side.
        let mut position: HashMap<String, usize> = texts.iter().cloned().enumerate().map(|(i, t)| (t, i)).collect();
        let mut b_index = Vec::with_capacity(b_values.len());
        for t in &b_values {
            let i = *position.entry(t.clone()).or_insert_with(|| {
                texts.push(t.clone());
                texts.len() - 1
            });
            b_index.push(i);
        }
        let vectors = engine::embeddings(&options, "llm_similarity", texts).await?;
        let scores: Float64Array = a
            .rows()
            .iter()
            .zip(b.rows())
            .map(|(x, y)| {
                let x = vectors[(*x)?].as_ref()?;
                let y = vectors[b_index[(*y)?]].as_ref()?;
                Some(cosine(x, y))
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(scores)))
    }
}
