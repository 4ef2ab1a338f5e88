//! The supervisor (`lakelink-model serve`): serves the host's clients on a
//! Unix socket, hands their calls to one worker process, and restarts the
//! worker when it dies or hangs. It runs no model code itself.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::{self, UnboundedSender};

use super::wire::{self, Answer, Call, FromServer, FromWorker, Outcome, PROTOCOL_VERSION, Status, ToServer, ToWorker};
use super::{describe_exit, uid};
use crate::model::ModelError;

/// A call nobody waits for any more must stop within this time; a worker
/// that keeps computing it is taken for hung, killed and restarted.
pub const CANCEL_GRACE: Duration = Duration::from_secs(15);
/// How long a new worker may take to connect back.
const WORKER_CONNECT: Duration = Duration::from_secs(60);
/// Bytes of recent answers kept for callers whose answer cache is on.
const RECENT_BYTES: usize = 64 * 1024 * 1024;

/// How to run a supervisor.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The socket clients connect to.
    pub socket: PathBuf,
    /// Threads of the local generator.
    pub threads: usize,
    /// Exit once no client has been connected for this long.
    pub idle_exit: Duration,
}

/// One computation the worker was asked for, and who waits for it.
struct Flight {
    key: String,
    call: Call,
    sent: bool,
    waiters: Vec<Waiter>,
    /// May its answer be kept as a recent answer?
    reuse: bool,
    /// When the last waiter left.
    abandoned: Option<Instant>,
}

struct Waiter {
    client: u64,
    id: u64,
    out: UnboundedSender<FromServer>,
}

/// Recent answers, oldest evicted first once over [`RECENT_BYTES`].
#[derive(Default)]
struct Recent {
    answers: HashMap<String, (Answer, String)>,
    order: VecDeque<(String, usize)>,
    bytes: usize,
}

impl Recent {
    fn size(answer: &Answer) -> usize {
        match answer {
            Answer::Completion { text, .. } => text.len() + 64,
            Answer::Choice { probabilities, .. } => probabilities.len() * 8 + 64,
            Answer::Embeddings { vectors, .. } => vectors.iter().map(|v| v.len() * 4 + 24).sum::<usize>() + 64,
        }
    }

    fn put(&mut self, key: String, answer: Answer, served_by: String) {
        let size = Self::size(&answer);
        if size > RECENT_BYTES / 16 || self.answers.contains_key(&key) {
            return;
        }
        while self.bytes + size > RECENT_BYTES {
            let Some((old, old_size)) = self.order.pop_front() else { break };
            self.answers.remove(&old);
            self.bytes -= old_size;
        }
        self.bytes += size;
        self.order.push_back((key.clone(), size));
        self.answers.insert(key, (answer, served_by));
    }
}

/// The live worker: where to send its calls and how to stop it.
struct Link {
    to_worker: UnboundedSender<ToWorker>,
    served_by: String,
    kill: UnboundedSender<String>,
}

