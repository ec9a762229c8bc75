//! Labelled statistics counters kept in the segment, readable by any process.
//!
//! Each counter has one writer (the producer or the consumer) and its own 128-byte
//! line, so counting never contends. Writers keep the running value in their handle
//! and *store* it once per publish or release (no read-modify-write), which costs one
//! L1 store per batch. Writers store with `Release` and readers load with `Acquire`,
//! consumer side first, so that a snapshot never shows more consumed than produced
//! (see `read_values`); each value is monotonic on its own.

use crate::layout::{Header, Line, STAT_SLOTS, StatSlot};
use crate::sync::{AtomicU64, Ordering};

/// The counters of a spsc ring, in slot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Records committed by the producer.
    TotalProduced = 0,
    /// Records released by the consumer.
    TotalConsumed = 1,
    /// Times a producer found the ring full.
    ProducerBlocks = 2,
    /// Times a consumer found the ring empty.
    ConsumerBlocks = 3,
    /// Payload bytes committed.
    BytesProduced = 4,
    /// Payload bytes released.
    BytesConsumed = 5,
    /// Times the producer slept on the futex waiting for space.
    ProducerSleeps = 6,
    /// Times the consumer slept on the futex waiting for data.
    ConsumerSleeps = 7,
    /// Futex wakes the producer issued (the consumer was asleep).
    ProducerWakes = 8,
    /// Futex wakes the consumer issued (the producer was asleep).
    ConsumerWakes = 9,
    /// Producer sleeps that timed out although space had been freed, and whose waker went on
    /// without waking it: lost wake-ups (must stay 0; a stalled or killed waker is not one).
    ProducerMissedWakes = 10,
    /// Consumer sleeps that timed out although data had arrived, and whose waker went on
    /// without waking it: lost wake-ups (must stay 0; a stalled or killed waker is not one).
    ConsumerMissedWakes = 11,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 12] = [
        Counter::TotalProduced,
        Counter::TotalConsumed,
        Counter::ProducerBlocks,
        Counter::ConsumerBlocks,
        Counter::BytesProduced,
        Counter::BytesConsumed,
        Counter::ProducerSleeps,
        Counter::ConsumerSleeps,
        Counter::ProducerWakes,
        Counter::ConsumerWakes,
        Counter::ProducerMissedWakes,
        Counter::ConsumerMissedWakes,
    ];

    /// The label stored in the segment (and used in JSON and Prometheus output).
    pub const fn label(self) -> &'static str {
        match self {
            Counter::TotalProduced => "total_produced",
            Counter::TotalConsumed => "total_consumed",
            Counter::ProducerBlocks => "producer_blocks",
            Counter::ConsumerBlocks => "consumer_blocks",
            Counter::BytesProduced => "bytes_produced",
            Counter::BytesConsumed => "bytes_consumed",
            Counter::ProducerSleeps => "producer_sleeps",
            Counter::ConsumerSleeps => "consumer_sleeps",
            Counter::ProducerWakes => "producer_wakes",
            Counter::ConsumerWakes => "consumer_wakes",
            Counter::ProducerMissedWakes => "producer_missed_wakes",
            Counter::ConsumerMissedWakes => "consumer_missed_wakes",
        }
    }

    /// Its slot index.
    pub const fn slot(self) -> usize {
        self as usize
    }

    /// The counters the producer writes.
    pub const PRODUCER_SIDE: [Counter; 6] = [
        Counter::TotalProduced,
        Counter::BytesProduced,
        Counter::ProducerBlocks,
        Counter::ProducerSleeps,
        Counter::ProducerWakes,
        Counter::ProducerMissedWakes,
    ];

    /// The counters the consumer writes.
    pub const CONSUMER_SIDE: [Counter; 6] = [
        Counter::TotalConsumed,
        Counter::BytesConsumed,
        Counter::ConsumerBlocks,
        Counter::ConsumerSleeps,
        Counter::ConsumerWakes,
        Counter::ConsumerMissedWakes,
    ];

    /// Whether the consumer writes it (it is in [`Counter::CONSUMER_SIDE`]).
    pub const fn is_consumer_side(self) -> bool {
        let mut i = 0;
        while i < Counter::CONSUMER_SIDE.len() {
            if Counter::CONSUMER_SIDE[i] as usize == self as usize {
                return true;
            }
            i += 1;
        }
        false
    }
}

const _: () = assert!(Counter::ALL.len() <= STAT_SLOTS);

/// Writes the labels of every counter; the creator calls it before publishing the version.
pub(crate) fn write_labels(header: &Header) {
    for counter in Counter::ALL {
        let slot = &header.stats[counter.slot()].0;
        let mut bytes = [0u8; 32];
        let label = counter.label().as_bytes();
        bytes[..label.len()].copy_from_slice(label);
        for (word, chunk) in slot.label.iter().zip(bytes.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            // Relaxed: published by the Release store of the layout version.
            word.store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        slot.in_use.store(1, Ordering::Relaxed);
    }
}

/// Reads a label from the segment: printable ASCII up to the first NUL, else `None`.
pub(crate) fn read_label(slot: &StatSlot) -> Option<String> {
    let mut bytes = [0u8; 32];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(slot.label.iter()) {
        chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = &bytes[..end];
    if text.is_empty() || !text.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some(String::from_utf8_lossy(text).into_owned())
}

/// The counter atomics a ring handle writes.
#[derive(Clone, Copy)]
pub(crate) struct CounterCells<'a> {
    slots: &'a [Line<StatSlot>; STAT_SLOTS],
}

impl<'a> CounterCells<'a> {
    pub(crate) fn new(slots: &'a [Line<StatSlot>; STAT_SLOTS]) -> Self {
        CounterCells { slots }
    }

    pub(crate) fn cell(&self, c: Counter) -> &'a AtomicU64 {
        &self.slots[c.slot()].0.value
    }

    pub(crate) fn load(&self, c: Counter) -> u64 {
        // Relaxed: a counter is a monotonic value with one writer; no data depends on it.
        self.cell(c).load(Ordering::Relaxed)
    }
}

