//! A Flight SQL connection: statements, table listings and authentication,
//! reporting the server's own error messages.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{CommandGetTables, CommandStatementQuery, ProstMessageExt};
use arrow_flight::{FlightDescriptor, FlightInfo, HandshakeRequest};
use base64::Engine;
use futures::{StreamExt, TryStreamExt, stream};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::ClientError;

/// How to log in.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    /// No credentials.
    #[default]
    None,
    /// A bearer token.
    Token(String),
    /// A user name and password, exchanged for a session token.
    Password {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
}

/// A connection to a LakeLink scheduler (or any Flight SQL server).
#[derive(Debug, Clone)]
pub struct Connection {
    client: FlightServiceClient<Channel>,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    tls_ca: Option<Vec<u8>>,
}

/// A table and its columns.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The table's name.
    pub name: String,
    /// Its columns.
    pub schema: Schema,
}

impl Connection {
    /// Connects to `url` (`grpc://host:port`, or `grpc+tls://host:port`
    /// checking the server's certificate against the CA in `tls_ca`, PEM;
    /// without it, against the system's roots) and logs in.
    pub async fn connect(url: &str, credentials: &Credentials, tls_ca: Option<&Path>) -> Result<Self, ClientError> {
        let tls_ca = match tls_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ClientError::Usage(format!("cannot read the TLS CA certificate {}: {e}", path.display()))
            })?),
            None => None,
        };
        let client = flight_client(url, tls_ca.as_deref()).await?;
        let mut connection = Self { client, authorization: None, tls_ca };
        match credentials {
            Credentials::None => {}
            Credentials::Token(token) => connection.authorization = Some(header(&format!("Bearer {token}"))?),
            Credentials::Password { user, password } => connection.login(user, password).await?,
        }
        Ok(connection)
    }

    async fn login(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut request = tonic::Request::new(stream::once(async { HandshakeRequest::default() }));
        request.metadata_mut().insert("authorization", header(&format!("Basic {basic}"))?);
        let response = self.client.handshake(request).await?;
        let token =
            response.metadata().get("authorization").cloned().ok_or_else(|| {
                ClientError::Transfer("the server accepted the login but sent no session token".into())
            })?;
        self.authorization = Some(token);
        Ok(())
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(auth) = &self.authorization {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request
    }

    async fn info(&mut self, command: impl ProstMessageExt) -> Result<FlightInfo, ClientError> {
        let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
        Ok(self.client.get_flight_info(self.request(descriptor)).await?.into_inner())
    }

    /// Fetches every endpoint of `info` in order, as one stream of batches;
    /// an endpoint with a location is read there (a scheduler started with
    /// `--result-endpoints executors` names the executors holding the result).
    /// Credentials go to the scheduler only: an executor admits a read by the
    /// one-time grant inside the ticket.
    async fn fetch(&mut self, info: FlightInfo) -> Result<ResultStream, ClientError> {
        let schema = info.clone().try_decode_schema().map_err(|e| ClientError::Transfer(e.to_string()))?;
        let mut streams = vec![];
        let mut elsewhere: HashMap<String, FlightServiceClient<Channel>> = HashMap::new();
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.ok_or_else(|| ClientError::Transfer("an endpoint has no ticket".into()))?;
            let location =
                endpoint.location.iter().map(|l| l.uri.as_str()).find(|uri| !uri.starts_with(REUSE_CONNECTION));
            let data = match location {
                None => self.client.do_get(self.request(ticket)).await?.into_inner(),
                Some(uri) => {
                    if !elsewhere.contains_key(uri) {
                        elsewhere.insert(uri.to_string(), flight_client(uri, self.tls_ca.as_deref()).await?);
                    }
                    let client = elsewhere.get_mut(uri).expect("inserted above");
                    client.do_get(tonic::Request::new(ticket)).await?.into_inner()
                }
            };
            streams.push(FlightRecordBatchStream::new_from_flight_data(data.map_err(FlightError::from)));
        }
        let batches = stream::iter(streams).flatten().map_err(ClientError::from).boxed();
        Ok(ResultStream { schema, batches })
    }

    /// Runs one SQL statement; the result arrives as a stream.
    pub async fn query(&mut self, sql: &str) -> Result<ResultStream, ClientError> {
        let info = self.info(CommandStatementQuery { query: sql.to_string(), transaction_id: None }).await?;
        self.fetch(info).await
    }

    /// Lists the tables with their columns.
    pub async fn tables(&mut self, name_pattern: Option<&str>) -> Result<Vec<TableInfo>, ClientError> {
        let command = CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: name_pattern.map(str::to_string),
            table_types: vec![],
            include_schema: true,
        };
        let info = self.info(command).await?;
        let batches: Vec<RecordBatch> = self.fetch(info).await?.batches.try_collect().await?;
        let mut tables = vec![];
        for batch in batches {
            let names = string_column(&batch, "table_name")?;
            let schemas = batch
                .column_by_name("table_schema")
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::BinaryArray>().cloned())
                .ok_or_else(|| ClientError::Transfer("GetTables answer has no table_schema column".into()))?;
            for (i, name) in names.into_iter().enumerate() {
                let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(schemas.value(i))?;
                tables.push(TableInfo { name, schema });
            }
        }
        Ok(tables)
    }
}

