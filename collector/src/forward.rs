//! Fluentd's forward protocol (v1) on TCP, so Fluentd's and Fluent Bit's
//! `forward` outputs ship to Sightline: `--forward-addr 0.0.0.0:24224`.
//!
//! A connection carries MessagePack arrays, one after the other, in the
//! three modes of the specification:
//! - Message: `[tag, time, record, option?]`;
//! - Forward: `[tag, [[time, record], ...], option?]`;
//! - PackedForward: `[tag, <bin of concatenated [time, record]>, option?]`,
//!   gzip-compressed when `option.compressed` is `"gzip"`
//!   (CompressedPackedForward).
//!
//! `time` is an integer of seconds or the `EventTime` extension (type 0:
//! seconds and nanoseconds, big-endian). Each record is a document as the
//! `_bulk` receiver takes one (`message`/`log`, `level`, `time`,
//! Kubernetes fields, ids; the rest attributes), with the tag as the
//! `fluent.tag` resource attribute and, without a service field, the
//! service. When `option.chunk` is set, the answer `{"ack": chunk}` is sent
//! once the message's records are durable, so Fluentd (`require_ack_response`)
//! and Fluent Bit (`Require_ack_response`) deliver at least once; a message
//! that could not be stored (the collector busy, the disk full) is not
//! acknowledged and the sender sends it again.
//!
//! A record that cannot be a log record (not a map, a time that is not
//! one) is dropped, counted (`sightline_collector_rejected_records_total{reason="malformed"}`) and
//! logged with its place; the other entries of the message are kept. A
//! message that is not a forward-protocol array, or larger than
//! [`MAX_MESSAGE_BYTES`], closes the connection, as Fluentd does. There is
//! no shared-key handshake or TLS: bind the listener to a private address.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use rmpv::Value as Pack;
use serde_json::{Map, Value};
use sightline_store::LogRecord;
use sightline_vocab::clock::now_nanos;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::ingest::Ingest;

/// Largest forward message (Fluent Bit's chunks are at most a few MiB;
/// Fluentd's default `chunk_limit_size` is 8 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Largest decompressed PackedForward entries.
const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;

/// Deepest MessagePack nesting read (records are a few levels deep).
const MAX_DEPTH: usize = 64;

/// How long a connection may stay silent in the middle of a message.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts connections until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    ingest: Ingest,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stopped| *stopped) => return Ok(()),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "forward: accept failed");
                        continue;
                    }
                };
                let ingest = ingest.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    if let Err(error) = connection(stream, peer, ingest, stop).await {
                        tracing::info!(%peer, %error, "forward: connection closed");
                    }
                });
            }
        }
    }
}

/// What one message asks of the connection.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Message {
    pub records: Vec<LogRecord>,
    /// What was wrong with each dropped entry.
    pub dropped: Vec<String>,
    /// `option.chunk`: to acknowledge once stored.
    pub chunk: Option<String>,
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ingest: Ingest,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut read = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut read)) => match n {
                Ok(Ok(n)) => n,
                Ok(Err(error)) => return Err(error.to_string()),
                Err(_) if buffer.is_empty() => continue,
                Err(_) => return Err("a message was not finished within 60 s".into()),
            },
        };
        if n == 0 {
            return if buffer.is_empty() {
                Ok(())
            } else {
                Err(format!("closed in the middle of a message ({} bytes)", buffer.len()))
            };
        }
        buffer.extend_from_slice(&read[..n]);
        // Everything already arrived, so that a large message is parsed
        // once per burst rather than once per read.
        while buffer.len() <= MAX_MESSAGE_BYTES {
            match stream.try_read(&mut read) {
                Ok(0) => break,
                Ok(n) => buffer.extend_from_slice(&read[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error.to_string()),
            }
        }
        // The whole messages, split and converted off the executor.
        let (rest, messages, failed) =
            tokio::task::spawn_blocking(move || split(buffer, now_nanos()))
                .await
                .map_err(|error| error.to_string())?;
        buffer = rest;
        for message in messages {
            store(&mut stream, peer, &ingest, message).await?;
        }
        if let Some(error) = failed {
            return Err(error);
        }
        if buffer.len() > MAX_MESSAGE_BYTES {
            return Err(format!("a message over {MAX_MESSAGE_BYTES} bytes"));
        }
    }
}

/// The whole messages at the start of `buffer`, converted, the bytes after
/// them, and what was wrong with a message that is not one (the
/// connection closes after the messages before it are stored).
type Split = (Vec<u8>, Vec<Message>, Option<String>);