/// Every counter's value, each read once, the consumer's side first.
///
/// A record is counted as produced before the producer's cursor store publishes it, and
/// as consumed (with a Release store) only after the consumer has seen that cursor. So a
/// consumed total loaded with Acquire was stored after a produced total at least as
/// large, and the produced total loaded next is at least that: a reader never sees more
/// consumed than produced, on any CPU (the loom model `stats_never_show_more_consumed_than_produced`).
pub(crate) fn read_values(slots: &[Line<StatSlot>; STAT_SLOTS]) -> [u64; STAT_SLOTS] {
    let consumer_side = |slot: usize| Counter::ALL.get(slot).is_some_and(|c| c.is_consumer_side());
    let mut values = [0; STAT_SLOTS];
    for pass_consumer in [true, false] {
        for (slot, line) in slots.iter().enumerate() {
            if consumer_side(slot) == pass_consumer {
                // Acquire: pairs with the Release store in `RingRefs::store_counter`, so
                // the producer-side loads of the second pass see what that writer saw.
                values[slot] = line.0.value.load(Ordering::Acquire);
            }
        }
    }
    values
}

/// A labelled counter as read from a segment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LabelledCounter {
    /// The label found in the segment.
    pub label: String,
    /// Its value.
    pub value: u64,
}

/// A consistent-enough view of a ring's statistics, taken without writing to the segment.
///
/// Counters are each monotonic; gauges are clamped so that `used_bytes <= capacity`
/// even while both sides run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Ring data bytes.
    pub capacity: u64,
    /// Producer's committed position.
    pub write_cursor: u64,
    /// Consumer's released position.
    pub read_cursor: u64,
    /// Bytes committed but not yet released (frames and padding included).
    pub used_bytes: u64,
    /// Records committed but not yet released (`total_produced - total_consumed`).
    pub records_in_flight: u64,
    /// Records committed by the producer.
    pub total_produced: u64,
    /// Records released by the consumer.
    pub total_consumed: u64,
    /// Times a producer found the ring full.
    pub producer_blocks: u64,
    /// Times a consumer found the ring empty.
    pub consumer_blocks: u64,
    /// Payload bytes committed.
    pub bytes_produced: u64,
    /// Payload bytes released.
    pub bytes_consumed: u64,
    /// Every counter in the segment with the label stored there, in slot order.
    pub counters: Vec<LabelledCounter>,
}

impl StatsSnapshot {
    /// Reads the statistics of a ring whose capacity the caller has validated. Every
    /// counter is read once, and the typed fields and the labelled list come from the
    /// same reads.
    pub(crate) fn read(header: &Header, capacity: u64) -> Self {
        let values = read_values(&header.stats);
        let value = |c: Counter| values[c.slot()];
        // Acquire: pairs with the Release stores of the cursors; reading the read cursor
        // after the write cursor keeps `used` from exceeding what is really there.
        let write_cursor = header.producer.0.write_cursor.load(Ordering::Acquire);
        let read_cursor = header.cursors[0].0.read_cursor.load(Ordering::Acquire);
        let used_bytes = write_cursor.saturating_sub(read_cursor).min(capacity);
        let counters = header
            .stats
            .iter()
            .zip(values)
            .filter(|(line, _)| line.0.in_use.load(Ordering::Relaxed) == 1)
            .filter_map(|(line, value)| Some(LabelledCounter { label: read_label(&line.0)?, value }))
            .collect();
        StatsSnapshot {
            capacity,
            write_cursor,
            read_cursor,
            used_bytes,
            records_in_flight: value(Counter::TotalProduced).saturating_sub(value(Counter::TotalConsumed)),
            total_produced: value(Counter::TotalProduced),
            total_consumed: value(Counter::TotalConsumed),
            producer_blocks: value(Counter::ProducerBlocks),
            consumer_blocks: value(Counter::ConsumerBlocks),
            bytes_produced: value(Counter::BytesProduced),
            bytes_consumed: value(Counter::BytesConsumed),
            counters,
        }
    }

    /// Replaces the producer-side figures (an mpsc ring's are the sums of its producers'),
    /// in the typed fields and the labelled list alike.
    pub(crate) fn set_producer_side(&mut self, records: u64, bytes: u64, blocks: u64) {
        (self.total_produced, self.bytes_produced, self.producer_blocks) = (records, bytes, blocks);
        self.records_in_flight = records.saturating_sub(self.total_consumed);
        for c in &mut self.counters {
            match c.label.as_str() {
                "total_produced" => c.value = records,
                "bytes_produced" => c.value = bytes,
                "producer_blocks" => c.value = blocks,
                _ => {}
            }
        }
    }

    /// The value of the counter with this label, if the segment has one.
    pub fn get(&self, label: &str) -> Option<u64> {
        self.counters.iter().find(|c| c.label == label).map(|c| c.value)
    }

    /// Fill of the ring in percent.
    pub fn fill_percent(&self) -> f64 {
        if self.capacity == 0 { 0.0 } else { self.used_bytes as f64 * 100.0 / self.capacity as f64 }
    }
}