#[derive(Default)]
struct State {
    flights: HashMap<u64, Flight>,
    /// Running, not abandoned flights by the hash of their call.
    by_key: HashMap<String, u64>,
    /// (client, client's id) -> flight.
    waiting: HashMap<(u64, u64), u64>,
    recent: Recent,
    worker: Option<Link>,
    next_flight: u64,
    next_client: u64,
    status: Status,
    idle_since: Option<Instant>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn call_key(call: &Call) -> String {
    let bytes = serde_json::to_vec(call).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

impl State {
    fn submit(&mut self, client: u64, id: u64, call: Call, reuse: bool, out: UnboundedSender<FromServer>) {
        let key = call_key(&call);
        if reuse && let Some((answer, served_by)) = self.recent.answers.get(&key) {
            self.status.reused += 1;
            let done = FromServer::Done { id, outcome: Ok(answer.clone()), served_by: served_by.clone(), shared: true };
            out.send(done).ok();
            return;
        }
        if let Some(&flight) = self.by_key.get(&key)
            && let Some(f) = self.flights.get_mut(&flight)
        {
            self.status.joined += 1;
            f.reuse |= reuse;
            f.waiters.push(Waiter { client, id, out });
            self.waiting.insert((client, id), flight);
            return;
        }
        self.next_flight += 1;
        let flight = self.next_flight;
        let mut f = Flight {
            key: key.clone(),
            call,
            sent: false,
            waiters: vec![Waiter { client, id, out }],
            reuse,
            abandoned: None,
        };
        if let Some(link) = &self.worker {
            f.sent = link.to_worker.send(ToWorker::Call { id: flight, call: f.call.clone() }).is_ok();
        }
        self.flights.insert(flight, f);
        self.by_key.insert(key, flight);
        self.waiting.insert((client, id), flight);
    }

    fn cancel(&mut self, client: u64, id: u64) {
        let Some(flight) = self.waiting.remove(&(client, id)) else { return };
        let Some(f) = self.flights.get_mut(&flight) else { return };
        f.waiters.retain(|w| !(w.client == client && w.id == id));
        if !f.waiters.is_empty() {
            return;
        }
        if self.by_key.get(&f.key) == Some(&flight) {
            self.by_key.remove(&f.key);
        }
        if f.sent {
            f.abandoned = Some(Instant::now());
            if let Some(link) = &self.worker {
                link.to_worker.send(ToWorker::Cancel { id: flight }).ok();
            }
        } else {
            self.flights.remove(&flight);
        }
    }

    fn finish(&mut self, flight: u64, outcome: Outcome) {
        let Some(f) = self.flights.remove(&flight) else { return };
        if self.by_key.get(&f.key) == Some(&flight) {
            self.by_key.remove(&f.key);
        }
        self.status.computed += 1;
        let served_by = self.worker.as_ref().map(|l| l.served_by.clone()).unwrap_or_default();
        if f.reuse
            && let Ok(answer) = &outcome
        {
            self.recent.put(f.key.clone(), answer.clone(), served_by.clone());
        }
        for (i, w) in f.waiters.into_iter().enumerate() {
            self.waiting.remove(&(w.client, w.id));
            let done =
                FromServer::Done { id: w.id, outcome: outcome.clone(), served_by: served_by.clone(), shared: i > 0 };
            w.out.send(done).ok();
        }
    }

    /// Fails every call the worker had (it is gone), and with `queued_too`
    /// the calls still waiting for a worker.
    fn fail_all(&mut self, error: ModelError, queued_too: bool) {
        let failed: Vec<u64> = self.flights.iter().filter(|(_, f)| f.sent || queued_too).map(|(id, _)| *id).collect();
        for flight in failed {
            if let Some(f) = self.flights.remove(&flight) {
                if self.by_key.get(&f.key) == Some(&flight) {
                    self.by_key.remove(&f.key);
                }
                for w in f.waiters {
                    self.waiting.remove(&(w.client, w.id));
                    let done = FromServer::Done {
                        id: w.id,
                        outcome: Err(error.clone()),
                        served_by: String::new(),
                        shared: false,
                    };
                    w.out.send(done).ok();
                }
            }
        }
    }

    /// Sends the new worker the calls that waited for it.
    fn attach(&mut self, link: Link) {
        for (id, f) in self.flights.iter_mut().filter(|(_, f)| !f.sent) {
            f.sent = link.to_worker.send(ToWorker::Call { id: *id, call: f.call.clone() }).is_ok();
        }
        self.worker = Some(link);
    }
}

/// Serves until no client has been connected for `idle_exit`.
pub async fn serve(options: ServeOptions) -> std::io::Result<()> {
    let listener = bind(&options.socket)?;
    let worker_socket = options.socket.with_extension("worker");
    let _ = std::fs::remove_file(&worker_socket);
    let worker_listener = UnixListener::bind(&worker_socket)?;
    tracing::info!("model process serving {} (pid {})", options.socket.display(), std::process::id());

    let state: Shared = Arc::default();
    {
        let mut s = lock(&state);
        s.status.supervisor_pid = std::process::id();
        s.idle_since = Some(Instant::now());
    }
    // Bare on purpose: the worker manager lives as long as the supervisor.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(workers(state.clone(), options.threads, worker_listener, worker_socket.clone()));
    // Bare on purpose: the watchdog lives as long as the supervisor.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(watchdog(state.clone()));

    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Bare on purpose: a client's connection is served until it closes.
                    #[allow(clippy::disallowed_methods)]
                    tokio::spawn(client(state.clone(), stream));
                }
                Err(e) => break Err(e),
            },
            _ = tick.tick() => {
                let s = lock(&state);
                if s.idle_since.is_some_and(|t| t.elapsed() >= options.idle_exit) {
                    tracing::info!("no client for {:?}; the model process exits", options.idle_exit);
                    if let Some(link) = &s.worker {
                        link.kill.send("the model process is idle".into()).ok();
                    }
                    break Ok(());
                }
            }
        }
    };
    let _ = std::fs::remove_file(&options.socket);
    let _ = std::fs::remove_file(&worker_socket);
    // Let the worker see its kill before the process ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    result
}

