//! What the collector's process tests share. Each test binary includes
//! this module and uses part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

/// A loopback address nothing listens on, never the same twice in a test
/// binary: the probe listener closes at once, so the kernel may hand its
/// port to the next probe, and a collector given one port for two
/// listeners fails to start.
pub(crate) fn free_port() -> SocketAddr {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let address = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("bind an ephemeral loopback port");
        if GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(address.port())
        {
            return address;
        }
    }
}

/// One log record with `body`, timestamped now, as an OTLP export request.
pub(crate) fn log_request(body: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos() as u64,
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(body.to_owned())),
                    }),
                    ..LogRecord::default()
                }],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}
