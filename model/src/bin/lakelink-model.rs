//! `lakelink-model`: the host's model process. Executors, the scheduler and
//! the shell start it themselves when they first need a local model; run it
//! by hand only to look at it (`lakelink-model status`).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lakelink_model::process::{client::ModelProcess, supervisor, worker};

/// The host's model process: one loaded copy of each local model, shared by
/// every LakeLink process of this host and user.
#[derive(Debug, Parser)]
#[command(name = "lakelink-model", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the host's clients on a Unix socket (the supervisor).
    Serve {
        /// The socket to listen on.
        #[arg(long)]
        socket: PathBuf,
        /// CPU threads of the local generative model.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Exit after this many seconds without any client.
        #[arg(long, default_value_t = 120)]
        idle_exit: u64,
    },
    /// Run the models for a supervisor (started by `serve`).
    #[command(hide = true)]
    Worker {
        /// The supervisor's worker socket.
        #[arg(long)]
        connect: PathBuf,
        /// CPU threads of the local generative model.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Print what the model process for THREADS threads has done (JSON).
    Status {
        /// The thread count whose model process to ask.
        #[arg(long, default_value_t = lakelink_model::config::process_defaults().threads)]
        threads: usize,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if let Some(missing) = lakelink_model::cpu::missing_features() {
        eprintln!("lakelink-model: {missing}");
        return std::process::ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .init();
    let result = match Args::parse().command {
        Command::Serve { socket, threads, idle_exit } => {
            let options = supervisor::ServeOptions { socket, threads, idle_exit: Duration::from_secs(idle_exit) };
            supervisor::serve(options).await.map_err(|e| e.to_string())
        }
        Command::Worker { connect, threads } => worker::run(&connect, threads).await.map_err(|e| e.to_string()),
        Command::Status { threads } => match ModelProcess::for_threads(threads) {
            Ok(process) => match process.status().await {
                Ok(status) => {
                    println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lakelink-model: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
