//! `Extensions` wires custom functions into the planning side, the scheduler
//! and every executor. A scalar function carries state (an offset chosen by
//! the test) that must reach the executors through the codecs.

use std::sync::Arc;

use arrow::array::Int64Array;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::ViewTable;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility, lit,
};
use lakelink_tests::{TestCluster, query, rows, tpch_lake};
use lakelink_udf::{Extensions, StatefulAggregateUDF, StatefulScalarUDF};

/// `add_offset(x)`: x plus an offset fixed when the function was registered.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AddOffset {
    offset: i64,
    signature: Signature,
}

impl AddOffset {
    fn new(offset: i64) -> Self {
        Self { offset, signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for AddOffset {
    fn name(&self) -> &str {
        "add_offset"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let values = args.args[0].clone().into_array(args.number_rows)?;
        let values = values.as_any().downcast_ref::<Int64Array>().expect("Int64 argument");
        let out: Int64Array = values.iter().map(|v| v.map(|v| v + self.offset)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

impl StatefulScalarUDF for AddOffset {
    fn encode_state(&self) -> Result<Vec<u8>> {
        Ok(self.offset.to_le_bytes().to_vec())
    }
    fn decode_state(state: &[u8]) -> Result<Self> {
        Ok(Self::new(decode_i64(state, "add_offset")?))
    }
}

/// `scaled_sum(x)`: the sum of x times a factor fixed at registration. Partial
/// sums travel between stages; the factor is applied by the final stage, on
/// whichever executor runs it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ScaledSum {
    factor: i64,
    signature: Signature,
}

impl ScaledSum {
    fn new(factor: i64) -> Self {
        Self { factor, signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable) }
    }
}

impl AggregateUDFImpl for ScaledSum {
    fn name(&self) -> &str {
        "scaled_sum"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(ScaledSumAccumulator { sum: 0, factor: self.factor }))
    }
}

#[derive(Debug)]
struct ScaledSumAccumulator {
    sum: i64,
    factor: i64,
}

impl Accumulator for ScaledSumAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let values = values[0].as_any().downcast_ref::<Int64Array>().expect("Int64");
        self.sum += values.iter().flatten().sum::<i64>();
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.sum * self.factor)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Int64(Some(self.sum))])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }
}

impl StatefulAggregateUDF for ScaledSum {
    fn encode_state(&self) -> Result<Vec<u8>> {
        Ok(self.factor.to_le_bytes().to_vec())
    }
    fn decode_state(state: &[u8]) -> Result<Self> {
        Ok(Self::new(decode_i64(state, "scaled_sum")?))
    }
}

/// Reads the one `i64` both test functions keep as state.
fn decode_i64(state: &[u8], function: &str) -> Result<i64> {
    let bytes: [u8; 8] =
        state.try_into().map_err(|_| DataFusionError::Plan(format!("bad {function} state: {state:?}")))?;
    Ok(i64::from_le_bytes(bytes))
}

/// `first_numbers(k)`: a table of 1..=k, planned where SQL is planned.
#[derive(Debug)]
struct FirstNumbers;

impl TableFunctionImpl for FirstNumbers {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let Some(Expr::Literal(ScalarValue::Int64(Some(k)), _)) = args.exprs().first() else {
            return Err(DataFusionError::Plan("first_numbers takes one integer literal".into()));
        };
        let rows: Vec<Vec<Expr>> = (1..=*k).map(|i| vec![lit(i)]).collect();
        let plan = LogicalPlanBuilder::values(rows)?.build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}

fn with_offset(offset: i64) -> Extensions {
    Extensions::lakelink()
        .with_stateful_scalar(AddOffset::new(offset))
        .with_stateful_aggregate(ScaledSum::new(offset))
        .with_table_function("first_numbers", Arc::new(FirstNumbers))
}

const SQL: &str = "SELECT n_nationkey, add_offset(n_nationkey) AS shifted FROM nation WHERE n_nationkey < 3 ORDER BY 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn function_state_travels_to_every_executor() {
    // The executors know add_offset with another offset: only the state sent
    // with the plan can give 42.
    let cluster = TestCluster::start_with(tpch_lake(), with_offset(42), with_offset(0), 2).await;
    let mut conn = cluster.connect().await;
    let result = query(&mut conn, SQL).await.expect("query runs on the cluster");
    assert_eq!(rows(&result), vec![vec!["0", "42"], vec!["1", "43"], vec!["2", "44"]]);

    // Across a shuffle too: the function runs on both executors.
    let sql = "SELECT sum(add_offset(l_orderkey)) - sum(l_orderkey) AS extra, count(*) AS n FROM lineitem";
    let result = query(&mut conn, sql).await.expect("aggregate runs");
    let r = rows(&result);
    let n: i64 = r[0][1].parse().unwrap();
    assert_eq!(r[0][0], (42 * n).to_string());

    // An aggregate with state, split into partial and final stages.
    let sql = "SELECT scaled_sum(l_orderkey) = 42 * sum(l_orderkey) AS scaled FROM lineitem";
    let result = query(&mut conn, sql).await.expect("stateful aggregate runs");
    assert_eq!(rows(&result), vec![vec!["true"]]);

    let result = query(&mut conn, "SELECT sum(column1) FROM first_numbers(4)").await.expect("table function");
    assert_eq!(rows(&result), vec![vec!["10"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executors_without_the_registration_refuse_the_plan() {
    let cluster = TestCluster::start_with(tpch_lake(), with_offset(42), Extensions::lakelink(), 1).await;
    let mut conn = cluster.connect().await;
    let err = query(&mut conn, SQL).await.expect_err("the executor cannot decode add_offset");
    assert!(!err.to_string().is_empty());
    // The cluster keeps serving queries that need no custom function.
    let result = query(&mut conn, "SELECT count(*) FROM nation").await.expect("plain query still works");
    assert_eq!(rows(&result), vec![vec!["25"]]);
}
