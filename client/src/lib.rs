//! `lakelink`: the SQL shell (an Arrow Flight SQL client), embedded mode and
//! the demo-lake generator.
#![warn(missing_docs)]

/// Flight SQL connections.
pub mod connection;
/// `lakelink datagen`: demo lakes.
pub mod datagen;
/// Embedded mode: a cluster inside the shell's process.
pub mod embedded;
/// The client's error type.
pub mod error;
/// Result printing.
pub mod output;
/// The shell.
pub mod shell;

pub use connection::{Connection, Credentials};
pub use error::ClientError;
pub use output::Format;
