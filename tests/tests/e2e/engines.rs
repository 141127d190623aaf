//! The real engines the cluster-mode tests run against start on loopback
//! and do their job: a 3-node NATS JetStream cluster that keeps a meta
//! leader when a node dies, PostgreSQL 15 answering SQL and keeping its data
//! through a restart, SeaweedFS's S3 API storing objects for signed
//! requests only.

use std::time::Duration;

use serde_json::Value;
use sightline_tests::engines::{NatsCluster, Postgres, SeaweedS3};
use tokio::io::AsyncBufReadExt;

/// The `INFO {...}` a NATS server greets a client with on `url`'s port.
async fn nats_info(url: &str) -> Value {
    let address = url.trim_start_matches("nats://");
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .expect("connect in time")
    .expect("connect to the NATS client port");
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::BufReader::new(stream).read_line(&mut line),
    )
    .await
    .expect("INFO in time")
    .expect("read INFO");
    let json = line
        .strip_prefix("INFO ")
        .unwrap_or_else(|| panic!("a NATS greeting, got {line:?}"));
    serde_json::from_str(json.trim()).expect("INFO is JSON")
}

#[tokio::test]
async fn the_cluster_engines_start_on_loopback() {
    let (mut nats, mut postgres, mut seaweed) =
        tokio::join!(NatsCluster::start(3), Postgres::start(), SeaweedS3::start());

    // NATS: three JetStream servers in one cluster with a meta leader.
    let all = [0, 1, 2];
    let leader = nats.wait_meta_leader(&all).await;
    let jsz = nats.jsz(leader).await.expect("the leader's /jsz");
    let meta = &jsz["meta_cluster"];
    assert_eq!(meta["cluster_size"], 3, "{jsz}");
    assert_eq!(meta["leader"], nats.server_name(leader), "{jsz}");
    let peers = meta["replicas"].as_array().expect("the leader's peers");
    assert_eq!(peers.len(), 2, "the leader and two peers: {jsz}");
    assert!(peers.iter().all(|peer| peer["current"] == true), "{jsz}");
    assert_eq!(nats.client_urls().len(), 3);
    assert_eq!(nats.urls_joined().split(',').count(), 3);
    for url in nats.client_urls() {
        let info = nats_info(&url).await;
        assert_eq!(info["jetstream"], true, "{url}: {info}");
        assert_eq!(info["cluster"], "sightline", "{url}: {info}");
    }

    // The leader dies: the other two elect one of themselves.
    nats.kill(leader);
    let survivors: Vec<usize> = all.into_iter().filter(|&i| i != leader).collect();
    let new_leader = nats.wait_meta_leader(&survivors).await;
    assert_ne!(new_leader, leader);
    let jsz = nats.jsz(new_leader).await.expect("the new leader's /jsz");
    assert_eq!(jsz["meta_cluster"]["leader"], nats.server_name(new_leader));

    // It comes back on its own store, and a paused follower is caught up
    // once resumed.
    nats.start_again(leader).await;
    let follower = all
        .into_iter()
        .find(|&i| i != new_leader)
        .expect("a follower");
    nats.pause(follower);
    let others: Vec<usize> = all.into_iter().filter(|&i| i != follower).collect();
    nats.wait_meta_leader(&others).await;
    nats.resume(follower);
    nats.wait_meta_leader(&all).await;

    // PostgreSQL answers SQL, and keeps its data through a stop.
    assert_eq!(postgres.psql("select 1").await, Ok("1".to_string()));
    assert!(postgres.url().starts_with("postgres://postgres@127.0.0.1:"));
    postgres
        .psql("create table kept (v text); insert into kept values ('before the stop')")
        .await
        .expect("create and insert");
    postgres.stop();
    assert!(
        postgres.psql("select 1").await.is_err(),
        "a stopped server answered"
    );
    postgres.start_again().await;
    assert_eq!(
        postgres.psql("select v from kept").await,
        Ok("before the stop".to_string())
    );

    // S3: a signed put reads back; unsigned and wrongly signed requests are
    // refused.
    let body = b"sightline segment \x00\xff bytes".to_vec();
    seaweed
        .put_object("smoke/object", &body)
        .await
        .expect("signed put");
    assert_eq!(
        seaweed.get_object("smoke/object").await,
        Ok(Some(body.clone()))
    );
    assert_eq!(seaweed.get_object("smoke/missing").await, Ok(None));
    let unsigned = reqwest::get(format!(
        "{}/{}/smoke/object",
        seaweed.endpoint(),
        seaweed.bucket()
    ))
    .await
    .expect("S3 answers");
    assert_eq!(unsigned.status(), 403, "an unsigned GET was not refused");
    let wrong = seaweed
        .get_object_as(seaweed.access_key(), "not-the-secret", "smoke/object")
        .await;
    assert!(
        wrong
            .as_ref()
            .is_err_and(|error| error.starts_with("HTTP 403")),
        "a GET signed with the wrong secret: {wrong:?}"
    );
    assert_eq!(seaweed.region(), "us-east-1");
    assert!(!seaweed.secret_key().is_empty());

    // What was stored survives a stop.
    seaweed.stop();
    assert!(seaweed.get_object("smoke/object").await.is_err());
    seaweed.start_again().await;
    assert_eq!(seaweed.get_object("smoke/object").await, Ok(Some(body)));
}
