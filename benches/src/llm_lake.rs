//! The labelled lake of the `llm_*` benchmarks (`lakelink-llm-quality`,
//! `lakelink-llm-plans`).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use lakelink::datagen::shop::{product_nouns, sample_reviews};

fn write(path: &Path, batch: &RecordBatch) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(path.parent().expect("a folder"))?;
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path)?, batch.schema(), None)?;
    writer.write(batch)?;
    writer.close()?;
    Ok(())
}

/// `reviews` (distinct texts, each with its sentiment, topic and the
/// product noun it names), `parts` (TPC-H part names), `n` of each, and
/// `products` (the shop's product nouns).
pub async fn write_lake(lake: &Path, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut seen = std::collections::HashSet::new();
    let reviews: Vec<_> =
        sample_reviews(n * 20, 2026).into_iter().filter(|r| seen.insert(r.text.clone())).take(n).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("review", DataType::Utf8, false),
        Field::new("sentiment", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("noun", DataType::Utf8, false),
    ]));
    let mut nouns = product_nouns();
    nouns.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let noun = |text: &str| nouns.iter().find(|n| text.contains(**n)).copied().unwrap_or_default();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..reviews.len() as i64)),
            Arc::new(StringArray::from_iter_values(reviews.iter().map(|r| r.text.as_str()))),
            Arc::new(StringArray::from_iter_values(reviews.iter().map(|r| r.sentiment))),
            Arc::new(StringArray::from_iter_values(reviews.iter().map(|r| r.topic))),
            Arc::new(StringArray::from_iter_values(reviews.iter().map(|r| noun(&r.text)))),
        ],
    )?;
    write(&lake.join("reviews/part-0.parquet"), &batch)?;
    let products = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(0..nouns.len() as i64)),
            Arc::new(StringArray::from_iter_values(product_nouns())),
        ],
    )?;
    write(&lake.join("products/part-0.parquet"), &products)?;

    let tpch = lake.join("tpch");
    lakelink::datagen::tpch(0.01, &tpch)?;
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_parquet("part", tpch.join("part").to_str().expect("utf-8 path"), Default::default()).await?;
    let parts = ctx
        .sql(&format!("SELECT p_partkey AS id, p_name FROM part ORDER BY p_partkey LIMIT {n}"))
        .await?
        .collect()
        .await?;
    let parts = arrow::compute::concat_batches(&parts[0].schema(), &parts)?;
    write(&lake.join("parts/part-0.parquet"), &parts)?;
    std::fs::remove_dir_all(&tpch)?;
    Ok(())
}

/// `a / b`, NaN when `b` is 0.
pub fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { f64::NAN } else { a as f64 / b as f64 }
}
