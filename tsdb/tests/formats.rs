//! Every on-disk format version the time-series store reads has a fixture
//! in `tests/fixtures/`, and this test opens each one and checks its
//! samples: a change that stops old files from opening, or that changes
//! what the current version writes, fails here and has to be made on
//! purpose (a version bump and a new fixture, the old one kept).
//!
//! - `metrics-v2/`: a store directory with one block of format 2
//!   ([`BLOCK_FORMAT_VERSION`]) and a head WAL of format 2
//!   ([`HEAD_WAL_FORMAT_VERSION`]) holding samples after the block,
//!   a staleness marker among them.
//! - `block-v1/`: a store directory with one block of format 1 (labels as
//!   strings per series, fixed-width chunk headers, version 1 chunks),
//!   written by this file's `write_block_v1` after the layout the block
//!   reader documents.
//!
//! After a deliberate format change (with its version bump), write the
//! current version's fixture with
//!
//! ```text
//! SIGHTLINE_REGENERATE_FIXTURES=1 cargo test -p sightline-tsdb --test formats
//! ```

use std::path::{Path, PathBuf};

use sightline_tsdb::{
    BLOCK_FORMAT_VERSION, HEAD_WAL_FORMAT_VERSION, LabelMatcher, Labels, METRIC_NAME,
    TimeSeriesStore,
};

/// Prometheus' staleness marker.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// 2023-11-14T22:13:20Z in milliseconds.
const T0_MS: i64 = 1_700_000_000_000;

const STEP_MS: i64 = 15_000;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn regenerating() -> bool {
    std::env::var_os("SIGHTLINE_REGENERATE_FIXTURES").is_some()
}

fn requests(code: &str) -> Labels {
    Labels::new([
        (METRIC_NAME, "http_requests_total"),
        ("job", "api"),
        ("code", code),
    ])
}

/// Samples of each series: `(labels, [(timestamp, value bits)])`, the first
/// `BLOCK_SAMPLES` of each in the block, the rest in the head.
fn samples() -> Vec<(Labels, Vec<(i64, u64)>)> {
    let ok = (0..12)
        .map(|index| {
            (
                T0_MS + index * STEP_MS,
                (100.0 + index as f64 * 2.5).to_bits(),
            )
        })
        .collect();
    let mut failed: Vec<(i64, u64)> = (0..11)
        .map(|index| (T0_MS + index * STEP_MS, ((index / 4) as f64).to_bits()))
        .collect();
    // The series went away: a staleness marker, kept bit for bit.
    failed.push((T0_MS + 11 * STEP_MS, STALE_NAN));
    vec![(requests("200"), ok), (requests("500"), failed)]
}

const BLOCK_SAMPLES: usize = 8;

/// A store as the current version writes `samples()`: a block cut after
/// the first `BLOCK_SAMPLES` of each series, the rest in the head WAL.
fn write_current(dir: &Path) {
    let mut store = TimeSeriesStore::open(dir).unwrap();
    for range in [0..BLOCK_SAMPLES, BLOCK_SAMPLES..12] {
        for (labels, series) in samples() {
            for (timestamp, value) in &series[range.clone()] {
                store
                    .append(&labels, *timestamp, f64::from_bits(*value))
                    .unwrap();
            }
        }
        store.commit().unwrap();
        if range.start == 0 {
            store.cut_block().unwrap().unwrap();
        }
    }
}

/// Every file under `dir` with its bytes, by relative path.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn visit(root: &Path, dir: &Path, found: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(root, &path, found);
            } else {
                let relative = path.strip_prefix(root).unwrap().to_string_lossy();
                found.push((relative.into_owned(), std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut found = Vec::new();
    visit(dir, dir, &mut found);
    found.sort();
    found
}

/// A fixture copied to a scratch directory: opening a store may write
/// (the WAL is opened for appending), the checked-in files must stay.
fn open_copy(name: &str) -> (tempfile::TempDir, TimeSeriesStore) {
    let source = fixtures().join(name);
    assert!(
        source.is_dir(),
        "no fixture {} (write it with SIGHTLINE_REGENERATE_FIXTURES=1)",
        source.display()
    );
    let scratch = tempfile::tempdir().unwrap();
    for (relative, bytes) in files(&source) {
        let target = scratch.path().join(relative);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, bytes).unwrap();
    }
    let store = TimeSeriesStore::open(scratch.path()).unwrap();
    (scratch, store)
}

/// Every sample of `job="api"`, by series, values as bits.
fn read_all(store: &TimeSeriesStore) -> Vec<(Labels, Vec<(i64, u64)>)> {
    store
        .select(&[LabelMatcher::equal("job", "api")], 0, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|series| {
            let samples = series
                .samples
                .into_iter()
                .map(|(timestamp, value)| (timestamp, value.to_bits()))
                .collect();
            (series.labels, samples)
        })
        .collect()
}

#[test]
fn blocks_and_head_wal_of_format_2_are_read_and_are_what_the_current_version_writes() {
    assert_eq!(
        (BLOCK_FORMAT_VERSION, HEAD_WAL_FORMAT_VERSION),
        (2, 2),
        "a new format needs its fixture"
    );
    let name = "metrics-v2";
    if regenerating() {
        let dir = fixtures().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        write_current(&dir);
    }
    let (_scratch, store) = open_copy(name);
    assert_eq!(store.blocks().len(), 1);
    let meta = store.blocks()[0].meta();
    assert_eq!(meta.version, 2);
    assert_eq!((meta.min_ms, meta.max_ms), (T0_MS, T0_MS + 7 * STEP_MS));
    assert_eq!((meta.num_series, meta.num_samples), (2, 16));
    assert_eq!(
        store.head_range(),
        Some((T0_MS + 8 * STEP_MS, T0_MS + 11 * STEP_MS)),
        "the head comes back from the WAL"
    );
    assert_eq!(read_all(&store), samples());
    // Byte for byte what the current code writes.
    let written = tempfile::tempdir().unwrap();
    write_current(written.path());
    assert_eq!(
        files(written.path()),
        files(&fixtures().join(name)),
        "the block or head WAL format differs from its fixture: bump its version and add a fixture"
    );
}

/// Bits, most significant first, as the chunk encoder writes them.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    used: u32,
}