/// Binds the clients' socket (mode 0600); refuses if a live supervisor has it.
fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a model process already serves {}", socket.display()),
            ));
        }
        std::fs::remove_file(socket)?;
    }
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Whether the peer runs as this user.
fn same_user(stream: &UnixStream) -> bool {
    stream.peer_cred().is_ok_and(|c| c.uid() == uid())
}

async fn client(state: Shared, stream: UnixStream) {
    if !same_user(&stream) {
        tracing::warn!("refused a model-process client of another user ({:?})", stream.peer_cred().ok());
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    match wire::read_frame::<_, ToServer>(&mut reader).await {
        Ok(Some(ToServer::Hello { version, client })) if version == PROTOCOL_VERSION => {
            tracing::info!("client {client} connected");
        }
        Ok(Some(ToServer::Hello { version, .. })) => {
            let reason = format!("model process protocol {PROTOCOL_VERSION}, client speaks {version}");
            let _ = wire::write_frame(&mut writer, &FromServer::Refused { reason }).await;
            return;
        }
        _ => return,
    }
    let id = {
        let mut s = lock(&state);
        s.next_client += 1;
        s.status.clients += 1;
        s.idle_since = None;
        s.next_client
    };
    let (out, mut outgoing) = mpsc::unbounded_channel::<FromServer>();
    // Bare on purpose: the writer ends when the client's channel closes.
    #[allow(clippy::disallowed_methods)]
    let sender = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if wire::write_frame(&mut writer, &message).await.is_err() {
                break;
            }
        }
    });
    loop {
        match wire::read_frame::<_, ToServer>(&mut reader).await {
            Ok(Some(ToServer::Call { id: call_id, call, reuse })) => {
                lock(&state).submit(id, call_id, call, reuse, out.clone())
            }
            Ok(Some(ToServer::Cancel { id: call_id })) => lock(&state).cancel(id, call_id),
            Ok(Some(ToServer::Status { id: status_id })) => {
                let status = lock(&state).status.clone();
                out.send(FromServer::Status { id: status_id, status }).ok();
            }
            Ok(Some(ToServer::Hello { .. })) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("client {id}: {e}");
                break;
            }
        }
    }
    {
        let mut s = lock(&state);
        let mine: Vec<u64> = s.waiting.keys().filter(|(c, _)| *c == id).map(|(_, i)| *i).collect();
        for call_id in mine {
            s.cancel(id, call_id);
        }
        s.status.clients -= 1;
        if s.status.clients == 0 {
            s.idle_since = Some(Instant::now());
        }
    }
    drop(out);
    let _ = sender.await;
}

/// Kills a worker that keeps computing calls nobody waits for.
async fn watchdog(state: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let s = lock(&state);
        let hung = s.flights.values().any(|f| f.abandoned.is_some_and(|t| t.elapsed() > CANCEL_GRACE));
        if hung && let Some(link) = &s.worker {
            link.kill.send(format!("a cancelled call did not stop within {} s", CANCEL_GRACE.as_secs())).ok();
        }
    }
}

