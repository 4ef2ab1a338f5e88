//! The Arrow Flight SQL front door: protocol handling only. Planning and
//! execution live in [`crate::query`], credentials in [`crate::auth`].

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{
    GetCatalogsBuilder, GetDbSchemasBuilder, GetTablesBuilder, SqlInfoData, XdbcTypeInfoData,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::catalog::SchemaProvider;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use futures::{Stream, TryStreamExt, stream};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::ResultEndpoints;
use crate::auth::{Authenticator, Caller};
use crate::error::query_status;
use crate::job::RunningJob;
use crate::limits::{ClientSlot, ClientSlots, Limits};
use crate::query::{CATALOG, QueryEngine, QueryResult, SCHEMA, SettingChange, bind, new_execution, result_schema};
use lakelink_protocol::cluster::ClusterLink;

pub mod door;
mod metadata;
pub mod statements;

use statements::{Prepared, Ready, Statements};

type FlightStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The most parameter bytes one DoPut may bind (one row of parameters).
pub const MAX_PARAMETER_BYTES: usize = 1024 * 1024;

/// LakeLink's Flight SQL service.
pub struct LakeLinkFlightSql {
    engine: Arc<QueryEngine>,
    auth: Authenticator,
    /// Where clients read distributed results: from the executors (the job
    /// runs when the statement is described) or through this scheduler.
    endpoints: ResultEndpoints,
    limits: Limits,
    /// The statements each client address runs now.
    slots: ClientSlots,
    statements: Statements,
    /// How the scheduler reaches executors to read or grant results.
    link: ClusterLink,
    sql_info: SqlInfoData,
    xdbc_info: XdbcTypeInfoData,
}

impl LakeLinkFlightSql {
    /// A service answering with `engine`, handing out session tokens from
    /// `auth`, reaching executors through `link`.
    pub fn new(engine: Arc<QueryEngine>, auth: Authenticator, link: ClusterLink) -> Self {
        Self {
            engine,
            auth,
            link,
            endpoints: ResultEndpoints::Scheduler,
            limits: Limits::none(),
            slots: ClientSlots::default(),
            statements: Statements::default(),
            sql_info: metadata::sql_info(),
            xdbc_info: metadata::xdbc_info(),
        }
    }

    /// Runs every statement within `limits`.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self.slots = ClientSlots::new(limits.max_client_statements);
        self
    }

    /// Answers distributed results at `endpoints`.
    pub fn with_result_endpoints(mut self, endpoints: ResultEndpoints) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// Plans a statement (or applies a `SET`) for the client `session` and
    /// describes where its result is read: a ticket naming the plan kept
    /// here for `owner`, or, with executor endpoints, the running job's files.
    async fn statement_info(
        &self,
        sql: &str,
        planned: Option<DataFrame>,
        descriptor: FlightDescriptor,
        session: &str,
        owner: &str,
    ) -> Result<Response<FlightInfo>, Status> {
        if let Some(change) = self.engine.apply_setting(session, sql).await.map_err(query_status)? {
            let schema = change_batch(&change)?.schema();
            return flight_info(&schema, self.statements.keep(Ready::Change(change), owner), descriptor);
        }
        let df = match planned {
            Some(df) => df,
            None => {
                let settings = self.engine.session_settings(session);
                self.engine.plan(sql, None, &settings).await.map_err(query_status)?
            }
        };
        let schema = result_schema(&df);
        // A statement answered here (catalog reads, EXPLAIN ANALYZE) runs
        // when its ticket is read, as without executor endpoints.
        if self.endpoints == ResultEndpoints::Executors
            && let Some(job) = self.engine.run_as_job(df.clone()).await.map_err(query_status)?
        {
            // Its result is read elsewhere: the timeout cancels the job.
            if let Some(timeout) = self.limits.query_timeout {
                self.engine.cancel_after(&df, timeout);
            }
            match executor_endpoints(job, &schema, descriptor.clone(), &self.link).await? {
                Endpoints::Granted(info) => return Ok(*info),
                // An executor holding its cap of unread results grants no
                // more: the statement runs again, read through here, so
                // one client's unread results do not stop the others.
                Endpoints::Full(status) => {
                    tracing::info!("{}: the result is passed through the scheduler instead", status.message());
                    let df = new_execution(df).map_err(query_status)?;
                    let ticket = self.statements.keep(Ready::Plan { df: Box::new(df), schema: schema.clone() }, owner);
                    return flight_info(&schema, ticket, descriptor);
                }
            }
        }
        let ticket = self.statements.keep(Ready::Plan { df: Box::new(df), schema: schema.clone() }, owner);
        flight_info(&schema, ticket, descriptor)
    }

    /// Runs a planned statement and streams its result, holding the
    /// client's `slot` until the stream ends.
    async fn statement_stream(
        &self,
        df: DataFrame,
        schema: SchemaRef,
        slot: Option<ClientSlot>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        let data = match self.engine.execute(df, schema.clone()).await.map_err(query_status)? {
            QueryResult::Job(job) => crate::result::forward(job, schema, self.link.clone()),
            QueryResult::Batches(batches) => {
                let batches = batches.map_err(|e| FlightError::Tonic(Box::new(query_status(e))));
                let encoded = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from);
                futures::StreamExt::boxed(encoded)
            }
        };
        let data = futures::StreamExt::map(self.limits.bound(data), move |message| {
            let _held = &slot;
            message
        });
        Ok(Response::new(futures::StreamExt::boxed(data)))
    }

    /// The plan for the next execution of the prepared statement `handle`:
    /// the one made when it was prepared, if the session's settings have not
    /// changed since (the first execution runs it as it is; later ones as
    /// queries of their own), else planned again; with its parameters bound.
    /// `None` for a `SET`/`RESET`, which is applied, not planned.
    async fn prepared_plan(
        &self,
        handle: &[u8],
        session: &str,
        owner: &str,
    ) -> Result<(String, Option<DataFrame>), Status> {
        let settings = self.engine.session_settings(session);
        let (sql, params, kept) = self.statements.with_prepared(handle, owner, |p| {
            let kept = match &p.plan {
                Some((planned_with, df)) if *planned_with == settings => Some((df.clone(), p.executions == 0)),
                _ => None,
            };
            p.executions += 1;
            (p.sql.clone(), p.params.clone(), kept)
        })?;
        if is_setting(&sql) {
            return Ok((sql, None));
        }
        let df = match kept {
            Some((df, true)) => df,
            Some((df, false)) => new_execution(df).map_err(query_status)?,
            None => self.engine.plan_unbound(&sql, &settings).await.map_err(query_status)?,
        };
        Ok((sql, Some(bind(df, params.as_deref()).map_err(query_status)?)))
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

/// The address a request came from, when known.
pub(crate) fn peer<T>(request: &Request<T>) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
        .or_else(|| request.remote_addr().map(|a| a.ip()))
}

