//! The bounds every statement runs within, each failing the statement alone
//! with an error that names its flag: how long it may run
//! (`--query-timeout`), how large a result the scheduler passes on
//! (`--max-result-size`) and how much memory a statement the scheduler runs
//! itself may hold (`--query-memory`; executors bound their tasks with
//! `lakelink-executor --memory-pool`) and how many statements one client
//! address may run at once (`--max-client-statements`, [`ClientSlots`](crate::limits::ClientSlots)).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::FlightData;
use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use lakelink_protocol::limits::show_bytes;
use tonic::Status;

/// The statements each client address runs now, held to
/// [`Limits::max_client_statements`]: one client cannot take every planning
/// task and result stream of the scheduler from the others.
#[derive(Debug, Clone, Default)]
pub struct ClientSlots {
    max: usize,
    running: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One running statement of a client; its end frees the slot.
#[derive(Debug)]
pub struct ClientSlot {
    slots: ClientSlots,
    ip: IpAddr,
}

impl ClientSlots {
    /// At most `max` statements per address (0: no limit).
    pub fn new(max: usize) -> Self {
        Self { max, running: Arc::default() }
    }

    /// A slot for a statement of the client at `peer`; `None` when nothing
    /// is counted (no limit, or an unknown address).
    pub fn take(&self, peer: Option<IpAddr>) -> Result<Option<ClientSlot>, Status> {
        let Some(ip) = peer.filter(|_| self.max > 0) else { return Ok(None) };
        let mut running = self.running.lock().expect("client slots lock");
        let n = running.entry(ip).or_default();
        if *n >= self.max {
            return Err(Status::resource_exhausted(format!(
                "this client address ({ip}) already runs {} statements, the scheduler's limit per client address \
                 (--max-client-statements); wait for one to end",
                self.max
            )));
        }
        *n += 1;
        Ok(Some(ClientSlot { slots: self.clone(), ip }))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut running = self.slots.running.lock().expect("client slots lock");
        if let Some(n) = running.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.ip);
            }
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest a statement's execution may take; `None`: no limit.
    pub query_timeout: Option<Duration>,
    /// The most bytes of one result the scheduler sends; 0: no limit.
    pub max_result_bytes: u64,
    /// The memory a statement run in the scheduler may hold (spilling
    /// where it can); 0: no limit.
    pub query_memory: u64,
    /// The most statements one client address may have running at once
    /// (being planned, or their results being read through the scheduler);
    /// 0: no limit.
    pub max_client_statements: usize,
}

/// The default `--query-timeout`: an hour.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(3600);
/// The default `--max-client-statements`.
pub const DEFAULT_MAX_CLIENT_STATEMENTS: usize = 64;
/// The default `--max-result-size`.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 16 << 30;

impl Default for Limits {
    fn default() -> Self {
        Self {
            query_timeout: Some(DEFAULT_QUERY_TIMEOUT),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            // A quarter of the host's memory (2 GiB where it is unknown).
            query_memory: lakelink_protocol::limits::host_memory().map_or(2 << 30, |m| m / 4),
            max_client_statements: DEFAULT_MAX_CLIENT_STATEMENTS,
        }
    }
}

impl Limits {
    /// No bounds at all.
    pub fn none() -> Self {
        Self { query_timeout: None, max_result_bytes: 0, query_memory: 0, max_client_statements: 0 }
    }

    /// The error of a statement that ran past `--query-timeout`.
    fn timed_out(timeout: Duration) -> Status {
        Status::deadline_exceeded(format!(
            "the statement ran longer than the scheduler's limit of {} s (--query-timeout) and was cancelled",
            timeout.as_secs()
        ))
    }

    /// `data` (a result on its way to a client) ended with an error, and its
    /// statement cancelled, once it runs past the timeout or grows past the
    /// result size. The clock starts now.
    pub fn bound(
        &self,
        data: BoxStream<'static, Result<FlightData, Status>>,
    ) -> BoxStream<'static, Result<FlightData, Status>> {
        if self.query_timeout.is_none() && self.max_result_bytes == 0 {
            return data;
        }
        let deadline = self.query_timeout.map(|t| (tokio::time::Instant::now() + t, t));
        let max = self.max_result_bytes;
        // Dropping the inner stream cancels its statement (its job, or the
        // work done here).
        stream::unfold((Some(data), 0u64), move |(inner, sent)| async move {
            let mut inner = inner?;
            let next = match deadline {
                Some((at, timeout)) => match tokio::time::timeout_at(at, inner.next()).await {
                    Ok(next) => next,
                    Err(_) => return Some((Err(Self::timed_out(timeout)), (None, sent))),
                },
                None => inner.next().await,
            };
            match next? {
                Ok(message) => {
                    let sent = sent + (message.data_header.len() + message.data_body.len()) as u64;
                    if max > 0 && sent > max {
                        let error = Status::resource_exhausted(format!(
                            "the result is larger than the scheduler's limit of {} (--max-result-size) and its \
                             statement was cancelled: narrow it with WHERE, LIMIT or an aggregate",
                            show_bytes(max)
                        ));
                        return Some((Err(error), (None, sent)));
                    }
                    Some((Ok(message), (Some(inner), sent)))
                }
                Err(status) => Some((Err(status), (Some(inner), sent))),
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_runs_at_most_its_share() {
        let slots = ClientSlots::new(2);
        let (a, b) = (Some("10.0.0.1".parse().unwrap()), Some("10.0.0.2".parse().unwrap()));
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        let refused = slots.take(a).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("--max-client-statements"), "{refused}");
        assert!(slots.take(b).unwrap().is_some(), "another address has its own share");
        drop(first);
        assert!(slots.take(a).unwrap().is_some(), "an ended statement frees its slot");
        assert!(ClientSlots::new(0).take(a).unwrap().is_none());
    }

    fn message(bytes: usize) -> Result<FlightData, Status> {
        Ok(FlightData { data_body: vec![0u8; bytes].into(), ..Default::default() })
    }

    #[tokio::test]
    async fn a_result_past_its_size_ends_with_the_flag_named() {
        let limits = Limits { max_result_bytes: 250, ..Limits::none() };
        let sent: Vec<_> = limits.bound(stream::iter((0..10).map(|_| message(100))).boxed()).collect().await;
        assert_eq!(sent.len(), 3, "two messages, then the error, then nothing");
        let error = sent[2].as_ref().unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
        assert!(error.message().contains("--max-result-size"), "{}", error.message());
    }

    #[tokio::test]
    async fn a_statement_past_its_time_ends_with_the_flag_named() {
        let limits = Limits { query_timeout: Some(Duration::from_millis(300)), ..Limits::none() };
        let slow = stream::iter(0..100)
            .then(|_| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                message(1)
            })
            .boxed();
        let sent: Vec<_> = limits.bound(slow).collect().await;
        assert!(sent.len() < 100, "the stream was cut");
        let error = sent.last().unwrap().as_ref().unwrap_err();
        assert_eq!(error.code(), tonic::Code::DeadlineExceeded);
        assert!(error.message().contains("--query-timeout"), "{}", error.message());
    }
}