fn split(mut buffer: Vec<u8>, now: i64) -> Split {
    let mut messages = Vec::new();
    let mut used = 0;
    let failed = loop {
        match next_value(&buffer[used..]) {
            Ok(Some((value, length))) => {
                used += length;
                match message(value, now) {
                    Ok(message) => messages.push(message),
                    Err(error) => break Some(error),
                }
            }
            Ok(None) => break None,
            Err(error) => break Some(error),
        }
    };
    buffer.drain(..used);
    (buffer, messages, failed)
}

/// Stores one message's records and, once they are durable, acknowledges
/// its chunk.
async fn store(
    stream: &mut TcpStream,
    peer: SocketAddr,
    ingest: &Ingest,
    message: Message,
) -> Result<(), String> {
    if !message.dropped.is_empty() {
        ingest.count_malformed(message.dropped.len() as u64);
        tracing::warn!(%peer, dropped = %message.dropped.join("; "), "forward: entries dropped");
    }
    let size = message.records.iter().map(|r| r.body.len()).sum();
    let stored = if message.records.is_empty() {
        Ok(Vec::new())
    } else {
        ingest.logs(message.records, size).await
    };
    match stored {
        Ok(rejections) => {
            for rejection in &rejections {
                tracing::warn!(%peer, index = rejection.index, reason = %rejection.reason, "forward: record refused");
            }
            if let Some(chunk) = message.chunk {
                let mut ack = Vec::new();
                let answer = Pack::Map(vec![(Pack::from("ack"), Pack::from(chunk))]);
                rmpv::encode::write_value(&mut ack, &answer).map_err(|e| e.to_string())?;
                stream.write_all(&ack).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        // Not acknowledged: the sender retries the chunk.
        Err(error) if message.chunk.is_some() => {
            tracing::warn!(%peer, %error, "forward: message not stored, not acknowledged");
            Ok(())
        }
        Err(error) => Err(format!("a message without `chunk` could not be stored: {error}")),
    }
}

/// The first whole MessagePack value of `buffer` and its length, `None`
/// while it is incomplete.
fn next_value(buffer: &[u8]) -> Result<Option<(Pack, usize)>, String> {
    if buffer.is_empty() {
        return Ok(None);
    }
    let mut cursor = std::io::Cursor::new(buffer);
    match rmpv::decode::read_value_with_max_depth(&mut cursor, MAX_DEPTH) {
        Ok(value) => Ok(Some((value, cursor.position() as usize))),
        Err(error) if is_eof(&error) => Ok(None),
        Err(error) => Err(format!("not MessagePack: {error}")),
    }
}

fn is_eof(error: &rmpv::decode::Error) -> bool {
    use rmpv::decode::Error;
    match error {
        Error::InvalidMarkerRead(io) | Error::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        Error::DepthLimitExceeded => false,
    }
}

/// One forward-protocol message as records.
pub(crate) fn message(value: Pack, now: i64) -> Result<Message, String> {
    let Pack::Array(parts) = value else {
        return Err(format!("a forward message is an array, not {}", kind(&value)));
    };
    let mut parts = parts.into_iter();
    let tag = match parts.next() {
        Some(Pack::String(tag)) => tag.into_str().ok_or("the tag is not UTF-8")?,
        other => return Err(format!("a forward message starts with its tag, not {}", other.as_ref().map_or("nothing", kind))),
    };
    let second = parts.next().ok_or("a forward message has entries after its tag")?;
    let mut out = Message::default();
    // Message mode: [tag, time, record, option?].
    if is_time(&second) {
        let record = parts.next().ok_or("a message-mode message has a record after its time")?;
        let option = parts.next();
        out.chunk = chunk(option.as_ref());
        push(&mut out, &tag, 0, Pack::Array(vec![second, record]), now);
        return Ok(out);
    }
    let option = parts.next();
    out.chunk = chunk(option.as_ref());
    let entries: Vec<Pack> = match second {
        // Forward mode.
        Pack::Array(entries) => entries,
        // PackedForward: the entries, MessagePack one after the other.
        Pack::Binary(bytes) => unpack(&bytes, option.as_ref())?,
        Pack::String(text) => unpack(text.as_bytes(), option.as_ref())?,
        other => return Err(format!("forward entries are an array or bin, not {}", kind(&other))),
    };
    for (index, entry) in entries.into_iter().enumerate() {
        push(&mut out, &tag, index, entry, now);
    }
    Ok(out)
}

/// PackedForward entries, gunzipped when `option.compressed` says so.
fn unpack(bytes: &[u8], option: Option<&Pack>) -> Result<Vec<Pack>, String> {
    let compressed = option
        .and_then(|option| field(option, "compressed"))
        .and_then(Pack::as_str)
        == Some("gzip");
    let decoded;
    let mut rest: &[u8] = if compressed {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(MAX_DECODED_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|error| format!("bad gzip in CompressedPackedForward: {error}"))?;
        if out.len() > MAX_DECODED_BYTES {
            return Err(format!("PackedForward entries over {MAX_DECODED_BYTES} bytes decompressed"));
        }
        decoded = out;
        &decoded
    } else {
        bytes
    };
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let entry = rmpv::decode::read_value_with_max_depth(&mut rest, MAX_DEPTH)
            .map_err(|error| format!("PackedForward entry {}: {error}", entries.len()))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// `[time, record]` as a log record of `tag`, or why it is dropped.
fn push(out: &mut Message, tag: &str, index: usize, entry: Pack, now: i64) {
    let converted = (|| {
        let Pack::Array(pair) = entry else {
            return Err(format!("not a [time, record] pair but {}", kind(&entry)));
        };
        let mut pair = pair.into_iter();
        let time = pair.next().ok_or("an empty entry")?;
        let timestamp = time_of(&time).ok_or_else(|| format!("{time} is not a time"))?;
        let record = match pair.next() {
            Some(Pack::Map(fields)) => fields,
            other => return Err(format!("the record is not a map but {}", other.as_ref().map_or("nothing", kind))),
        };
        let mut document: Map<String, Value> = Map::new();
        for (key, value) in record {
            let key = match key {
                Pack::String(key) => key.into_str().ok_or("a key is not UTF-8")?,
                other => other.to_string(),
            };
            document.insert(key, json(value));
        }
        // The event's time, unless the record has its own.
        if !["@timestamp", "timestamp", "time", "ts"].iter().any(|k| document.contains_key(*k)) {
            document.insert("time".into(), Value::from(timestamp));
        }
        if !document.contains_key("service") && !document.contains_key("service.name") {
            document.insert("service".into(), Value::String(tag.to_string()));
        }
        crate::document::to_record(document, ("fluent.tag", tag), now)
    })();
    match converted {
        Ok(record) => out.records.push(record),
        Err(reason) => out.dropped.push(format!("entry {index}: {reason}")),
    }
}

fn is_time(value: &Pack) -> bool {
    matches!(value, Pack::Integer(_) | Pack::F64(_) | Pack::F32(_)) || matches!(value, Pack::Ext(0, bytes) if bytes.len() == 8)
}

/// Nanoseconds since the epoch of a forward time.
fn time_of(value: &Pack) -> Option<i64> {
    match value {
        Pack::Integer(seconds) => seconds.as_i64()?.checked_mul(1_000_000_000),
        Pack::F64(seconds) => Some((seconds * 1e9) as i64),
        Pack::F32(seconds) => Some((f64::from(*seconds) * 1e9) as i64),
        Pack::Ext(0, bytes) if bytes.len() == 8 => {
            let seconds = u32::from_be_bytes(bytes[0..4].try_into().ok()?);
            let nanos = u32::from_be_bytes(bytes[4..8].try_into().ok()?);
            Some(i64::from(seconds) * 1_000_000_000 + i64::from(nanos))
        }
        _ => None,
    }
}

fn field<'a>(map: &'a Pack, name: &str) -> Option<&'a Pack> {
    map.as_map()?
        .iter()
        .find(|(key, _)| key.as_str() == Some(name))
        .map(|(_, value)| value)
}

fn chunk(option: Option<&Pack>) -> Option<String> {
    option
        .and_then(|option| field(option, "chunk"))
        .and_then(Pack::as_str)
        .map(str::to_string)
}

fn kind(value: &Pack) -> &'static str {
    match value {
        Pack::Nil => "nil",
        Pack::Boolean(_) => "a boolean",
        Pack::Integer(_) | Pack::F32(_) | Pack::F64(_) => "a number",
        Pack::String(_) => "a string",
        Pack::Binary(_) => "bin",
        Pack::Array(_) => "an array",
        Pack::Map(_) => "a map",
        Pack::Ext(..) => "an extension",
    }
}

