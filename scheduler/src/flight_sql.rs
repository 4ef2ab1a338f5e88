//! The Arrow Flight SQL front door: protocol handling only. Planning and
//! execution live in [`crate::query`], credentials in [`crate::auth`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{
    GetCatalogsBuilder, GetDbSchemasBuilder, GetTablesBuilder, SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo,
    XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    Nullable, ProstMessageExt, Searchable, SqlInfo, SqlNullOrdering, SqlSupportedCaseSensitivity, TicketStatementQuery,
    XdbcDataType,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::catalog::SchemaProvider;
use datafusion::common::ScalarValue;
use futures::{Stream, TryStreamExt, stream};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

use crate::ResultEndpoints;
use crate::auth::{Authenticator, Caller};
use crate::error::query_status;
use crate::job::RunningJob;
use crate::query::{CATALOG, QueryEngine, QueryResult, SCHEMA, SettingChange, result_schema};

/// A prepared statement unused for this long is forgotten.
const PREPARED_TTL: Duration = Duration::from_secs(60 * 60);

type FlightStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// LakeLink's Flight SQL service.
pub struct LakeLinkFlightSql {
    engine: Arc<QueryEngine>,
    auth: Authenticator,
    /// Where clients read distributed results: from the executors (the job
    /// runs when the statement is described) or through this scheduler.
    endpoints: ResultEndpoints,
    prepared: Mutex<HashMap<Vec<u8>, Prepared>>,
    sql_info: SqlInfoData,
    xdbc_info: XdbcTypeInfoData,
}

struct Prepared {
    sql: String,
    params: Option<Vec<ScalarValue>>,
    last_used: Instant,
}

/// What a result ticket carries: the statement and its bound parameters, so
/// that any scheduler can serve it and nothing is held between the calls.
#[derive(Serialize, Deserialize)]
struct TicketPayload {
    sql: String,
    /// Each value as a base64 DataFusion protobuf `ScalarValue`.
    params: Option<Vec<String>>,
    /// The client session's model settings when the statement was planned.
    #[serde(default)]
    settings: Vec<(String, String)>,
    /// A `SET`/`RESET` already applied: the result is the change itself.
    #[serde(default)]
    change: Option<SettingChange>,
}

impl TicketPayload {
    fn new(sql: &str, params: Option<&[ScalarValue]>, settings: Vec<(String, String)>) -> Result<Self, Status> {
        let params = params
            .map(|values| {
                values
                    .iter()
                    .map(|v| {
                        let proto = datafusion_proto::protobuf::ScalarValue::try_from(v)
                            .map_err(|e| Status::invalid_argument(format!("parameter {v:?} cannot be sent: {e}")))?;
                        Ok(base64::engine::general_purpose::STANDARD.encode(proto.encode_to_vec()))
                    })
                    .collect::<Result<Vec<_>, Status>>()
            })
            .transpose()?;
        Ok(Self { sql: sql.to_string(), params, settings, change: None })
    }

    fn into_ticket(self) -> Result<Ticket, Status> {
        let handle = serde_json::to_vec(&self).map_err(|e| Status::internal(e.to_string()))?;
        let ticket = TicketStatementQuery { statement_handle: handle.into() };
        Ok(Ticket::new(ticket.as_any().encode_to_vec()))
    }

    fn from_handle(handle: &[u8]) -> Result<Self, Status> {
        serde_json::from_slice(handle).map_err(|_| Status::invalid_argument("malformed ticket"))
    }

    fn params(&self) -> Result<Option<Vec<ScalarValue>>, Status> {
        let Some(params) = &self.params else { return Ok(None) };
        params
            .iter()
            .map(|encoded| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| Status::invalid_argument("malformed ticket parameter"))?;
                let proto = datafusion_proto::protobuf::ScalarValue::decode(bytes.as_slice())
                    .map_err(|_| Status::invalid_argument("malformed ticket parameter"))?;
                ScalarValue::try_from(&proto).map_err(|e| Status::invalid_argument(e.to_string()))
            })
            .collect::<Result<Vec<_>, Status>>()
            .map(Some)
    }
}

impl LakeLinkFlightSql {
    /// A service answering with `engine`, handing out session tokens from `auth`.
    pub fn new(engine: Arc<QueryEngine>, auth: Authenticator) -> Self {
        Self {
            engine,
            auth,
            endpoints: ResultEndpoints::Scheduler,
            prepared: Mutex::default(),
            sql_info: sql_info(),
            xdbc_info: xdbc_info(),
        }
    }