impl Bits {
    fn push(&mut self, value: u64, count: u32) {
        for bit in (0..count).rev() {
            if self.used.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if (value >> bit) & 1 == 1 {
                *self.bytes.last_mut().unwrap() |= 0x80 >> (self.used % 8);
            }
            self.used += 1;
        }
    }
}

/// A version 1 chunk of samples `STEP_MS` apart with one value: the first
/// sample whole, the second a delta of delta in the 20-bit window (prefix
/// `11110`) and an unchanged value (`0`), then `0 0` per sample.
fn chunk_v1(first_ms: i64, count: u16, value: f64) -> Vec<u8> {
    let mut bits = Bits::default();
    bits.push(first_ms as u64, 64);
    bits.push(value.to_bits(), 64);
    for index in 1..count {
        if index == 1 {
            bits.push(0b11110, 5);
            bits.push(STEP_MS as u64, 20);
        } else {
            bits.push(0, 1);
        }
        bits.push(0, 1);
    }
    bits.bytes
}

/// A format 1 block: `series.bin` is magic `SLTSDB01`, then per series its
/// labels (u32 count, u32-length strings) and chunks (u32 count, then
/// `first_ms: i64, last_ms: i64, count: u16, len: u32, bytes`), then a
/// crc32, all little-endian; `meta.json` says version 1.
fn write_block_v1(dir: &Path) {
    let series = [(requests("200"), 12u16, 7.0), (requests("500"), 5u16, 0.5)];
    let max_ms = T0_MS + 11 * STEP_MS;
    let block = dir.join(format!("blocks/{T0_MS:020}-{max_ms:020}"));
    std::fs::create_dir_all(&block).unwrap();
    let mut data = b"SLTSDB01".to_vec();
    let put_string = |data: &mut Vec<u8>, text: &str| {
        data.extend_from_slice(&(text.len() as u32).to_le_bytes());
        data.extend_from_slice(text.as_bytes());
    };
    let mut num_samples = 0;
    for (labels, count, value) in &series {
        data.extend_from_slice(&(labels.len() as u32).to_le_bytes());
        for (name, value) in labels.iter() {
            put_string(&mut data, name);
            put_string(&mut data, value);
        }
        let chunk = chunk_v1(T0_MS, *count, *value);
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(&T0_MS.to_le_bytes());
        data.extend_from_slice(&(T0_MS + i64::from(*count - 1) * STEP_MS).to_le_bytes());
        data.extend_from_slice(&count.to_le_bytes());
        data.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        data.extend_from_slice(&chunk);
        num_samples += u64::from(*count);
    }
    let checksum = crc32fast::hash(&data);
    data.extend_from_slice(&checksum.to_le_bytes());
    std::fs::write(block.join("series.bin"), data).unwrap();
    std::fs::write(
        block.join("meta.json"),
        format!(
            r#"{{"version": 1, "min_ms": {T0_MS}, "max_ms": {max_ms}, "num_series": 2, "num_samples": {num_samples}}}"#
        ),
    )
    .unwrap();
}

#[test]
fn blocks_of_format_1_are_still_read() {
    let name = "block-v1";
    if regenerating() && !fixtures().join(name).exists() {
        write_block_v1(&fixtures().join(name));
    }
    let (_scratch, store) = open_copy(name);
    assert_eq!(store.blocks().len(), 1);
    assert_eq!(store.blocks()[0].meta().version, 1);
    let expected = |count: i64, value: f64| -> Vec<(i64, u64)> {
        (0..count)
            .map(|index| (T0_MS + index * STEP_MS, value.to_bits()))
            .collect()
    };
    assert_eq!(
        read_all(&store),
        [
            (requests("200"), expected(12, 7.0)),
            (requests("500"), expected(5, 0.5))
        ]
    );
}
