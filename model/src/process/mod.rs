//! The host's model process: the local models (llama.cpp generator, candle
//! embedder) run outside the processes that use them.
//!
//! ```text
//!  executor ─┐                      ┌──────────── lakelink-model serve ────────────┐
//!  executor ─┼─ unix socket ──────▶ │ supervisor: dedupe, recent answers, restarts │
//!  scheduler ┘  (0600, same user)   │      │ unix socket                           │
//!                                   │      ▼                                       │
//!                                   │ worker (lakelink-model worker): the models   │
//!                                   └──────────────────────────────────────────────┘
//! ```
//!
//! * One model process per host (and per user, thread count and binary):
//!   the first process that needs a local model starts it
//!   ([`ModelProcess`](crate::process::client::ModelProcess)); every other process of the host connects to
//!   the same socket. A host holds one loaded copy of each model.
//! * The supervisor runs no model code. It hands calls to its worker, asks
//!   the worker once for identical calls in flight from several clients,
//!   keeps recent answers for callers whose answer cache is on, and
//!   restarts the worker when it dies: the calls in flight fail at once with
//!   `the local model process exited (signal 11); restarted` and the next
//!   call is served by the new worker.
//! * A native fault, a hang (a call nobody waits for that does not stop
//!   within [`CANCEL_GRACE`](crate::process::supervisor::CANCEL_GRACE)) or an out-of-memory kill ends only
//!   the worker; the worker asks the kernel to pick it first when memory
//!   runs out.
//! * The supervisor exits once no client has been connected for its idle
//!   time; a client that finds no supervisor starts one.
//! * Only processes of the same user reach the socket: it lives in a folder
//!   of mode 0700 and the supervisor checks each peer's user id.

pub mod client;
pub mod supervisor;
pub mod wire;
pub mod worker;

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::model::ModelError;

/// The environment variable naming the folder of the model process's
/// socket and log (default: `$XDG_RUNTIME_DIR/lakelink`, else
/// `/tmp/lakelink-<uid>`).
pub const RUNTIME_DIR_ENV: &str = "LAKELINK_RUNTIME_DIR";
/// The environment variable naming the `lakelink-model` binary (default:
/// beside the running binary).
pub const MODEL_BIN_ENV: &str = "LAKELINK_MODEL_BIN";
/// The binary's file name.
pub const MODEL_BIN: &str = "lakelink-model";

/// This process's user id.
pub fn uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// The folder holding the model process's socket and log, made private
/// (mode 0700) to this user; refused if it exists and is not.
pub fn runtime_dir() -> Result<PathBuf, ModelError> {
    let dir = match std::env::var_os(RUNTIME_DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) => PathBuf::from(d).join("lakelink"),
            None => std::env::temp_dir().join(format!("lakelink-{}", uid())),
        },
    };
    private_dir(&dir)?;
    Ok(dir)
}

/// Makes `dir` (mode 0700) or checks that it is a folder only this user can enter.
pub fn private_dir(dir: &Path) -> Result<(), ModelError> {
    let setup = |what: String| ModelError::Setup(format!("model process folder {}: {what}", dir.display()));
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| setup(e.to_string()))?;
        // `recursive` applies the mode to the last component only when it
        // creates it; a racing creator is checked below like any other.
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| setup(e.to_string()))?;
    if !meta.is_dir() {
        return Err(setup("not a folder".into()));
    }
    if meta.uid() != uid() {
        return Err(setup(format!("owned by user {}, not by this user ({})", meta.uid(), uid())));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(setup(format!(
            "mode {:o} lets other users in; it must be 0700 (chmod 700 it or set {RUNTIME_DIR_ENV})",
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

/// The `lakelink-model` binary: `$LAKELINK_MODEL_BIN`, else beside the
/// running binary (or one folder up, for test binaries in `deps/`), else on
/// `PATH`.
pub fn model_binary() -> Result<PathBuf, ModelError> {
    if let Some(p) = std::env::var_os(MODEL_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join(MODEL_BIN));
        if let Some(up) = dir.parent() {
            candidates.push(up.join(MODEL_BIN));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(MODEL_BIN)));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        ModelError::Setup(format!(
            "the {MODEL_BIN} binary was not found beside this program or on PATH; build it \
             (cargo build --workspace) or name it with {MODEL_BIN_ENV}"
        ))
    })
}

/// The socket of the model process for `threads` threads started from
/// `binary`: one per host, user, thread count and build of the binary (a
/// rebuilt binary gets a new process; the old one exits when idle).
pub fn socket_path(dir: &Path, binary: &Path, threads: usize) -> PathBuf {
    let mut h = Sha256::new();
    h.update(binary.as_os_str().as_encoded_bytes());
    if let Ok(meta) = std::fs::metadata(binary) {
        h.update(meta.len().to_le_bytes());
        h.update(meta.mtime().to_le_bytes());
        h.update(meta.mtime_nsec().to_le_bytes());
    }
    h.update(wire::PROTOCOL_VERSION.to_le_bytes());
    let id = hex::encode(&h.finalize()[..6]);
    dir.join(format!("model-{threads}t-{id}.sock"))
}

/// `host:pid` of this process.
pub fn this_process() -> String {
    crate::trail::process_name().to_string()
}

/// How a child process ended, in words: `signal 11`, `exit code 3`.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "unknown status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_folder_must_be_private() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("rt");
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = private_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("lets other users in"), "{err}");
        let file = base.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(private_dir(&file).unwrap_err().to_string().contains("not a folder"));
    }

    #[test]
    fn socket_names_follow_threads_and_binary() {
        let dir = Path::new("/run/x");
        let bin = tempfile::NamedTempFile::new().unwrap();
        let a = socket_path(dir, bin.path(), 2);
        assert_eq!(a, socket_path(dir, bin.path(), 2));
        assert_ne!(a, socket_path(dir, bin.path(), 4));
        std::fs::write(bin.path(), b"rebuilt").unwrap();
        assert_ne!(a, socket_path(dir, bin.path(), 2));
        assert!(a.to_string_lossy().starts_with("/run/x/model-2t-"));
    }
}