/// The Location URI scheme that means "the connection the FlightInfo came on".
const REUSE_CONNECTION: &str = "arrow-flight-reuse-connection:";

/// A Flight client of `url` (`grpc://host:port`, `http://host:port`, or
/// `grpc+tls://host:port` / `https://host:port` checked against `tls_ca`).
async fn flight_client(url: &str, tls_ca: Option<&[u8]>) -> Result<FlightServiceClient<Channel>, ClientError> {
    let (address, tls) = match url.split_once("://") {
        Some(("grpc" | "grpc+tcp" | "http", rest)) => (format!("http://{rest}"), false),
        Some(("grpc+tls" | "https", rest)) => (format!("https://{rest}"), true),
        Some((scheme, _)) => {
            return Err(ClientError::Usage(format!(
                "unsupported scheme '{scheme}://' in {url}; use grpc://HOST:PORT or grpc+tls://HOST:PORT"
            )));
        }
        None => (format!("http://{url}"), false),
    };
    let connect_err =
        |e: tonic::transport::Error| ClientError::Connect { url: url.to_string(), reason: error_chain(&e) };
    let mut endpoint = Endpoint::from_shared(address).map_err(connect_err)?;
    if tls {
        let config = match tls_ca {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_enabled_roots(),
        };
        endpoint = endpoint.tls_config(config).map_err(connect_err)?;
    }
    let channel =
        endpoint.connect_timeout(Duration::from_secs(10)).tcp_nodelay(true).connect().await.map_err(connect_err)?;
    Ok(FlightServiceClient::new(channel).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX))
}

/// A statement's result: its schema and a stream of batches.
pub struct ResultStream {
    /// The columns.
    pub schema: Schema,
    /// The batches, in order.
    pub batches: futures::stream::BoxStream<'static, Result<RecordBatch, ClientError>>,
}

fn string_column(batch: &RecordBatch, name: &str) -> Result<Vec<String>, ClientError> {
    let column =
        batch.column_by_name(name).ok_or_else(|| ClientError::Transfer(format!("answer has no {name} column")))?;
    let strings = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)?;
    let strings = strings.as_any().downcast_ref::<arrow::array::StringArray>().expect("cast to Utf8");
    Ok(strings.iter().map(|s| s.unwrap_or_default().to_string()).collect())
}

fn header(value: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, ClientError> {
    value.parse().map_err(|_| ClientError::Usage("credentials must be ASCII".into()))
}

/// The full cause of a transport error (tonic hides the useful part inside).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
