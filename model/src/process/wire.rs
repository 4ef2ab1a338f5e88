//! What travels over the model process's sockets: length-prefixed JSON
//! frames (a little-endian `u32` byte count, then the message).
//!
//! Clients (executors, the scheduler, the shell) talk to the supervisor with
//! [`ToServer`] / [`FromServer`]; the supervisor talks to its worker with
//! [`ToWorker`] / [`FromWorker`].

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::model::{ModelError, Prompt};

/// Largest frame either side accepts (a batch of embeddings is well below).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Bumped whenever a message changes shape; the socket's name carries the
/// binary's identity, so peers of one host always speak the same version.
pub const PROTOCOL_VERSION: u32 = 1;

/// One model computation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Call {
    /// A chat completion by the GGUF model at `model` (an absolute path).
    Complete {
        /// The GGUF file.
        model: String,
        /// The prompt.
        prompt: Prompt,
    },
    /// The probability of each allowed answer (each given by its spellings)
    /// as the reply of the GGUF model at `model` to `prompt`.
    Choose {
        /// The GGUF file.
        model: String,
        /// The prompt.
        prompt: Prompt,
        /// The allowed answers, each with its spellings.
        answers: Vec<Vec<String>>,
    },
    /// Sentence embeddings by the embedder in folder `model`.
    Embed {
        /// The embedder's folder.
        model: String,
        /// The texts, in order.
        texts: Vec<String>,
    },
}

/// A computed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// A completion.
    Completion {
        /// The text.
        text: String,
        /// Prompt tokens.
        prompt_tokens: u64,
        /// Answer tokens.
        completion_tokens: u64,
        /// Time the worker spent, in milliseconds.
        latency_ms: f64,
        /// Prompt tokens served from the worker's KV cache.
        #[serde(default)]
        cached_tokens: u64,
        /// Time spent on the prompt tokens not cached, in milliseconds.
        #[serde(default)]
        prefill_ms: f64,
        /// Time spent generating the answer, in milliseconds.
        #[serde(default)]
        decode_ms: f64,
    },
    /// Answer probabilities, one per allowed answer.
    Choice {
        /// Normalized over the answers.
        probabilities: Vec<f64>,
        /// Their probability together before normalizing.
        mass: f64,
        /// Prompt tokens.
        prompt_tokens: u64,
        /// Time the worker spent, in milliseconds.
        latency_ms: f64,
    },
    /// Embeddings, one per text.
    Embeddings {
        /// Unit-length vectors.
        vectors: Vec<Vec<f32>>,
        /// Tokens read.
        tokens: u64,
        /// Time the worker spent, in milliseconds.
        latency_ms: f64,
    },
}

/// The outcome of a call.
pub type Outcome = Result<Answer, ModelError>;

/// A client's message to the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToServer {
    /// The first message of a connection.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// The client, as `host:pid` (for the supervisor's log).
        client: String,
    },
    /// Compute `call`. With `reuse`, an answer computed moments before for an
    /// identical call may be returned (the caller's answer cache is on).
    Call {
        /// Chosen by the client, unique on its connection.
        id: u64,
        /// What to compute.
        call: Call,
        /// Whether a recent identical answer may be reused.
        reuse: bool,
    },
    /// The caller no longer waits for call `id`.
    Cancel {
        /// The call.
        id: u64,
    },
    /// Report [`Status`].
    Status {
        /// Chosen by the client.
        id: u64,
    },
}

/// The supervisor's message to a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromServer {
    /// Call `id` ended.
    Done {
        /// The call.
        id: u64,
        /// Its answer or why there is none.
        outcome: Outcome,
        /// The worker that computed it (`host:pid`).
        served_by: String,
        /// Whether it was computed for another identical call.
        shared: bool,
    },
    /// The answer to [`ToServer::Status`].
    Status {
        /// The request.
        id: u64,
        /// The counters.
        status: Status,
    },
    /// The connection is refused (another protocol version).
    Refused {
        /// Why.
        reason: String,
    },
}

/// What the model process has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The supervisor's process id.
    pub supervisor_pid: u32,
    /// The current worker's process id (0 while none runs).
    pub worker_pid: u32,
    /// Calls the worker computed.
    pub computed: u64,
    /// Calls answered by a computation made for an identical call in flight.
    pub joined: u64,
    /// Calls answered from recent answers.
    pub reused: u64,
    /// Workers started after the first.
    pub restarts: u64,
    /// How the last worker ended, such as `signal 11`; empty if none ended.
    pub last_exit: String,
    /// Clients connected now.
    pub clients: u64,
    /// The llama.cpp CPU kernels the current worker loaded (`zen4`,
    /// `haswell`, ...), or why it loaded none; empty while none runs.
    #[serde(default)]
    pub cpu_kernels: String,
}

/// The supervisor's message to its worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Compute `call`.
    Call {
        /// Chosen by the supervisor.
        id: u64,
        /// What to compute.
        call: Call,
    },
    /// Stop computing call `id` (nobody waits for it).
    Cancel {
        /// The call.
        id: u64,
    },
}

/// The worker's message to its supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// The first message: who is connecting.
    Hello {
        /// The worker's process id.
        pid: u32,
        /// The secret the supervisor gave the worker at start.
        token: String,
        /// The llama.cpp CPU kernels it loaded (`zen4`, `haswell`, ...), or
        /// why it loaded none.
        #[serde(default)]
        kernels: String,
    },
    /// Call `id` ended.
    Done {
        /// The call.
        id: u64,
        /// Its answer or why there is none.
        outcome: Outcome,
    },
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, message: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::other(format!("a model message of {} bytes exceeds {MAX_FRAME}", body.len())));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(r: &mut R) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a model message of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed model message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_reject_oversized_lengths() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let call = ToServer::Call {
            id: 7,
            call: Call::Embed { model: "/m".into(), texts: vec!["ünïcode".into()] },
            reuse: true,
        };
        write_frame(&mut a, &call).await.unwrap();
        let got: ToServer = read_frame(&mut b).await.unwrap().unwrap();
        assert!(matches!(got, ToServer::Call { id: 7, reuse: true, .. }));

        a.write_all(&(u32::MAX).to_le_bytes()).await.unwrap();
        let err = read_frame::<_, ToServer>(&mut b).await.unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");

        drop(a);
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&3u32.to_le_bytes()).await.unwrap();
        a.write_all(b"{x}").await.unwrap();
        drop(a);
        let err = read_frame::<_, ToServer>(&mut b).await.unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
        assert!(read_frame::<_, ToServer>(&mut b).await.unwrap().is_none());
    }
}
