use std::path::PathBuf;

/// Everything the `lakelink` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line or a shell command is wrong.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// Where we tried to connect.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The server refused or failed a request; its message says why.
    #[error("{}", .0.message())]
    Server(#[from] tonic::Status),
    /// The result stream broke.
    #[error("result transfer failed: {0}")]
    Transfer(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// An object store refused or could not be reached.
    #[error("{0}")]
    Store(String),
    /// The embedded cluster failed to start.
    #[error("embedded mode: {0}")]
    Embedded(String),
    /// Output could not be formatted.
    #[error("output: {0}")]
    Output(#[from] arrow::error::ArrowError),
}

impl From<arrow_flight::error::FlightError> for ClientError {
    fn from(e: arrow_flight::error::FlightError) -> Self {
        match e {
            arrow_flight::error::FlightError::Tonic(status) => ClientError::Server(*status),
            other => ClientError::Transfer(other.to_string()),
        }
    }
}
