//! The schema a client is promised, and batches made to carry it.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::dataframe::DataFrame;

/// The schema a client is promised for a statement: the logical plan's, with
/// every column nullable and view types as their plain counterparts.
///
/// * Physical plans may disagree with the logical one about nullability, and a
///   client that checks the promised schema against the data (ADBC does) must
///   never see a difference.
/// * A `Utf8View` batch read from Parquet shares large data buffers with its
///   neighbours; Arrow IPC sends those buffers whole with every batch, many
///   times the data itself. Plain `Utf8` is compact on the wire and every
///   Flight SQL client (JDBC and BI tools included) understands it.
pub fn result_schema(df: &DataFrame) -> SchemaRef {
    let fields: Vec<Field> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(wire_type(f.data_type())).with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// The type a column travels as.
fn wire_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(Arc::new(f.as_ref().clone().with_data_type(wire_type(f.data_type())))),
        DataType::LargeList(f) => {
            DataType::LargeList(Arc::new(f.as_ref().clone().with_data_type(wire_type(f.data_type()))))
        }
        DataType::Struct(fields) => DataType::Struct(
            fields.iter().map(|f| f.as_ref().clone().with_data_type(wire_type(f.data_type()))).collect(),
        ),
        other => other.clone(),
    }
}

/// Re-labels (and where needed casts) a batch to the advertised schema.
pub(crate) fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    lakelink_protocol::result::conform(batch, schema).map_err(|e| match e {
        datafusion::arrow::error::ArrowError::SchemaError(message) => DataFusionError::Internal(message),
        other => other.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_types_travel_as_plain_types() {
        let nested = DataType::List(Arc::new(Field::new("item", DataType::Utf8View, true)));
        assert_eq!(wire_type(&DataType::Utf8View), DataType::Utf8);
        assert_eq!(wire_type(&nested), DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))));
        assert_eq!(wire_type(&DataType::Int64), DataType::Int64);
    }

    #[test]
    fn conform_relabels_nullability() {
        use datafusion::arrow::array::Int64Array;
        let data = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(data, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        let advertised = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        assert_eq!(conform(batch, &advertised).unwrap().schema(), advertised);
    }
}
