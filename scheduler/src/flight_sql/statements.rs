//! Statements kept by the server between the calls of their execution.
//!
//! `GetFlightInfo` plans a statement once; the plan waits here behind a
//! random handle of 244 bits, which is the whole content of the ticket,
//! until the client's `DoGet` runs it, once. Nothing a client sends is taken
//! as a statement, its parameters or its settings: a ticket naming no kept
//! statement, an expired one, one already read, or one kept for another
//! user is refused. Prepared statements are kept the same way, with the plan
//! made when they were prepared, which their first execution runs.
//!
//! Both stores are bounded: statements unread after [`TICKET_TTL`] and
//! prepared statements unused for [`PREPARED_TTL`] are forgotten, and beyond
//! [`MAX_KEPT`] entries the oldest go first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow_flight::Ticket;
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use prost::Message;
use tonic::Status;

use crate::query::SettingChange;

/// How long a planned statement waits for its `DoGet`.
pub const TICKET_TTL: Duration = Duration::from_secs(600);
/// How long a prepared statement is kept unused.
pub const PREPARED_TTL: Duration = Duration::from_secs(3600);
/// The most statements (and prepared statements) kept at once.
pub const MAX_KEPT: usize = 10_000;
/// How a statement ticket's handle begins.
const HANDLE_PREFIX: &str = "lakelink-statement:";

/// A statement ready to be read.
pub enum Ready {
    /// A planned query and the schema the client was promised.
    Plan {
        /// The plan, with its session and query id.
        df: Box<DataFrame>,
        /// The promised schema.
        schema: SchemaRef,
    },
    /// A `SET`/`RESET` already applied: the answer is the change itself.
    Change(SettingChange),
}

struct Kept<T> {
    value: T,
    owner: String,
    at: Instant,
}

/// A prepared statement.
pub struct Prepared {
    /// Its SQL.
    pub sql: String,
    /// The parameters bound last (DoPut), if any.
    pub params: Option<Vec<ScalarValue>>,
    /// The plan made when it was prepared, under these session settings:
    /// its first execution runs it (so `nl_*` calls are compiled once).
    pub plan: Option<(Vec<(String, String)>, DataFrame)>,
    /// Executions so far.
    pub executions: u64,
}

