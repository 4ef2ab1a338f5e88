//! `llm_embed(text) -> fixed_size_list<float32>`: a unit-length embedding
//! of the text (384 dimensions with the default local embedder; set
//! `embedding_dim` in the process configuration for another model).
//!
//! ```sql
//! SELECT p_name, llm_embed(p_name) AS v FROM part LIMIT 5;
//! ```

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::{FixedSizeListArray, Float32Array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{ColumnarValue, Documentation};

use super::{DOC_SECTION, Distinct, SemanticFunction};
use lakelink_model::config::LlmOptions;
use lakelink_model::engine;

/// The `llm_embed` function; its vectors have `dim` dimensions.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LlmEmbed {
    dim: usize,
}

impl LlmEmbed {
    /// The function for vectors of `dim` dimensions.
    pub fn new(dim: usize) -> Self {
        Self { dim }
    }
}

#[async_trait]
impl SemanticFunction for LlmEmbed {
    fn documentation(&self) -> &'static Documentation {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        DOC.get_or_init(|| {
            Documentation::builder(DOC_SECTION, "A unit-length embedding of the text (384 dimensions with the default local embedder; `embedding_dim` for another model).", "llm_embed(text)")
                .with_sql_example("SELECT p_name, llm_embed(p_name) AS v FROM part LIMIT 5;")
                .with_argument("text", "Text expression.")
                .build()
        })
    }
    fn name(&self) -> &'static str {
        "llm_embed"
    }
    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        1..=1
    }
    fn first_constant(&self) -> usize {
        1
    }
    fn return_type(&self) -> DataType {
        DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), self.dim as i32)
    }
    async fn evaluate(&self, args: &[ColumnarValue], rows: usize, options: LlmOptions) -> Result<ColumnarValue> {
        if options.embedding_dim != self.dim {
            return exec_err!(
                "llm_embed was planned for {} dimensions but this session's lakelink.llm.embedding_dim is {}; \
                 embedding_dim is a process setting: set it in the configuration of every process",
                self.dim,
                options.embedding_dim
            );
        }
        let (values, distinct) = Distinct::of(&args[0], rows)?;
        let vectors = engine::embeddings(&options, "llm_embed", values).await?;
        let mut values = Vec::with_capacity(rows * self.dim);
        let mut valid = Vec::with_capacity(rows);
        for v in distinct.spread(&vectors) {
            valid.push(v.is_some());
            match v {
                Some(v) => values.extend_from_slice(&v),
                None => values.extend(std::iter::repeat_n(0.0, self.dim)),
            }
        }
        let field = Arc::new(Field::new("item", DataType::Float32, true));
        let array = FixedSizeListArray::try_new(
            field,
            self.dim as i32,
            Arc::new(Float32Array::from(values)),
            Some(NullBuffer::from(valid)),
        )?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}
