//! A Sightline cluster on this machine, to try cluster mode: a 3-node NATS
//! JetStream cluster, PostgreSQL 15 and SeaweedFS's S3 (the engines the
//! cluster tests start, which `scripts/test` installs), and `--collectors N`
//! collectors in cluster mode (3 by default), each on free loopback ports.
//! It prints where everything listens and runs until Ctrl-C.
//!
//! ```text
//! cargo build --workspace --bins
//! cargo run -p sightline-tests --bin sightline-local-cluster -- --collectors 3
//! ```

use sightline_tests::engines::{ClusterEngines, ClusterSettings};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut collectors = 3usize;
    let mut split_interval = "10s";
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--collectors" => {
                collectors = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=16).contains(n))
                    .unwrap_or_else(|| usage("--collectors takes a number from 1 to 16"));
            }
            "--fast-splits" => split_interval = "1s",
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("sightline-local-cluster-")
        .tempdir()
        .expect("a working directory");
    eprintln!("starting NATS (3 nodes), PostgreSQL and SeaweedFS S3 ...");
    let engines = ClusterEngines::start().await;
    let settings = ClusterSettings {
        split_interval: split_interval.into(),
        lease_ttl: "10s",
        ..ClusterSettings::default()
    };
    let mut running = Vec::new();
    for n in 0..collectors {
        let node = format!("c{n}");
        running.push((
            node.clone(),
            engines.start_collector(&node, dir.path(), &settings).await,
        ));
    }
    println!(
        "Sightline cluster ({collectors} collectors), files in {}",
        dir.path().display()
    );
    println!("  NATS JetStream  {}", engines.nats.urls_joined());
    println!("  PostgreSQL      {}", engines.postgres.url());
    println!(
        "  S3              {} bucket {} (key {})",
        engines.s3.endpoint(),
        engines.s3.bucket(),
        engines.s3.access_key()
    );
    for (node, collector) in &running {
        println!(
            "  collector {node}: OTLP gRPC 127.0.0.1:{}  OTLP/HTTP 127.0.0.1:{}  query {}  --cluster-config {}",
            collector.grpc_port,
            collector.otlp_http_port,
            collector.url("/"),
            dir.path().join(format!("{node}.cluster.yml")).display()
        );
    }
    println!(
        "Splits: psql {} -c 'select * from sightline_splits'",
        engines.postgres.url()
    );
    println!("Ctrl-C stops everything.");
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping");
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("{problem}");
    }
    eprintln!("usage: sightline-local-cluster [--collectors N] [--fast-splits]");
    std::process::exit(if problem.is_empty() { 0 } else { 2 })
}