    /// Answers distributed results at `endpoints`.
    pub fn with_result_endpoints(mut self, endpoints: ResultEndpoints) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// Plans a statement (or applies a `SET`) for the client `session` and
    /// describes where its result is fetched.
    async fn statement_info(
        &self,
        sql: &str,
        params: Option<&[ScalarValue]>,
        descriptor: FlightDescriptor,
        session: &str,
    ) -> Result<Response<FlightInfo>, Status> {
        if let Some(change) = self.engine.apply_setting(session, sql).await.map_err(query_status)? {
            let batch = change_batch(&change)?;
            let mut payload = TicketPayload::new(sql, None, Vec::new())?;
            payload.change = Some(change);
            return flight_info(&batch.schema(), payload.into_ticket()?, descriptor);
        }
        let settings = self.engine.session_settings(session);
        let df = self.engine.plan(sql, params, &settings).await.map_err(query_status)?;
        let schema = result_schema(&df);
        // A statement answered here (catalog reads, EXPLAIN ANALYZE) runs
        // when its ticket is read, as without executor endpoints.
        if self.endpoints == ResultEndpoints::Executors
            && let Some(job) = self.engine.run_as_job(df).await.map_err(query_status)?
        {
            return executor_endpoints(job, &schema, descriptor).await;
        }
        let ticket = TicketPayload::new(sql, params, settings)?.into_ticket()?;
        flight_info(&schema, ticket, descriptor)
    }

    /// Runs a statement under a client's model `settings` and streams its result.
    async fn statement_stream(
        &self,
        sql: &str,
        params: Option<&[ScalarValue]>,
        settings: &[(String, String)],
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        let df = self.engine.plan(sql, params, settings).await.map_err(query_status)?;
        let schema = result_schema(&df);
        match self.engine.execute(df, schema.clone()).await.map_err(query_status)? {
            QueryResult::Job(job) => Ok(Response::new(crate::result::forward(job, schema))),
            QueryResult::Batches(batches) => {
                let batches = batches.map_err(|e| FlightError::Tonic(Box::new(query_status(e))));
                let data = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from);
                Ok(Response::new(Box::pin(data)))
            }
        }
    }

    /// A metadata answer computed in this process: a FlightInfo whose ticket is
    /// the command itself.
    fn metadata_info(
        &self,
        schema: SchemaRef,
        command: impl ProstMessageExt,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&schema, Ticket::new(command.as_any().encode_to_vec()), descriptor)
    }

    async fn tables_batch(&self, query: CommandGetTables) -> Result<RecordBatch, Status> {
        let include_schema = query.include_schema;
        let mut builder: GetTablesBuilder = query.into_builder();
        let lake = self.engine.lake();
        for name in lake.table_names() {
            let schema = if include_schema {
                match lake.table(&name).await {
                    Ok(Some(table)) => table.schema(),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!("table {name} left out of the table list: {e}");
                        continue;
                    }
                }
            } else {
                Arc::new(Schema::empty())
            };
            builder.append(CATALOG, SCHEMA, &name, "TABLE", &schema).map_err(internal)?;
        }
        builder.build().map_err(internal)
    }

    fn prepared(&self, handle: &[u8]) -> Result<(String, Option<Vec<ScalarValue>>), Status> {
        let mut prepared = self.prepared.lock().expect("prepared lock");
        let statement =
            prepared.get_mut(handle).ok_or_else(|| Status::not_found("unknown or closed prepared statement"))?;
        statement.last_used = Instant::now();
        Ok((statement.sql.clone(), statement.params.clone()))
    }
}

/// The client connection a request belongs to (each Flight SQL connection
/// is one HTTP/2 connection, numbered when accepted, so a later connection
/// from the same address and port starts afresh).
fn session_key<T>(request: &Request<T>) -> String {
    match request.extensions().get::<crate::ConnectionId>() {
        Some(id) => format!("connection-{}", id.0),
        None => "default".into(),
    }
}

/// The answer to `SET`/`RESET`: one row naming the setting and its new value.
fn change_batch(change: &SettingChange) -> Result<RecordBatch, Status> {
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{DataType, Field};
    let schema = Arc::new(Schema::new(vec![
        Field::new("setting", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![Some(change.key.clone())])),
            Arc::new(StringArray::from(vec![change.value.clone()])),
        ],
    )
    .map_err(internal)
}