/// A MessagePack value as JSON (bin as UTF-8 text where it is, as Fluent
/// Bit packs strings).
fn json(value: Pack) -> Value {
    match value {
        Pack::Nil => Value::Null,
        Pack::Boolean(b) => Value::Bool(b),
        Pack::Integer(i) => i
            .as_i64()
            .map(Value::from)
            .or_else(|| i.as_u64().map(Value::from))
            .unwrap_or(Value::Null),
        Pack::F32(f) => serde_json::Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number),
        Pack::F64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Pack::String(s) => Value::String(s.into_str().unwrap_or_default()),
        Pack::Binary(bytes) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        Pack::Array(items) => Value::Array(items.into_iter().map(json).collect()),
        Pack::Map(pairs) => Value::Object(
            pairs
                .into_iter()
                .map(|(key, value)| {
                    let key = match key {
                        Pack::String(key) => key.into_str().unwrap_or_default(),
                        other => other.to_string(),
                    };
                    (key, json(value))
                })
                .collect(),
        ),
        Pack::Ext(_, bytes) => Value::String(hex::encode(bytes)),
    }
}

/// For the fuzz target: a connection's bytes, message by message.
#[cfg(feature = "testing")]
pub fn fuzz_forward(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((value, used))) = next_value(rest) {
        let _ = message(value, 0);
        rest = &rest[used..];
        if used == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(value: &Pack) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        out
    }

    fn record(message: &str) -> Pack {
        Pack::Map(vec![
            (Pack::from("log"), Pack::from(message)),
            (Pack::from("level"), Pack::from("error")),
        ])
    }

    fn event_time(seconds: u32, nanos: u32) -> Pack {
        Pack::Ext(0, [seconds.to_be_bytes(), nanos.to_be_bytes()].concat())
    }

    #[test]
    fn the_three_modes_become_records_and_bad_entries_are_named() {
        let chunk = Pack::Map(vec![(Pack::from("chunk"), Pack::from("c1"))]);
        let single = Pack::Array(vec![Pack::from("app.pay"), event_time(1_700_000_000, 7), record("declined"), chunk.clone()]);
        let got = message(single, 0).unwrap();
        assert_eq!(got.chunk.as_deref(), Some("c1"));
        assert_eq!(got.records.len(), 1);
        let r = &got.records[0];
        assert_eq!((r.timestamp, r.body.as_str(), r.severity_text.as_str()), (1_700_000_000_000_000_007, "declined", "ERROR"));
        assert_eq!(r.service, "app.pay");
        assert_eq!(r.resource["fluent.tag"], "app.pay");

        let forward = Pack::Array(vec![
            Pack::from("app"),
            Pack::Array(vec![
                Pack::Array(vec![Pack::from(1_700_000_001), record("one")]),
                Pack::from("not a pair"),
                Pack::Array(vec![Pack::from("soon"), record("bad time")]),
                Pack::Array(vec![Pack::from(1_700_000_002), Pack::from(3)]),
            ]),
        ]);
        let got = message(forward, 0).unwrap();
        assert_eq!(got.records.len(), 1);
        assert_eq!(got.records[0].timestamp, 1_700_000_001_000_000_000);
        assert_eq!(got.dropped.len(), 3, "{:?}", got.dropped);
        assert!(got.dropped[0].starts_with("entry 1: not a [time, record] pair"), "{:?}", got.dropped);
        assert!(got.dropped[1].contains("is not a time"), "{:?}", got.dropped);
        assert!(got.dropped[2].contains("the record is not a map"), "{:?}", got.dropped);

        let entries: Vec<u8> = [
            pack(&Pack::Array(vec![event_time(1_700_000_003, 0), record("packed 1")])),
            pack(&Pack::Array(vec![event_time(1_700_000_004, 0), record("packed 2")])),
        ]
        .concat();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &entries).unwrap();
        let compressed = Pack::Array(vec![
            Pack::from("app"),
            Pack::Binary(gz.finish().unwrap()),
            Pack::Map(vec![(Pack::from("compressed"), Pack::from("gzip")), (Pack::from("chunk"), Pack::from("c2"))]),
        ]);
        let got = message(compressed, 0).unwrap();
        assert_eq!(got.records.iter().map(|r| r.body.as_str()).collect::<Vec<_>>(), ["packed 1", "packed 2"]);
        assert_eq!(got.chunk.as_deref(), Some("c2"));
        assert!(message(Pack::from(3), 0).unwrap_err().contains("an array"));
    }

    #[test]
    fn a_stream_is_split_into_whole_messages() {
        let one = pack(&Pack::Array(vec![Pack::from("t"), Pack::from(1), record("a")]));
        let bytes = [one.clone(), one.clone()].concat();
        let (_, used) = next_value(&bytes).unwrap().unwrap();
        assert_eq!(used, one.len());
        assert_eq!(next_value(&bytes[..one.len() - 1]).unwrap(), None, "incomplete");
        assert_eq!(next_value(&[0xd9]).unwrap(), None, "a str8 without its length yet");
        let deep: Vec<u8> = std::iter::repeat_n(0x91u8, 100_000).collect();
        assert!(next_value(&deep).is_err(), "too deep");
    }
}
