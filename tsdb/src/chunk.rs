//! Gorilla-compressed chunks: delta-of-delta timestamps and XOR'd floats,
//! written with our own bit-level codec (no external crate).
//!
//! Layout of a chunk's bytes: the first timestamp and value in 64 bits each,
//! then per sample a delta-of-delta in one of five prefix-coded widths and
//! the value: `0`: same value; `10`: the XOR with the previous value fits
//! the previous leading/trailing zero window; `111` and a 7-bit zigzag
//! step: both values are whole numbers and adding the step gives exactly the
//! new bits (a counter's increment); `110`: a new window, 5 bits leading
//! zeros, 6 bits length, then the meaningful bits. Values keep their exact
//! bit pattern, so the staleness NaN survives. Version 1 chunks (no integer
//! step, wider jitter widths) are still decoded.

/// Appends bits to a byte vector, most significant bit first.
#[derive(Debug, Clone, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0 means a fresh byte is needed).
    used_in_last: u8,
}

impl BitWriter {
    fn write_bit(&mut self, bit: bool) {
        self.write_bits(u64::from(bit), 1);
    }

    /// Writes the low `count` bits of `value` (count <= 64), a byte's worth
    /// at a time.
    fn write_bits(&mut self, value: u64, count: u8) {
        let mut remaining = count;
        while remaining > 0 {
            if self.used_in_last == 0 {
                self.bytes.push(0);
            }
            let free = 8 - self.used_in_last;
            let take = free.min(remaining);
            let part = ((value >> (remaining - take)) & ((1u64 << take) - 1)) as u8;
            if let Some(last) = self.bytes.last_mut() {
                *last |= part << (free - take);
            }
            self.used_in_last = (self.used_in_last + take) % 8;
            remaining -= take;
        }
    }
}

/// Reads bits written by [`BitWriter`].
struct BitReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl BitReader<'_> {
    fn read_bit(&mut self) -> Option<bool> {
        Some(self.read_bits(1)? == 1)
    }

    /// Reads `count` bits (count <= 64), a byte's worth at a time.
    fn read_bits(&mut self, count: u8) -> Option<u64> {
        let mut value = 0u64;
        let mut remaining = count;
        while remaining > 0 {
            let byte = *self.bytes.get(self.position / 8)?;
            let available = 8 - (self.position % 8) as u8;
            let take = available.min(remaining);
            let part = (byte >> (available - take)) & (((1u16 << take) - 1) as u8);
            value = (value << take) | u64::from(part);
            self.position += usize::from(take);
            remaining -= take;
        }
        Some(value)
    }
}

/// (prefix bits, prefix length, payload bits) of the delta-of-delta widths.
/// The narrowest one holds the few milliseconds of a scrape's jitter.
const DOD_WIDTHS: [(u64, u8, u8); 4] = [
    (0b10, 2, 5),
    (0b110, 3, 9),
    (0b1110, 4, 13),
    (0b11110, 5, 20),
];

/// What differs between chunk versions.
struct Format {
    widths: [(u64, u8, u8); 4],
    /// Whether `11` is followed by a bit choosing the integer step (`1`)
    /// or a new XOR window (`0`).
    integer_mode: bool,
}

const CURRENT: Format = Format {
    widths: DOD_WIDTHS,
    integer_mode: true,
};

/// Version 1 chunks (blocks of format 1), read only.
const V1: Format = Format {
    widths: [
        (0b10, 2, 7),
        (0b110, 3, 9),
        (0b1110, 4, 12),
        (0b11110, 5, 20),
    ],
    integer_mode: false,
};

/// Bits of the zigzag step of the integer mode.
const INTEGER_DELTA_BITS: u8 = 7;

/// The zigzag step from `previous` to `current` when both are whole numbers
/// a small step apart and adding the step to `previous` gives exactly
/// `current`'s bits: a counter's usual increment, cheaper than its XOR.
fn integer_delta(previous_bits: u64, current_bits: u64) -> Option<u64> {
    let (previous, current) = (f64::from_bits(previous_bits), f64::from_bits(current_bits));
    if previous.fract() != 0.0 || current.fract() != 0.0 || previous.abs() >= 9e15 {
        return None;
    }
    let step = current - previous;
    if step.abs() >= f64::from(1u32 << (INTEGER_DELTA_BITS - 1)) {
        return None;
    }
    let step = step as i64;
    let zigzag = ((step << 1) ^ (step >> 63)) as u64;
    (zigzag < 1 << INTEGER_DELTA_BITS && apply_integer_delta(previous_bits, zigzag) == current_bits)
        .then_some(zigzag)
}