/// The answer for a distributed result read from the executors: one
/// endpoint per result partition, in order, each at the executor writing it
/// with a ticket for one read (`lakelink_protocol::result`), given once
/// every partition's task has started. The schema is the one the executors
/// send (dictionaries as their values), so that every endpoint matches it.
async fn executor_endpoints(
    mut job: RunningJob,
    schema: &SchemaRef,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let sent = crate::result::sent_schema(schema).await?;
    let mut endpoints = vec![];
    while let Some(located) = job.partition(endpoints.len()).await.map_err(query_status)? {
        endpoints.push(crate::result::grant(&located, &sent).await?);
    }
    // The clients read the partitions from the executors: the job runs on,
    // and its files go once it has ended (granted ones have a name of their
    // own until they are read).
    job.detach();
    let info =
        FlightInfo::new().try_with_schema(&sent).map_err(internal)?.with_descriptor(descriptor).with_ordered(true);
    Ok(Response::new(endpoints.into_iter().fold(info, FlightInfo::with_endpoint)))
}

fn flight_info(schema: &Schema, ticket: Ticket, descriptor: FlightDescriptor) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(internal)?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor)
        .with_ordered(true);
    Ok(Response::new(info))
}

/// An unexpected failure in building a protocol answer.
fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn batch_stream(batch: RecordBatch) -> Response<FlightStream<arrow_flight::FlightData>> {
    let schema = batch.schema();
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(stream::once(async move { Ok(batch) }))
        .map_err(Status::from);
    Response::new(Box::pin(data))
}

fn ipc_schema(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into().map_err(internal)?;
    Ok(message.0)
}

