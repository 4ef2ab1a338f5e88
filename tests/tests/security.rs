//! The cluster's doors, attacked: Ballista's own client and raw Ballista
//! calls reach the scheduler's cluster port only with the cluster secret,
//! and the client port serves Flight SQL alone. Each attack is also run
//! with the secret (or through the right door) to show the refusal is the
//! door's, not a broken call's.

use ballista::prelude::SessionContextExt;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{ExecutorRegistration, PollWorkParams, RegisterExecutorParams};
use ballista_core::serde::scheduler::{ExecutorOperatingSystemSpecification, ExecutorSpecification};
use datafusion::prelude::{CsvReadOptions, SessionContext};
use lakelink_tests::{TestCluster, run, tpch_lake};

fn fake_executor(id: &str) -> ExecutorRegistration {
    ExecutorRegistration {
        id: id.into(),
        host: Some("127.0.0.1".into()),
        port: 1,
        grpc_port: 2,
        specification: Some(ExecutorSpecification::default().with_vcores(8).into()),
        os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
        ballista_protocol_version: ballista_core::BALLISTA_PROTOCOL_VERSION,
    }
}

async fn ballista_client(
    addr: std::net::SocketAddr,
    secret: Option<&lakelink_scheduler::ClusterSecret>,
) -> SchedulerGrpcClient<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let endpoint = match secret {
        Some(s) => s.present(endpoint).unwrap(),
        None => endpoint,
    };
    SchedulerGrpcClient::new(endpoint.connect().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ballista_s_protocol_needs_the_cluster_secret() {
    let cluster = TestCluster::start(tpch_lake()).await;
    let secret = cluster.secret.clone();

    // A fake executor: registering or polling for tasks without the secret.
    let mut stranger = ballista_client(cluster.scheduler.local_cluster_addr(), None).await;
    let err = stranger
        .register_executor(RegisterExecutorParams { metadata: Some(fake_executor("intruder")) })
        .await
        .expect_err("an executor registered without the cluster secret");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let poll = PollWorkParams { metadata: Some(fake_executor("intruder")), num_free_vcores: 8, task_status: vec![] };
    let err = stranger.poll_work(poll).await.expect_err("an executor polled without the cluster secret");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    // The same calls with the secret get through the door (a polling
    // executor registers; push registration then fails on its own terms,
    // as the fake executor's port answers nothing).
    let mut member = ballista_client(cluster.scheduler.local_cluster_addr(), Some(&secret)).await;
    let poll = PollWorkParams { metadata: Some(fake_executor("member")), num_free_vcores: 0, task_status: vec![] };
    member.poll_work(poll).await.expect("a member polls");
    let err = member
        .register_executor(RegisterExecutorParams { metadata: Some(fake_executor("member-2")) })
        .await
        .expect_err("the fake executor's port answers nothing");
    assert_ne!(err.code(), tonic::Code::Unauthenticated, "{err}");

    // The client port does not serve Ballista's protocol at all.
    let mut at_client_port = ballista_client(cluster.scheduler.local_addr(), Some(&secret)).await;
    let err = at_client_port
        .register_executor(RegisterExecutorParams { metadata: Some(fake_executor("other")) })
        .await
        .expect_err("Ballista's protocol answered on the client port");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");

    // Ballista's own client, pointed at either port without the secret, can
    // neither read a host file nor write one.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("written");
    for addr in [cluster.scheduler.local_cluster_addr(), cluster.scheduler.local_addr()] {
        let ctx = match SessionContext::remote(&format!("df://{addr}")).await {
            Ok(ctx) => ctx,
            Err(_) => continue, // refused at connection: nothing reached the scheduler
        };
        let read = async {
            ctx.register_csv("p", "/etc/passwd", CsvReadOptions::new().has_header(false).delimiter(b':')).await?;
            ctx.sql("SELECT * FROM p").await?.collect().await
        };
        assert!(read.await.is_err(), "Ballista's client read /etc/passwd through {addr}");
        let copy = format!("COPY (SELECT 'x' AS a) TO '{}' STORED AS CSV", target.display());
        let write = async { ctx.sql(&copy).await?.collect().await };
        assert!(write.await.is_err(), "Ballista's client ran COPY through {addr}");
        assert!(!target.exists(), "a file appeared through {addr}");
    }

    // The cluster still serves its clients.
    let mut conn = cluster.connect().await;
    assert_eq!(run(&mut conn, "SELECT count(*) FROM region").await, vec![vec!["5".to_string()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_of_model_calls_needs_the_cluster_secret() {
    use arrow_flight::Action;
    use arrow_flight::flight_service_client::FlightServiceClient;
    use lakelink_model::ledger::{Reply, Request};

    let cluster = TestCluster::start(tpch_lake()).await;
    let client = |addr: std::net::SocketAddr, secret: Option<lakelink_scheduler::ClusterSecret>| async move {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let endpoint = match secret {
            Some(s) => s.present(endpoint).unwrap(),
            None => endpoint,
        };
        FlightServiceClient::new(endpoint.connect().await.unwrap())
    };
    let spend = |query: &str| {
        let request = Request::Spend { query: query.into(), process: "p".into(), calls: 1_000_000, tokens: 0 };
        Action::new(lakelink_scheduler::ledger::LEDGER_ACTION, serde_json::to_vec(&request).unwrap())
    };
    async fn reply(
        client: &mut FlightServiceClient<tonic::transport::Channel>,
        action: Action,
    ) -> Result<Reply, tonic::Status> {
        let mut results = client.do_action(action).await?.into_inner();
        let result = results.message().await?.expect("one result");
        Ok(serde_json::from_slice(&result.body).unwrap())
    }

    // Without the secret: spending someone's budget, or reading and
    // settling their answers, is refused at the door.
    let mut stranger = client(cluster.scheduler.local_cluster_addr(), None).await;
    let err = reply(&mut stranger, spend("q-1")).await.expect_err("the ledger answered without the secret");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    // The client port does not serve it, even to a caller with the secret.
    let mut at_client_port = client(cluster.scheduler.local_addr(), Some(cluster.secret.clone())).await;
    let err = reply(&mut at_client_port, spend("q-1")).await.expect_err("the ledger answered on the client port");
    assert!(!err.message().contains("calls"), "{err}");

    // A member gets through; bad requests and other Flight calls are refused.
    let mut member = client(cluster.scheduler.local_cluster_addr(), Some(cluster.secret.clone())).await;
    assert_eq!(reply(&mut member, spend("q-1")).await.unwrap(), Reply::Spent { calls: 1_000_000, tokens: 0 });
    let junk = Action::new(lakelink_scheduler::ledger::LEDGER_ACTION, b"not json".to_vec());
    let err = reply(&mut member, junk).await.expect_err("a malformed request was answered");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = member.list_flights(arrow_flight::Criteria::default()).await.expect_err("listed flights");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");

    // The cluster still serves its clients (whose queries have ids of their own).
    let mut conn = cluster.connect().await;
    assert_eq!(run(&mut conn, "SELECT count(*) FROM region").await, vec![vec!["5".to_string()]]);
}
