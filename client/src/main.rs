//! `lakelink`: ask a Parquet lake questions in SQL.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lakelink::shell::Shell;
use lakelink::{ClientError, Connection, Credentials, Format, datagen, embedded};

/// The LakeLink SQL shell.
///
/// `lakelink --lake DIR` runs a cluster inside this process over a lake folder
/// (embedded mode); `lakelink --host grpc://HOST:PORT` connects to a running
/// scheduler over Arrow Flight SQL.
#[derive(Debug, Parser)]
#[command(name = "lakelink", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// A scheduler's Flight SQL address, e.g. grpc://127.0.0.1:50050, or
    /// grpc+tls://HOST:PORT for a scheduler started with --tls-cert.
    #[arg(long, conflicts_with = "lake")]
    host: Option<String>,
    /// The CA certificate (PEM) to check a grpc+tls:// scheduler and its
    /// executors against; without it, the system's trusted roots.
    #[arg(long, requires = "host")]
    tls_ca: Option<std::path::PathBuf>,
    /// A lake to query in embedded mode: a folder, or an object-store URL
    /// (s3://bucket/prefix, ...; credentials from the environment).
    #[arg(long)]
    lake: Option<String>,
    /// Executors to start in embedded mode.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Run this statement and exit.
    #[arg(short = 'c', long = "command", conflicts_with = "file")]
    command_sql: Option<String>,
    /// Run the statements of this file and exit.
    #[arg(short = 'f', long)]
    file: Option<std::path::PathBuf>,
    /// How to print results.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Bearer token for a server with --auth-token.
    #[arg(long, env = "LAKELINK_TOKEN", hide_env_values = true, conflicts_with = "user")]
    token: Option<String>,
    /// User name for a server with password logins.
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// Password for --user.
    #[arg(long, env = "LAKELINK_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a demo lake.
    Datagen {
        #[command(subcommand)]
        kind: Datagen,
    },
}

#[derive(Debug, Subcommand)]
enum Datagen {
    /// The eight TPC-H tables as Parquet, one folder per table.
    Tpch {
        /// Scale factor: 1 is 6 million lineitem rows.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Folder to write the lake into, or an object-store URL
        /// (s3://bucket/prefix, ...; credentials from the environment).
        #[arg(long)]
        out: String,
    },
    /// An online shop: customers, products, orders, order items and
    /// customer reviews in plain sentences (with their known sentiment and
    /// topic), for the llm_* functions and a second NL vocabulary.
    Shop {
        /// Scale factor: 1 is 200,000 orders and 50,000 reviews.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Folder to write the lake into, or an object-store URL.
        #[arg(long)]
        out: String,
    },
}

fn main() -> ExitCode {
    if let Some(missing) = lakelink_model::cpu::missing_features() {
        eprintln!("lakelink: {missing}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()
        .expect("tokio runtime");
    match run(cli, &runtime) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, rt: &tokio::runtime::Runtime) -> Result<(), ClientError> {
    if let Some(Command::Datagen { kind }) = &cli.command {
        let started = std::time::Instant::now();
        let (name, scale, out) = match kind {
            Datagen::Tpch { scale, out } => ("TPC-H", scale, out),
            Datagen::Shop { scale, out } => ("shop", scale, out),
        };
        let generate = |folder: &std::path::Path| match kind {
            Datagen::Tpch { .. } => datagen::tpch(*scale, folder),
            Datagen::Shop { .. } => datagen::shop::shop(*scale, folder),
        };
        let summary = match datagen::store_url(out) {
            None => generate(std::path::Path::new(out.strip_prefix("file://").unwrap_or(out)))?,
            // On a store: written to a temporary folder, then uploaded.
            Some(url) => {
                let temp = tempfile::Builder::new()
                    .prefix("lakelink-datagen-")
                    .tempdir()
                    .map_err(|e| ClientError::Io { path: std::env::temp_dir(), source: e })?;
                let summary = generate(temp.path())?;
                rt.block_on(datagen::upload(temp.path(), url))?;
                summary
            }
        };
        for (table, files, rows) in summary {
            eprintln!("{table:<12} {rows:>12} rows in {files} file(s)");
        }
        eprintln!("{name} SF {scale} written to {out} in {:.1} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    let (url, _cluster) = match (&cli.host, &cli.lake) {
        (Some(host), None) => (host.clone(), None),
        (None, Some(lake)) => {
            let cluster = rt.block_on(embedded::start(lake, cli.executors))?;
            (format!("grpc://{}", cluster.local_addr()), Some(cluster))
        }
        _ => {
            return Err(ClientError::Usage(
                "give --host grpc://HOST:PORT to connect to a cluster, or --lake DIR to query a lake folder in embedded mode".into(),
            ));
        }
    };
    let credentials = match (cli.token, cli.user, cli.password) {
        (Some(token), _, _) => Credentials::Token(token),
        (None, Some(user), Some(password)) => Credentials::Password { user, password },
        _ => Credentials::None,
    };
    let connection = rt.block_on(Connection::connect(&url, &credentials, cli.tls_ca.as_deref()))?;
    let interactive = cli.command_sql.is_none() && cli.file.is_none();
    let mut shell = Shell::new(connection, cli.format, interactive);
    if let Some(sql) = cli.command_sql {
        return rt.block_on(shell.run_script(&sql));
    }
    if let Some(file) = cli.file {
        let script = std::fs::read_to_string(&file).map_err(|e| ClientError::Io { path: file.clone(), source: e })?;
        return rt.block_on(shell.run_script(&script));
    }
    eprintln!("LakeLink shell connected to {url}. End statements with ';'. \\d lists tables, \\? helps, \\q quits.");
    shell.repl(rt)
}