fn apply_integer_delta(previous_bits: u64, zigzag: u64) -> u64 {
    let step = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
    (f64::from_bits(previous_bits) + step as f64).to_bits()
}

/// An append-only compressed chunk.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkEncoder {
    writer: BitWriter,
    count: u16,
    first_ms: i64,
    last_ms: i64,
    last_delta: i64,
    last_value_bits: u64,
    leading: u8,
    trailing: u8,
}

impl ChunkEncoder {
    pub(crate) fn append(&mut self, timestamp_ms: i64, value: f64) {
        self.append_with(&CURRENT, timestamp_ms, value);
    }

    fn append_with(&mut self, format: &Format, timestamp_ms: i64, value: f64) {
        let bits = value.to_bits();
        match self.count {
            0 => {
                self.writer.write_bits(timestamp_ms as u64, 64);
                self.writer.write_bits(bits, 64);
                self.first_ms = timestamp_ms;
                self.leading = u8::MAX;
            }
            _ => {
                let delta = timestamp_ms.wrapping_sub(self.last_ms);
                let delta_of_delta = delta.wrapping_sub(self.last_delta);
                self.write_delta_of_delta(&format.widths, delta_of_delta);
                self.write_value(format, bits);
                self.last_delta = delta;
            }
        }
        self.last_ms = timestamp_ms;
        self.last_value_bits = bits;
        self.count += 1;
    }

    fn write_delta_of_delta(&mut self, widths: &[(u64, u8, u8); 4], delta_of_delta: i64) {
        if delta_of_delta == 0 {
            self.writer.write_bit(false);
            return;
        }
        for &(prefix, prefix_length, payload) in widths {
            let limit = 1i64 << (payload - 1);
            if delta_of_delta >= -limit && delta_of_delta < limit {
                self.writer.write_bits(prefix, prefix_length);
                self.writer
                    .write_bits(delta_of_delta as u64 & ((1u64 << payload) - 1), payload);
                return;
            }
        }
        self.writer.write_bits(0b11111, 5);
        self.writer.write_bits(delta_of_delta as u64, 64);
    }

    fn write_value(&mut self, format: &Format, bits: u64) {
        let xor = bits ^ self.last_value_bits;
        if xor == 0 {
            self.writer.write_bit(false);
            return;
        }
        self.writer.write_bit(true);
        let leading = (xor.leading_zeros() as u8).min(31);
        let trailing = xor.trailing_zeros() as u8;
        let window_fits =
            self.leading != u8::MAX && leading >= self.leading && trailing >= self.trailing;
        let window_bits = if window_fits {
            64 - self.leading - self.trailing
        } else {
            0
        };
        let integer = format
            .integer_mode
            .then(|| integer_delta(self.last_value_bits, bits))
            .flatten()
            .filter(|_| !window_fits || window_bits > INTEGER_DELTA_BITS + 1);
        if let (true, None) = (window_fits, integer) {
            self.writer.write_bit(false);
            self.writer.write_bits(xor >> self.trailing, window_bits);
            return;
        }
        self.writer.write_bit(true);
        if let Some(step) = integer {
            self.writer.write_bit(true);
            self.writer.write_bits(step, INTEGER_DELTA_BITS);
            return;
        }
        if format.integer_mode {
            self.writer.write_bit(false);
        }
        self.leading = leading;
        self.trailing = trailing;
        let meaningful = 64 - leading - trailing;
        self.writer.write_bits(u64::from(leading), 5);
        // 64 meaningful bits are written as 0: a length of 0 never occurs
        self.writer.write_bits(u64::from(meaningful % 64), 6);
        self.writer.write_bits(xor >> trailing, meaningful);
    }

    pub(crate) fn count(&self) -> u16 {
        self.count
    }

    pub(crate) fn first_ms(&self) -> i64 {
        self.first_ms
    }

    pub(crate) fn last_ms(&self) -> i64 {
        self.last_ms
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.writer.bytes
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.writer.bytes.capacity()
    }

    /// Encodes samples as a version 1 chunk (for compatibility tests).
    #[cfg(test)]
    pub(crate) fn encode_v1(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut encoder = ChunkEncoder::default();
        for (timestamp_ms, value) in samples {
            encoder.append_with(&V1, *timestamp_ms, *value);
        }
        encoder.writer.bytes
    }

    /// The chunk's bytes, the encoder consumed.
    pub(crate) fn into_bytes(self) -> Box<[u8]> {
        self.writer.bytes.into_boxed_slice()
    }
}

/// Decodes `count` samples from chunk bytes; `None` if the bytes are corrupt.
#[cfg(test)]
pub(crate) fn decode(bytes: &[u8], count: u16) -> Option<Vec<(i64, f64)>> {
    let mut samples = Vec::with_capacity(count as usize);
    decode_each(bytes, count, |timestamp_ms, value| {
        samples.push((timestamp_ms, value))
    })?;
    Some(samples)
}

