//! The scheduler's calls to every executor at once
//! ([`lakelink_protocol::members`]): each executor is asked on its data
//! port with the cluster secret, all in parallel, each within
//! [`MEMBER_TIMEOUT`](crate::members::MEMBER_TIMEOUT); an executor that does not answer is left out (and
//! logged), never holding up the others.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lakelink_protocol::cluster::ClusterLink;

/// How long one executor may take to answer.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends the action `kind` with `body` to every executor of `executors`
/// (host, data port); the answers of those that answered.
pub async fn ask_all(executors: &[(String, u16)], link: &ClusterLink, kind: &str, body: Vec<u8>) -> Vec<Vec<Bytes>> {
    let asks = executors.iter().map(|(host, port)| {
        let body = body.clone();
        async move {
            let what = format!("executor {host}:{port}");
            let answer = tokio::time::timeout(MEMBER_TIMEOUT, ask(host, *port, &what, link, kind, body)).await;
            match answer {
                Ok(Ok(answers)) => Some(answers),
                Ok(Err(e)) => {
                    tracing::warn!("{what} did not answer {kind}: {}", e.message());
                    None
                }
                Err(_) => {
                    tracing::warn!("{what} did not answer {kind} within {MEMBER_TIMEOUT:?}");
                    None
                }
            }
        }
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

async fn ask(
    host: &str,
    port: u16,
    what: &str,
    link: &ClusterLink,
    kind: &str,
    body: Vec<u8>,
) -> Result<Vec<Bytes>, tonic::Status> {
    let mut client = crate::result::executor_client_at(host, port, what, link).await?;
    let mut answers = client.do_action(arrow_flight::Action::new(kind.to_string(), body)).await?.into_inner();
    let mut out = vec![];
    while let Some(answer) = answers.next().await {
        out.push(answer?.body);
    }
    Ok(out)
}