/// Random handles of 244 bits, as text.
fn new_handle() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Drops expired entries, then the oldest beyond [`MAX_KEPT`].
fn bound<T>(map: &mut HashMap<String, Kept<T>>, ttl: Duration) {
    map.retain(|_, k| k.at.elapsed() < ttl);
    if map.len() >= MAX_KEPT {
        let mut ages: Vec<(Instant, String)> = map.iter().map(|(h, k)| (k.at, h.clone())).collect();
        ages.sort();
        for (_, handle) in ages.into_iter().take(map.len() + 1 - MAX_KEPT) {
            map.remove(&handle);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The statements and prepared statements the server keeps.
#[derive(Default)]
pub struct Statements {
    planned: Mutex<HashMap<String, Kept<Ready>>>,
    prepared: Mutex<HashMap<String, Kept<Prepared>>>,
}

impl Statements {
    /// Keeps `ready` for `owner` and answers the ticket that reads it once.
    pub fn keep(&self, ready: Ready, owner: &str) -> Ticket {
        let handle = new_handle();
        {
            let mut planned = lock(&self.planned);
            bound(&mut planned, TICKET_TTL);
            planned.insert(handle.clone(), Kept { value: ready, owner: owner.to_string(), at: Instant::now() });
        }
        let ticket = TicketStatementQuery { statement_handle: format!("{HANDLE_PREFIX}{handle}").into_bytes().into() };
        Ticket::new(ticket.as_any().encode_to_vec())
    }

    /// The statement a ticket's handle names, for `owner`; used up.
    pub fn take(&self, handle: &[u8], owner: &str) -> Result<Ready, Status> {
        let unknown = || {
            Status::not_found(
                "unknown, expired or already read ticket: ask for the statement's FlightInfo again (tickets are \
                 good for one read, within 10 minutes, by the user they were given to)",
            )
        };
        let handle =
            std::str::from_utf8(handle).ok().and_then(|h| h.strip_prefix(HANDLE_PREFIX)).ok_or_else(unknown)?;
        let mut planned = lock(&self.planned);
        bound(&mut planned, TICKET_TTL);
        match planned.get(handle) {
            Some(kept) if kept.owner == owner => Ok(planned.remove(handle).expect("present").value),
            _ => Err(unknown()),
        }
    }

    /// Keeps a prepared statement for `owner`; its handle.
    pub fn prepare(&self, prepared: Prepared, owner: &str) -> String {
        let handle = new_handle();
        let mut all = lock(&self.prepared);
        bound(&mut all, PREPARED_TTL);
        all.insert(handle.clone(), Kept { value: prepared, owner: owner.to_string(), at: Instant::now() });
        handle
    }

    /// Runs `f` on the prepared statement `handle` of `owner` (and marks it used).
    pub fn with_prepared<T>(
        &self,
        handle: &[u8],
        owner: &str,
        f: impl FnOnce(&mut Prepared) -> T,
    ) -> Result<T, Status> {
        let mut all = lock(&self.prepared);
        bound(&mut all, PREPARED_TTL);
        let handle = std::str::from_utf8(handle).unwrap_or_default();
        match all.get_mut(handle) {
            Some(kept) if kept.owner == owner => {
                kept.at = Instant::now();
                Ok(f(&mut kept.value))
            }
            _ => Err(Status::not_found("unknown or closed prepared statement")),
        }
    }

    /// Forgets a prepared statement of `owner`.
    pub fn close(&self, handle: &[u8], owner: &str) {
        let mut all = lock(&self.prepared);
        let handle = std::str::from_utf8(handle).unwrap_or_default();
        if all.get(handle).is_some_and(|k| k.owner == owner) {
            all.remove(handle);
        }
    }

    /// How many statements wait for their read.
    pub fn waiting(&self) -> usize {
        lock(&self.planned).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_flight::sql::Any;

    fn handle_of(ticket: &Ticket) -> Vec<u8> {
        let any = Any::decode(ticket.ticket.as_ref()).unwrap();
        let inner: TicketStatementQuery = any.unpack().unwrap().unwrap();
        inner.statement_handle.to_vec()
    }

    fn change() -> Ready {
        Ready::Change(SettingChange { key: "lakelink.llm.cache".into(), value: Some("false".into()) })
    }

    #[test]
    fn a_ticket_reads_once_and_only_for_its_owner() {
        let s = Statements::default();
        let ticket = s.keep(change(), "ada");
        let handle = handle_of(&ticket);
        assert!(s.take(&handle, "bob").is_err(), "another user read the statement");
        assert!(s.take(&handle, "ada").is_ok());
        assert!(s.take(&handle, "ada").is_err(), "a ticket read twice");
    }

    #[test]
    fn forged_handles_name_nothing() {
        let s = Statements::default();
        let _ = s.keep(change(), "ada");
        for forged in [&b"{\"sql\":\"SELECT 1\"}"[..], b"lakelink-statement:0000", b"", b"lakelink-statement:"] {
            let err = s.take(forged, "ada").err().expect("refused");
            assert_eq!(err.code(), tonic::Code::NotFound);
        }
    }

    #[test]
    fn prepared_statements_belong_to_their_owner() {
        let s = Statements::default();
        let p = Prepared { sql: "SELECT 1".into(), params: None, plan: None, executions: 0 };
        let handle = s.prepare(p, "ada");
        assert!(s.with_prepared(handle.as_bytes(), "bob", |p| p.sql.clone()).is_err());
        assert_eq!(s.with_prepared(handle.as_bytes(), "ada", |p| p.sql.clone()).unwrap(), "SELECT 1");
        s.close(handle.as_bytes(), "bob");
        assert!(s.with_prepared(handle.as_bytes(), "ada", |_| ()).is_ok(), "another user closed it");
        s.close(handle.as_bytes(), "ada");
        assert!(s.with_prepared(handle.as_bytes(), "ada", |_| ()).is_err());
    }
}