/// Starts workers one after another, for as long as the supervisor runs.
async fn workers(state: Shared, threads: usize, listener: UnixListener, socket: PathBuf) {
    let mut quick_failures = 0u32;
    loop {
        let started = Instant::now();
        let ended = run_worker(&state, threads, &listener, &socket).await;
        quick_failures = if started.elapsed() < Duration::from_secs(10) { quick_failures + 1 } else { 0 };
        let (message, last_exit) = match &ended {
            Ended::Exited(how) => (format!("the local model process exited ({how}); restarted"), how.clone()),
            Ended::Killed(why) => {
                (format!("the local model process was killed ({why}); restarted"), format!("killed: {why}"))
            }
            Ended::NotStarted(why) => {
                (format!("the local model process could not start: {why}"), format!("not started: {why}"))
            }
        };
        tracing::warn!("{message}");
        // A binary replaced on disk (an upgrade) cannot start workers: this
        // supervisor leaves, and the next client starts the new one.
        let replaced = std::env::current_exe().map(|exe| !exe.exists()).unwrap_or(false);
        {
            let mut s = lock(&state);
            s.worker = None;
            // Calls still queued for a worker fail too when workers cannot
            // start or keep dying at once; otherwise the next worker takes them.
            let queued_too = matches!(ended, Ended::NotStarted(_)) || quick_failures >= 2;
            s.fail_all(ModelError::Process(message), queued_too);
            s.status.restarts += 1;
            s.status.worker_pid = 0;
            s.status.cpu_kernels.clear();
            s.status.last_exit = last_exit;
            if replaced && matches!(ended, Ended::NotStarted(_)) {
                s.fail_all(ModelError::Process("the model process was upgraded; retry".into()), true);
                tracing::warn!("this program was replaced on disk; the model process exits");
                std::process::exit(0);
            }
        }
        if quick_failures >= 3 {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}

enum Ended {
    Exited(String),
    Killed(String),
    NotStarted(String),
}

async fn run_worker(state: &Shared, threads: usize, listener: &UnixListener, socket: &Path) -> Ended {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Ended::NotStarted(format!("cannot find this program: {e}")),
    };
    let mut child = match tokio::process::Command::new(exe)
        .arg("worker")
        .arg("--connect")
        .arg(socket)
        .arg("--threads")
        .arg(threads.to_string())
        .env(super::worker::TOKEN_ENV, &token)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Ended::NotStarted(e.to_string()),
    };
    let pid = child.id().unwrap_or(0);
    let stream = tokio::select! {
        s = accept_worker(listener, pid, &token) => s,
        status = child.wait() => {
            return Ended::Exited(status.map(describe_exit).unwrap_or_else(|e| e.to_string()));
        }
        _ = tokio::time::sleep(WORKER_CONNECT) => None,
    };
    let Some((stream, kernels)) = stream else {
        let _ = child.kill().await;
        return Ended::NotStarted(format!("the worker did not connect within {} s", WORKER_CONNECT.as_secs()));
    };
    let (mut reader, mut writer) = stream.into_split();
    let (to_worker, mut outgoing) = mpsc::unbounded_channel::<ToWorker>();
    let (kill, mut kill_requests) = mpsc::unbounded_channel::<String>();
    // Bare on purpose: the writer ends when the worker's channel closes.
    #[allow(clippy::disallowed_methods)]
    let sender = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if wire::write_frame(&mut writer, &message).await.is_err() {
                break;
            }
        }
    });
    let served_by = format!("{}:{pid}", crate::trail::host_name());
    {
        let mut s = lock(state);
        s.status.worker_pid = pid;
        s.status.cpu_kernels = kernels;
        s.attach(Link { to_worker, served_by, kill });
    }
    tracing::info!("model worker {pid} started");
    let reading = async {
        loop {
            match wire::read_frame::<_, FromWorker>(&mut reader).await {
                Ok(Some(FromWorker::Done { id, outcome })) => lock(state).finish(id, outcome),
                Ok(Some(FromWorker::Hello { .. })) => {}
                Ok(None) | Err(_) => break,
            }
        }
    };
    let ended = tokio::select! {
        _ = reading => None,
        status = child.wait() => Some(Ended::Exited(status.map(describe_exit).unwrap_or_else(|e| e.to_string()))),
        why = kill_requests.recv() => {
            let why = why.unwrap_or_default();
            let _ = child.start_kill();
            let _ = child.wait().await;
            Some(Ended::Killed(why))
        }
    };
    sender.abort();
    match ended {
        Some(e) => e,
        None => {
            // The connection closed first: the exit status follows.
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            match status {
                Ok(Ok(status)) => Ended::Exited(describe_exit(status)),
                _ => {
                    let _ = child.kill().await;
                    Ended::Killed("it closed its connection but did not exit".into())
                }
            }
        }
    }
}