/// The user a request was authenticated as (`anonymous` without auth):
/// statements and prepared statements belong to it.
fn owner<T>(request: &Request<T>) -> String {
    request.extensions().get::<Caller>().map(|c| c.user.clone()).unwrap_or_else(|| "anonymous".into())
}

/// Whether `sql` is a `SET` or `RESET` (applied, not planned).
fn is_setting(sql: &str) -> bool {
    let first = sql.split_whitespace().next().unwrap_or("");
    first.eq_ignore_ascii_case("SET") || first.eq_ignore_ascii_case("RESET")
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
    link: &ClusterLink,
) -> Result<Endpoints, Status> {
    let sent = crate::result::sent_schema(schema).await?;
    let mut granted = vec![];
    loop {
        let next = match job.partition(granted.len()).await {
            Ok(Some(located)) => match crate::result::grant(&located, &sent, link).await {
                Ok(endpoint) => Ok(Some((located, endpoint))),
                // The executor's cap of unread results: read another way.
                Err(status) if status.code() == tonic::Code::ResourceExhausted => Err(Ok(status)),
                Err(status) => Err(Err(status)),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(Err(query_status(e))),
        };
        match next {
            Ok(Some(endpoint)) => granted.push(endpoint),
            Ok(None) => break,
            Err(refused) => {
                // The statement fails (or is read another way): the grants
                // made so far would wait for nobody.
                crate::result::revoke(&granted, link).await;
                return refused.map(Endpoints::Full);
            }
        }
    }
    let endpoints: Vec<FlightEndpoint> = granted.into_iter().map(|(_, endpoint)| endpoint).collect();
    // The clients read the partitions from the executors: the job runs on,
    // and its files go once it has ended (granted ones have a name of their
    // own until they are read).
    job.detach();
    let info =
        FlightInfo::new().try_with_schema(&sent).map_err(internal)?.with_descriptor(descriptor).with_ordered(true);
    Ok(Endpoints::Granted(Box::new(Response::new(endpoints.into_iter().fold(info, FlightInfo::with_endpoint)))))
}

/// How a statement's result is handed out at the executors.
enum Endpoints {
    /// Every partition, granted where it is written.
    Granted(Box<Response<FlightInfo>>),
    /// An executor holds its cap of unread results (`--max-unread-results`):
    /// why, for the log; nothing was granted.
    Full(Status),
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
        let (session, owner) = (session_key(&request), owner(&request));
        let _slot = self.slots.take(peer(&request))?;
        self.statement_info(&query.query, None, request.into_inner(), &session, &owner).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (session, owner) = (session_key(&request), owner(&request));
        let _slot = self.slots.take(peer(&request))?;
        let (sql, planned) = self.prepared_plan(&cmd.prepared_statement_handle, &session, &owner).await?;
        self.statement_info(&sql, planned, request.into_inner(), &session, &owner).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        match self.statements.take(&ticket.statement_handle, &owner(&request))? {
            Ready::Change(change) => Ok(batch_stream(change_batch(&change)?)),
            Ready::Plan { df, schema } => {
                let slot = self.slots.take(peer(&request))?;
                self.statement_stream(*df, schema, slot).await
            }
        }
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<FlightStream<arrow_flight::FlightData>>, Status> {
        let (session, owner) = (session_key(&request), owner(&request));
        let slot = self.slots.take(peer(&request))?;
        let (sql, planned) = self.prepared_plan(&query.prepared_statement_handle, &session, &owner).await?;
        let Some(df) = planned else {
            let change = self.engine.apply_setting(&session, &sql).await.map_err(query_status)?;
            let change = change.ok_or_else(|| Status::internal("a SET that changed nothing"))?;
            return Ok(batch_stream(change_batch(&change)?));
        };
        let schema = result_schema(&df);
        self.statement_stream(df, schema, slot).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (session, owner) = (session_key(&request), owner(&request));
        // DB-API drivers prepare every statement, SET included.
        let change = self.engine.apply_setting(&session, &query.query).await.map_err(query_status)?;
        let settings = self.engine.session_settings(&session);
        let (parameter_schema, dataset_schema, plan) = match &change {
            Some(change) => (Schema::empty(), change_batch(change)?.schema(), None),
            None => {
                let df = self.engine.plan_unbound(&query.query, &settings).await.map_err(query_status)?;
                let parameters = QueryEngine::parameter_schema(&df).map_err(query_status)?;
                // The result schema of a statement with parameters is known
                // once they are bound; clients learn it from GetFlightInfo.
                let dataset =
                    if parameters.fields().is_empty() { result_schema(&df) } else { Arc::new(Schema::empty()) };
                (parameters, dataset, Some((settings, df)))
            }
        };
        let prepared = Prepared { sql: query.query, params: None, plan, executions: 0 };
        let handle = self.statements.prepare(prepared, &owner);
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: ipc_schema(&dataset_schema)?,
            parameter_schema: ipc_schema(&parameter_schema)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let owner = owner(&request);
        let flight_data = request.into_inner().map_err(FlightError::from);
        // Read as it comes: more than one row, or more bytes than one row of
        // parameters can need, is refused before the rest is read.
        let mut batches = FlightRecordBatchStream::new_from_flight_data(flight_data);
        let (mut rows, mut bytes, mut params) = (0usize, 0usize, None);
        while let Some(batch) = batches.try_next().await.map_err(Status::from)? {
            rows += batch.num_rows();
            bytes += batch.get_array_memory_size();
            if rows > 1 {
                return Err(Status::invalid_argument(format!(
                    "{rows} or more parameter rows were bound; a query takes one row of parameters per execution"
                )));
            }
            if bytes > MAX_PARAMETER_BYTES {
                return Err(Status::invalid_argument(format!(
                    "the bound parameters take more than {MAX_PARAMETER_BYTES} bytes"
                )));
            }
            if batch.num_rows() == 1 {
                let values = batch
                    .columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, 0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Status::invalid_argument(format!("unreadable parameter: {e}")))?;
                params = Some(values);
            }
        }
        let handle = query.prepared_statement_handle.clone();
        self.statements.with_prepared(&handle, &owner, |p| p.params = params)?;
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle) })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        self.statements.close(&query.prepared_statement_handle, &owner(&request));
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