#[tonic::async_trait]
impl FlightSqlService for LakeLinkFlightSql {
    type FlightService = LakeLinkFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<FlightStream<HandshakeResponse>>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let token = match caller {
            Some(caller) if caller.needs_session_token => Some(self.auth.issue_session_token(&caller.user)),
            _ => request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' ').map(|(_, t)| t.to_string())),
        };
        let payload = token.clone().unwrap_or_default();
        let reply = HandshakeResponse { protocol_version: 0, payload: payload.into_bytes().into() };
        let mut response: Response<FlightStream<HandshakeResponse>> =
            Response::new(Box::pin(stream::once(async move { Ok(reply) })));
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().map_err(|_| Status::internal("bad token"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let session = session_key(&request);
        self.statement_info(&query.query, None, request.into_inner(), &session).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (sql, params) = self.prepared(&cmd.prepared_statement_handle)?;
        let session = session_key(&request);
        self.statement_info(&sql, params.as_deref(), request.into_inner(), &session).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        let payload = TicketPayload::from_handle(&ticket.statement_handle)?;
        if let Some(change) = &payload.change {
            return Ok(batch_stream(change_batch(change)?));
        }
        let params = payload.params()?;
        self.statement_stream(&payload.sql, params.as_deref(), &payload.settings).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        let (sql, params) = self.prepared(&query.prepared_statement_handle)?;
        let settings = self.engine.session_settings(&session_key(&request));
        self.statement_stream(&sql, params.as_deref(), &settings).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let session = session_key(&request);
        // DB-API drivers prepare every statement, SET included.
        let change = self.engine.apply_setting(&session, &query.query).await.map_err(query_status)?;
        let settings = self.engine.session_settings(&session);
        let parameter_schema = match change {
            Some(_) => Schema::empty(),
            None => self.engine.parameter_schema(&query.query, &settings).await.map_err(query_status)?,
        };
        let dataset_schema = if let Some(change) = &change {
            change_batch(change)?.schema()
        } else if parameter_schema.fields().is_empty() {
            let df = self.engine.plan(&query.query, None, &settings).await.map_err(query_status)?;
            result_schema(&df)
        } else {
            // The result schema of a statement with parameters is known once
            // they are bound; clients learn it from GetFlightInfo.
            Arc::new(Schema::empty())
        };
        let handle = uuid::Uuid::new_v4().as_bytes().to_vec();
        {
            let mut prepared = self.prepared.lock().expect("prepared lock");
            prepared.retain(|_, p| p.last_used.elapsed() < PREPARED_TTL);
            prepared.insert(handle.clone(), Prepared { sql: query.query, params: None, last_used: Instant::now() });
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: ipc_schema(&dataset_schema)?,
            parameter_schema: ipc_schema(&parameter_schema)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let flight_data = request.into_inner().map_err(FlightError::from);
        let batches: Vec<RecordBatch> =
            FlightRecordBatchStream::new_from_flight_data(flight_data).try_collect().await.map_err(Status::from)?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let params = match rows {
            0 => None,
            1 => {
                let batch = batches.iter().find(|b| b.num_rows() == 1).expect("one row");
                let values = batch
                    .columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, 0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Status::invalid_argument(format!("unreadable parameter: {e}")))?;
                Some(values)
            }
            n => {
                return Err(Status::invalid_argument(format!(
                    "{n} parameter rows were bound; a query takes one row of parameters per execution"
                )));
            }
        };
        let mut prepared = self.prepared.lock().expect("prepared lock");
        let statement = prepared
            .get_mut(query.prepared_statement_handle.as_ref())
            .ok_or_else(|| Status::not_found("unknown or closed prepared statement"))?;
        statement.params = params;
        statement.last_used = Instant::now();
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(query.prepared_statement_handle) })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        self.prepared.lock().expect("prepared lock").remove(query.prepared_statement_handle.as_ref());
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(schema, query, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        let mut builder: GetCatalogsBuilder = query.into_builder();
        builder.append(CATALOG);
        Ok(batch_stream(builder.build().map_err(internal)?))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(schema, query, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        let mut builder: GetDbSchemasBuilder = query.into_builder();
        builder.append(CATALOG, SCHEMA);
        Ok(batch_stream(builder.build().map_err(internal)?))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(schema, query, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        Ok(batch_stream(self.tables_batch(query).await?))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(schema, query, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        Ok(batch_stream(builder.build().map_err(internal)?))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.metadata_info(schema, query, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        let batch = query.into_builder(&self.sql_info).build().map_err(internal)?;
        Ok(batch_stream(batch))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc_info).schema();
        self.metadata_info(schema, query, request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        let batch = query.into_builder(&self.xdbc_info).build().map_err(internal)?;
        Ok(batch_stream(batch))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        Err(Status::unimplemented(format!("LakeLink does not serve tickets of type {}", message.type_url)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn sql_info() -> SqlInfoData {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "LakeLink");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, false);
    builder.append(SqlInfo::SqlIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32);
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    builder.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    builder.append(SqlInfo::SqlAllTablesAreSelectable, true);
    builder.append(SqlInfo::SqlNullOrdering, SqlNullOrdering::SqlNullsSortedHigh as i32);
    builder.build().expect("static SqlInfo is valid")
}

fn xdbc_info() -> XdbcTypeInfoData {
    let types = [
        ("BOOLEAN", XdbcDataType::XdbcBit, None),
        ("TINYINT", XdbcDataType::XdbcTinyint, Some(3)),
        ("SMALLINT", XdbcDataType::XdbcSmallint, Some(5)),
        ("INTEGER", XdbcDataType::XdbcInteger, Some(10)),
        ("BIGINT", XdbcDataType::XdbcBigint, Some(19)),
        ("FLOAT", XdbcDataType::XdbcFloat, Some(24)),
        ("DOUBLE", XdbcDataType::XdbcDouble, Some(53)),
        ("DECIMAL", XdbcDataType::XdbcDecimal, Some(38)),
        ("VARCHAR", XdbcDataType::XdbcVarchar, None),
        ("DATE", XdbcDataType::XdbcDate, None),
        ("TIMESTAMP", XdbcDataType::XdbcTimestamp, None),
        ("BINARY", XdbcDataType::XdbcBinary, None),
    ];
    let mut builder = XdbcTypeInfoDataBuilder::new();
    for (name, data_type, column_size) in types {
        let text = matches!(data_type, XdbcDataType::XdbcVarchar);
        builder.append(XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size,
            literal_prefix: text.then(|| "'".into()),
            literal_suffix: text.then(|| "'".into()),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: text,
            searchable: Searchable::Full,
            unsigned_attribute: column_size.map(|_| false),
            fixed_prec_scale: false,
            auto_increment: None,
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: column_size.map(|_| 10),
            interval_precision: None,
        });
    }
    builder.build().expect("static type info is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_parameters() {
        let params = vec![ScalarValue::Utf8(Some("1-URGENT".into())), ScalarValue::Int64(Some(7))];
        let payload =
            TicketPayload::new("SELECT $1, $2", Some(&params), vec![("lakelink.llm.model".into(), "m".into())])
                .unwrap();
        let ticket = payload.into_ticket().unwrap();
        let any = Any::decode(ticket.ticket.as_ref()).unwrap();
        let inner: TicketStatementQuery = any.unpack().unwrap().unwrap();
        let back = TicketPayload::from_handle(&inner.statement_handle).unwrap();
        assert_eq!(back.sql, "SELECT $1, $2");
        assert_eq!(back.params().unwrap().unwrap(), params);
    }
}