/// Calls `visit` with each of the `count` samples in chunk bytes, without
/// materialising them; `None` if the bytes are corrupt.
pub(crate) fn decode_each(bytes: &[u8], count: u16, visit: impl FnMut(i64, f64)) -> Option<()> {
    decode_with(&CURRENT, bytes, count, visit)
}

/// Re-encodes the bytes of a version 1 chunk in the current format.
pub(crate) fn transcode_v1(bytes: &[u8], count: u16) -> Option<Box<[u8]>> {
    let mut encoder = ChunkEncoder::default();
    decode_with(&V1, bytes, count, |timestamp_ms, value| {
        encoder.append(timestamp_ms, value)
    })?;
    Some(encoder.writer.bytes.into_boxed_slice())
}

fn decode_with(
    format: &Format,
    bytes: &[u8],
    count: u16,
    mut visit: impl FnMut(i64, f64),
) -> Option<()> {
    let mut reader = BitReader { bytes, position: 0 };
    if count == 0 {
        return Some(());
    }
    let mut timestamp_ms = reader.read_bits(64)? as i64;
    let mut value_bits = reader.read_bits(64)?;
    visit(timestamp_ms, f64::from_bits(value_bits));
    let (mut delta, mut leading, mut trailing) = (0i64, 0u8, 0u8);
    for _ in 1..count {
        let delta_of_delta = read_delta_of_delta(&mut reader, &format.widths)?;
        delta = delta.wrapping_add(delta_of_delta);
        timestamp_ms = timestamp_ms.wrapping_add(delta);
        if reader.read_bit()? {
            if reader.read_bit()? {
                if format.integer_mode && reader.read_bit()? {
                    let zigzag = reader.read_bits(INTEGER_DELTA_BITS)?;
                    value_bits = apply_integer_delta(value_bits, zigzag);
                    visit(timestamp_ms, f64::from_bits(value_bits));
                    continue;
                }
                leading = reader.read_bits(5)? as u8;
                let mut meaningful = reader.read_bits(6)? as u8;
                if meaningful == 0 {
                    meaningful = 64;
                }
                trailing = 64u8.checked_sub(leading + meaningful)?;
            }
            let meaningful = 64u8.checked_sub(leading + trailing)?;
            if meaningful == 0 {
                return None;
            }
            let xor = reader.read_bits(meaningful)? << trailing;
            value_bits ^= xor;
        }
        visit(timestamp_ms, f64::from_bits(value_bits));
    }
    Some(())
}

