//! Result files read while their task is still writing them: the scheduler
//! asks the executor running a result task for its partition with
//! [`ResultPartition::ticket`] and reads each message the moment it is
//! whole in the file.

use arrow_flight::Ticket;
use serde::{Deserialize, Serialize};
use tonic::Status;

/// How a follow ticket begins; the partition, as JSON, follows.
pub const FOLLOW_TICKET_PREFIX: &str = "lakelink-follow:";

/// The largest message sent as it lies in the file: below the 16 MiB that
/// Ballista's clients, and this executor's Flight service, accept. A bigger
/// batch (wide rows) is sent in slices of about 2 MiB.
pub const MAX_RAW_MESSAGE: usize = 12 * 1024 * 1024;

/// One partition of a job's result stage, as written by one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultPartition {
    /// The job.
    pub job_id: String,
    /// Its result stage.
    pub stage_id: usize,
    /// The partition.
    pub partition_id: usize,
    /// The task writing it (the file's id).
    pub task_id: usize,
}

impl ResultPartition {
    /// The ticket that asks the executor running the task for the partition.
    pub fn ticket(&self) -> Ticket {
        let spec = serde_json::to_string(self).expect("a partition serializes");
        Ticket::new(format!("{FOLLOW_TICKET_PREFIX}{spec}"))
    }

    /// The partition a follow ticket names; `None` for any other ticket. A
    /// job id that is not a plain name is refused.
    pub fn from_ticket(ticket: &[u8]) -> Option<Result<Self, Status>> {
        let spec = ticket.strip_prefix(FOLLOW_TICKET_PREFIX.as_bytes())?;
        let parsed: Result<Self, Status> =
            serde_json::from_slice(spec).map_err(|e| Status::invalid_argument(format!("malformed follow ticket: {e}")));
        Some(parsed.and_then(|p| {
            if valid_job_id(&p.job_id) {
                Ok(p)
            } else {
                Err(Status::invalid_argument("malformed follow ticket: the job id is not a plain name"))
            }
        }))
    }
}

/// Whether `id` can name a job: letters, digits, `-` and `_`, at most 64
/// (Ballista's job ids), so that it can never step out of a folder.
fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_job_ids_stay_plain_names() {
        let p = ResultPartition { job_id: "038JBJPZSP000".into(), stage_id: 2, partition_id: 1, task_id: 7 };
        let back = ResultPartition::from_ticket(&p.ticket().ticket).unwrap().unwrap();
        assert_eq!(back, p);
        assert!(ResultPartition::from_ticket(b"lakelink-result:abc").is_none());
        for bad in ["../../etc", "a/b", "", "x y"] {
            let forged = ResultPartition { job_id: bad.into(), ..p.clone() };
            let err = ResultPartition::from_ticket(&forged.ticket().ticket).unwrap().unwrap_err();
            assert!(err.message().contains("not a plain name"), "{bad}: {err}");
        }
        assert!(ResultPartition::from_ticket(b"lakelink-follow:{").unwrap().is_err());
    }
}
