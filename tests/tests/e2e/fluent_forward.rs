//! Fluentd's forward protocol (issue 23): Fluentd's Python client
//! (`fluent-logger`, Message mode) and a forward client written with
//! `msgpack` as Fluentd's and Fluent Bit's `forward` outputs frame their
//! chunks (Forward and gzip-compressed PackedForward, each with a `chunk`
//! id), on a real collector: acknowledgements come back only for what was
//! stored, a bad entry is dropped and counted while its neighbours are
//! kept.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sightline_tests::{CollectorProcess, free_port, poll_until};

/// Sends what Fluentd's and Fluent Bit's `forward` outputs send, prints
/// each acknowledgement.
const PYTHON_FORWARD_CLIENT: &str = r#"
import gzip, socket, struct, sys, time
import msgpack
from fluent import sender

port = int(sys.argv[1])
now = int(time.time())

# Message mode, from Fluentd's own Python client (no acknowledgements).
logger = sender.FluentSender("shop.gateway", host="127.0.0.1", port=port)
assert logger.emit("access", {"message": "GET /api/orders 200", "level": "info", "request_id": "req-fwd-1"}), logger.last_error
logger.close()

def event_time(seconds, nanos=0):
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanos))

sock = socket.create_connection(("127.0.0.1", port))
unpacker = msgpack.Unpacker(raw=False)
def ack():
    while True:
        for answer in unpacker:
            return answer["ack"]
        unpacker.feed(sock.recv(4096))

# Forward mode with a chunk id; one entry is not a record.
entries = [
    [event_time(now, 5), {"log": "payment declined", "level": "error", "kubernetes": {"namespace_name": "shop", "pod_name": "payment-1"}}],
    [now, "not a record"],
    [event_time(now, 6), {"log": "payment retried", "level": "warn"}],
]
sock.sendall(msgpack.packb(["shop.payment", entries, {"chunk": "chunk-forward", "size": 3}], use_bin_type=True))
print(ack())

# CompressedPackedForward, as Fluent Bit sends with Compress gzip.
packed = b"".join(msgpack.packb([event_time(now, 7 + i), {"log": "packed line %d" % i}], use_bin_type=True) for i in range(3))
sock.sendall(msgpack.packb(["shop.inventory", gzip.compress(packed), {"chunk": "chunk-packed", "size": 3, "compressed": "gzip"}], use_bin_type=True))
print(ack())
sock.close()
"#;

async fn search(http: &reqwest::Client, collector: &CollectorProcess, query: &str) -> Value {
    let response = http
        .get(collector.url("/api/logs"))
        .query(&[("q", query), ("limit", "100")])
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluentd_clients_forward_with_acknowledgements_and_bad_entries_are_dropped_alone() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let collector = CollectorProcess::start(dir.path(), &["--forward-addr", &address]).await;
    let client = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", PYTHON_FORWARD_CLIENT, &port.to_string()])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(
        client.status.success(),
        "the forward client failed (scripts/test installs fluent-logger): {}",
        String::from_utf8_lossy(&client.stderr)
    );
    // Each chunk acknowledged, by its id, after it was stored.
    assert_eq!(
        String::from_utf8(client.stdout)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        ["chunk-forward", "chunk-packed"]
    );
    let http = reqwest::Client::new();
    // Acknowledged means durable; searchable follows at the next commit.
    let all = poll_until("the forwarded records", Duration::from_secs(30), || async {
        let page = search(&http, &collector, "resource.fluent.tag:shop.*").await;
        Ok((page["total_hits"] == 6).then_some(page))
    })
    .await;
    let records = all["records"].as_array().unwrap();
    let find = |body: &str| {
        records
            .iter()
            .find(|r| r["body"] == body)
            .unwrap_or_else(|| panic!("{body} in {all}"))
    };
    let access = find("GET /api/orders 200");
    assert_eq!(access["service"], "shop.gateway.access");
    assert_eq!(access["request_id"], "req-fwd-1");
    let declined = find("payment declined");
    assert_eq!(declined["severity_text"], "ERROR");
    assert_eq!(declined["service"], "shop.payment");
    assert_eq!(declined["resource"]["k8s.namespace.name"], "shop");
    assert_eq!(declined["resource"]["k8s.pod.name"], "payment-1");
    let retried = find("payment retried");
    assert_eq!(
        retried["timestamp"].as_i64().unwrap() - declined["timestamp"].as_i64().unwrap(),
        1,
        "EventTime keeps nanoseconds"
    );
    for i in 0..3 {
        assert_eq!(
            find(&format!("packed line {i}"))["service"],
            "shop.inventory"
        );
    }
    // The entry that was not a record: dropped and counted.
    assert_eq!(
        crate::cluster::metric(
            &collector,
            "sightline_collector_rejected_records_total{reason=\"malformed\"}"
        )
        .await,
        1.0
    );
}