/// Accepts the worker's connection: same user, the pid just started, the token.
/// Returns the connection and the kernels the worker loaded.
async fn accept_worker(listener: &UnixListener, pid: u32, token: &str) -> Option<(UnixStream, String)> {
    loop {
        let (mut stream, _) = listener.accept().await.ok()?;
        let peer_ok = stream.peer_cred().is_ok_and(|c| c.uid() == uid() && c.pid() == Some(pid as i32));
        if !peer_ok {
            tracing::warn!("refused a worker connection from {:?}", stream.peer_cred().ok());
            continue;
        }
        match wire::read_frame::<_, FromWorker>(&mut stream).await {
            Ok(Some(FromWorker::Hello { token: t, kernels, .. })) if t == token => return Some((stream, kernels)),
            _ => tracing::warn!("refused a worker connection without the right token"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Prompt;

    fn complete(text: &str) -> Call {
        Call::Complete {
            model: "/m.gguf".into(),
            prompt: Prompt { system: "s".into(), user: text.into(), max_tokens: 4, sample: None },
        }
    }

    fn answer(text: &str) -> Outcome {
        Ok(Answer::Completion {
            text: text.into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            latency_ms: 1.0,
            cached_tokens: 0,
            prefill_ms: 0.5,
            decode_ms: 0.5,
        })
    }

    fn link() -> (Link, mpsc::UnboundedReceiver<ToWorker>, mpsc::UnboundedReceiver<String>) {
        let (to_worker, calls) = mpsc::unbounded_channel();
        let (kill, kills) = mpsc::unbounded_channel();
        (Link { to_worker, served_by: "h:9".into(), kill }, calls, kills)
    }

    #[test]
    fn identical_calls_in_flight_are_computed_once() {
        let mut s = State::default();
        let (l, mut calls, _k) = link();
        s.attach(l);
        let (a, mut a_rx) = mpsc::unbounded_channel();
        let (b, mut b_rx) = mpsc::unbounded_channel();
        s.submit(1, 10, complete("x"), false, a);
        s.submit(2, 20, complete("x"), false, b.clone());
        s.submit(2, 21, complete("y"), false, b);
        let first = calls.try_recv().unwrap();
        let ToWorker::Call { id, .. } = first else { panic!() };
        assert!(matches!(calls.try_recv().unwrap(), ToWorker::Call { .. }));
        assert!(calls.try_recv().is_err(), "x was sent twice");
        s.finish(id, answer("X"));
        let FromServer::Done { id: 10, shared: false, served_by, .. } = a_rx.try_recv().unwrap() else { panic!() };
        assert_eq!(served_by, "h:9");
        assert!(matches!(b_rx.try_recv().unwrap(), FromServer::Done { id: 20, shared: true, .. }));
        assert_eq!((s.status.computed, s.status.joined), (1, 1));
    }

    #[test]
    fn recent_answers_serve_only_callers_who_allow_reuse() {
        let mut s = State::default();
        let (l, mut calls, _k) = link();
        s.attach(l);
        let (a, mut a_rx) = mpsc::unbounded_channel();
        s.submit(1, 1, complete("x"), true, a.clone());
        let ToWorker::Call { id, .. } = calls.try_recv().unwrap() else { panic!() };
        s.finish(id, answer("X"));
        a_rx.try_recv().unwrap();
        s.submit(1, 2, complete("x"), true, a.clone());
        assert!(matches!(a_rx.try_recv().unwrap(), FromServer::Done { id: 2, shared: true, .. }));
        assert!(calls.try_recv().is_err());
        s.submit(1, 3, complete("x"), false, a);
        assert!(calls.try_recv().is_ok(), "a caller without reuse is computed afresh");
    }

    #[test]
    fn the_last_waiter_leaving_cancels_and_a_dead_worker_fails_its_calls() {
        let mut s = State::default();
        let (l, mut calls, _k) = link();
        s.attach(l);
        let (a, _a_rx) = mpsc::unbounded_channel();
        let (b, mut b_rx) = mpsc::unbounded_channel();
        s.submit(1, 1, complete("x"), false, a);
        let ToWorker::Call { id, .. } = calls.try_recv().unwrap() else { panic!() };
        s.cancel(1, 1);
        assert!(matches!(calls.try_recv().unwrap(), ToWorker::Cancel { id: c } if c == id));
        assert!(s.flights[&id].abandoned.is_some());
        // A new identical call does not join the abandoned one.
        s.submit(2, 5, complete("x"), false, b);
        assert!(matches!(calls.try_recv().unwrap(), ToWorker::Call { .. }));
        s.fail_all(ModelError::Process("the local model process exited (signal 11); restarted".into()), false);
        let FromServer::Done { id: 5, outcome: Err(e), .. } = b_rx.try_recv().unwrap() else { panic!() };
        assert!(e.to_string().contains("signal 11"));
        assert!(s.flights.is_empty() && s.waiting.is_empty() && s.by_key.is_empty());
    }

    #[test]
    fn calls_wait_for_a_worker_to_attach() {
        let mut s = State::default();
        let (a, _a_rx) = mpsc::unbounded_channel();
        s.submit(1, 1, complete("x"), false, a);
        assert!(!s.flights.values().next().unwrap().sent);
        let (l, mut calls, _k) = link();
        s.attach(l);
        assert!(matches!(calls.try_recv().unwrap(), ToWorker::Call { .. }));
    }
}