fn read_delta_of_delta(reader: &mut BitReader<'_>, widths: &[(u64, u8, u8); 4]) -> Option<i64> {
    if !reader.read_bit()? {
        return Some(0);
    }
    let mut prefix_ones = 1;
    for (_, _, payload) in widths {
        let payload = *payload;
        if !reader.read_bit()? {
            let raw = reader.read_bits(payload)?;
            let shift = 64 - u32::from(payload);
            return Some(((raw << shift) as i64) >> shift);
        }
        prefix_ones += 1;
        if prefix_ones == 5 {
            break;
        }
    }
    Some(reader.read_bits(64)? as i64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trips_timestamps_and_exact_value_bits() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let samples: Vec<(i64, f64)> = vec![
            (-5, 1.0),
            (15_000, 1.0),
            (30_000, 2.5),
            (45_001, -3.25),
            (45_002, f64::INFINITY),
            (1_000_000, stale),
            (1_000_100, f64::NAN),
            (9_000_000_000, 1e300),
            (9_000_000_001, 0.1),
            (9_000_060_001, 0.30000000000000004),
        ];
        let mut encoder = ChunkEncoder::default();
        for (timestamp_ms, value) in &samples {
            encoder.append(*timestamp_ms, *value);
        }
        let decoded = decode(encoder.bytes(), encoder.count()).unwrap();
        assert_eq!(decoded.len(), samples.len());
        for ((expected_ms, expected), (actual_ms, actual)) in samples.iter().zip(&decoded) {
            assert_eq!(expected_ms, actual_ms);
            assert_eq!(expected.to_bits(), actual.to_bits());
        }
    }

    fn round_trip(samples: &[(i64, f64)]) -> Vec<(i64, u64)> {
        let mut encoder = ChunkEncoder::default();
        for (timestamp_ms, value) in samples {
            encoder.append(*timestamp_ms, *value);
        }
        assert_eq!(usize::from(encoder.count()), samples.len());
        decode(encoder.bytes(), encoder.count())
            .expect("a chunk we wrote decodes")
            .into_iter()
            .map(|(timestamp_ms, value)| (timestamp_ms, value.to_bits()))
            .collect()
    }

    /// Values that stress the XOR coding: repeats, the staleness NaN, other
    /// NaNs, infinities, signed zeros, subnormals and arbitrary bit patterns.
    fn value_strategy() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::from_bits(0x7ff0_0000_0000_0002)),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
            Just(-0.0),
            Just(f64::MIN_POSITIVE / 2.0),
            (0u32..1000).prop_map(f64::from),
            any::<u64>().prop_map(f64::from_bits),
            any::<f64>(),
        ]
    }

    proptest! {
        #[test]
        fn any_samples_round_trip_bit_exact(
            start in any::<i64>(),
            steps in proptest::collection::vec((any::<i64>(), value_strategy()), 1..200),
        ) {
            let mut timestamp_ms = start;
            let samples: Vec<(i64, f64)> = steps
                .iter()
                .map(|(step, value)| {
                    // mostly scrape-like steps, sometimes any jump (wrapping)
                    timestamp_ms = match step % 4 {
                        0 => timestamp_ms.wrapping_add(*step),
                        _ => timestamp_ms.wrapping_add(15_000 + step % 7),
                    };
                    (timestamp_ms, *value)
                })
                .collect();
            let expected: Vec<(i64, u64)> = samples
                .iter()
                .map(|(timestamp_ms, value)| (*timestamp_ms, value.to_bits()))
                .collect();
            prop_assert_eq!(round_trip(&samples), expected);
        }

        #[test]
        fn truncated_chunks_fail_cleanly(
            values in proptest::collection::vec(value_strategy(), 2..50),
            cut in 1usize..64,
        ) {
            let mut encoder = ChunkEncoder::default();
            for (index, value) in values.iter().enumerate() {
                encoder.append(index as i64 * 15_000 + (index as i64 % 3), *value);
            }
            let bytes = encoder.bytes();
            let kept = bytes.len().saturating_sub(cut);
            // either an error or fewer bits than needed: never a panic
            let _ = decode(&bytes[..kept], encoder.count());
            prop_assert!(decode(&bytes[..kept.min(8)], encoder.count()).is_none());
        }
    }

    #[test]
    fn version_1_chunks_are_transcoded_to_the_same_samples() {
        let samples: Vec<(i64, f64)> = (0..120)
            .map(|index: i64| {
                (
                    index * 15_000 + [0, 3, -2, 40][index as usize % 4],
                    index as f64,
                )
            })
            .collect();
        let v1 = ChunkEncoder::encode_v1(&samples);
        let transcoded = transcode_v1(&v1, 120).unwrap();
        assert_ne!(&v1[..], &transcoded[..], "the widths differ for jitter");
        let decoded = decode(&transcoded, 120).unwrap();
        assert_eq!(decoded, samples);
    }

    #[test]
    fn counter_steps_use_the_integer_mode_and_stay_exact() {
        let mut value: f64 = 1_000.0;
        let mut samples = Vec::new();
        for index in 0..120i64 {
            // steps up and down, zero, the largest step and one too large
            value += [3.0, 0.0, 9.0, -2.0, 63.0, 64.0, -64.0, 1.0][index as usize % 8];
            samples.push((index * 15_000, value));
        }
        samples.push((120 * 15_000, -0.0));
        samples.push((121 * 15_000, 0.0));
        samples.push((122 * 15_000, 9.1e15));
        samples.push((123 * 15_000, 9.1e15 + 2.0));
        let expected: Vec<(i64, u64)> = samples
            .iter()
            .map(|(timestamp_ms, value)| (*timestamp_ms, value.to_bits()))
            .collect();
        assert_eq!(round_trip(&samples), expected);

        let mut encoder = ChunkEncoder::default();
        let mut counter = 52_000.0;
        for index in 0..120i64 {
            counter += (index % 10) as f64;
            encoder.append(index * 15_000, counter);
        }
        let bytes_per_sample = encoder.bytes().len() as f64 / 120.0;
        // 1 bit of timestamp, 3 + 7 bits of step, 16 bytes of first sample
        assert!(bytes_per_sample < 1.6, "{bytes_per_sample}");
    }

    #[test]
    fn regular_scrapes_compress_below_two_bytes_per_sample() {
        let mut encoder = ChunkEncoder::default();
        for index in 0..120i64 {
            encoder.append(index * 15_000, (index * 3) as f64);
        }
        let bytes_per_sample = encoder.bytes().len() as f64 / 120.0;
        assert!(bytes_per_sample < 2.0, "{bytes_per_sample}");
    }
}
