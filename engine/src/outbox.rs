//! Per-connection outboxes and encode-once fan-out.
//!
//! A message is encoded once into a [`SharedFrame`] (`Arc<[u8]>`); every
//! recipient's [`Outbox`] holds a reference to that one buffer, so fanning a
//! message out to N connections costs N refcount increments and no copies.
//!
//! An [`Outbox`] is a FIFO of buffers: shared frames, plus owned tail buffers
//! into which small per-connection frames ([`Outbox::push_copy`], e.g. acks)
//! are coalesced. Whatever one event-loop pass queued goes out in one
//! `writev` ([`Outbox::io_slices`]); [`Outbox::consume`] then advances past
//! the bytes written, including partway through a buffer.
//!
//! # Backpressure
//!
//! Every outbox counts its unwritten bytes against [`OutboxLimits`]:
//!
//! - reaching `high_water` ([`Push::AboveHigh`]) tells the node to stop
//!   reading from the producer until the outbox drains to `low_water`
//!   ([`Outbox::below_low_water`]);
//! - a push that would take it past `max_bytes` is refused ([`Push::Overflow`])
//!   and nothing is queued: the consumer is too slow, and the node closes it
//!   (the client resyncs from its cursors). Memory per connection is thus
//!   bounded by `max_bytes` of payload.
//!
//! # Fan-out
//!
//! [`FanOut`] maps connection ids to outboxes. [`FanOut::publish`] pushes one
//! frame to a recipient list and reports who is paused or overflowed;
//! [`FanOut::take_ready`] lists each connection with something to flush once,
//! so the event loop writes to each socket once per pass.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::IoSlice;
use std::sync::Arc;

/// An encoded frame shared by every outbox it is queued in.
pub type SharedFrame = Arc<[u8]>;

/// Owned tail buffers grow to at most this before a new one is started, so a
/// copy never reallocates a large buffer.
const TAIL_CAP: usize = 16 * 1024;
/// Initial capacity of a tail buffer: room for a run of acks.
const TAIL_MIN: usize = 256;
/// Buffer slots an emptied outbox keeps; a burst's larger queue is freed, so
/// idle connections stay small.
const SPARE_SLOTS: usize = 32;

/// Byte limits of one outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Reading may resume once the queue is at or below this many bytes.
    pub low_water: usize,
    /// Pushing the queue to this many bytes or more signals [`Push::AboveHigh`].
    pub high_water: usize,
    /// The queue never holds more than this many bytes; a push past it is refused.
    pub max_bytes: usize,
}

impl Default for OutboxLimits {
    /// 64 KiB low water, 1 MiB high water, 8 MiB hard limit.
    fn default() -> Self {
        Self {
            low_water: 64 * 1024,
            high_water: 1024 * 1024,
            max_bytes: 8 * 1024 * 1024,
        }
    }
}

impl OutboxLimits {
    /// Checks `low_water <= high_water <= max_bytes`.
    pub fn validate(&self) -> Result<(), OutboxError> {
        if self.low_water > self.high_water {
            return Err(OutboxError::LowAboveHigh {
                low_water: self.low_water,
                high_water: self.high_water,
            });
        }
        if self.high_water > self.max_bytes {
            return Err(OutboxError::HighAboveMax {
                high_water: self.high_water,
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }
}

/// Invalid [`OutboxLimits`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboxError {
    /// `low_water` exceeds `high_water`.
    LowAboveHigh {
        /// The configured low water mark.
        low_water: usize,
        /// The configured high water mark.
        high_water: usize,
    },
    /// `high_water` exceeds `max_bytes`.
    HighAboveMax {
        /// The configured high water mark.
        high_water: usize,
        /// The configured hard limit.
        max_bytes: usize,
    },
}

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LowAboveHigh {
                low_water,
                high_water,
            } => write!(
                f,
                "outbox low_water ({low_water}) must not exceed high_water ({high_water})"
            ),
            Self::HighAboveMax {
                high_water,
                max_bytes,
            } => write!(
                f,
                "outbox high_water ({high_water}) must not exceed max_bytes ({max_bytes})"
            ),
        }
    }
}

impl std::error::Error for OutboxError {}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued; the queue is below `high_water`.
    Queued,
    /// Queued, and the queue is now at or above `high_water`: pause reading.
    AboveHigh,
    /// Not queued: the queue would exceed `max_bytes`. Close the connection.
    Overflow,
}

enum Chunk {
    Shared(SharedFrame),
    Owned(Vec<u8>),
}

impl Chunk {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Shared(frame) => frame,
            Self::Owned(buf) => buf,
        }
    }
}

/// The queue of unwritten bytes of one connection. See the
/// [module docs](self).
pub struct Outbox {
    limits: OutboxLimits,
    /// Never holds an empty buffer.
    chunks: VecDeque<Chunk>,
    /// Bytes of the front buffer already written.
    head: usize,
    queued: usize,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("limits", &self.limits)
            .field("buffers", &self.chunks.len())
            .field("queued_bytes", &self.queued)
            .finish()
    }
}

impl Outbox {
    /// An empty outbox. `limits` are used as given; check them once at
    /// start-up with [`OutboxLimits::validate`].
    pub fn new(limits: OutboxLimits) -> Self {
        Self {
            limits,
            chunks: VecDeque::new(),
            head: 0,
            queued: 0,
        }
    }

    /// Queues a shared frame without copying it. An empty frame queues nothing.
    pub fn push(&mut self, frame: SharedFrame) -> Push {
        let Some(queued) = self.admit(frame.len()) else {
            return Push::Overflow;
        };
        if !frame.is_empty() {
            self.chunks.push_back(Chunk::Shared(frame));
        }
        self.queued = queued;
        self.status()
    }

    /// Queues a copy of `bytes`, appending it to the owned tail buffer when the
    /// last queued buffer is one, so runs of small frames (acks) become one
    /// buffer. The limit is checked before anything is allocated.
    pub fn push_copy(&mut self, bytes: &[u8]) -> Push {
        let Some(queued) = self.admit(bytes.len()) else {
            return Push::Overflow;
        };
        if !bytes.is_empty() {
            match self.chunks.back_mut() {
                Some(Chunk::Owned(tail)) if tail.len() + bytes.len() <= TAIL_CAP => {
                    tail.extend_from_slice(bytes);
                }
                _ => {
                    let mut tail = Vec::with_capacity(bytes.len().max(TAIL_MIN));
                    tail.extend_from_slice(bytes);
                    self.chunks.push_back(Chunk::Owned(tail));
                }
            }
        }
        self.queued = queued;
        self.status()
    }

    /// Unwritten bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Buffers queued: the number of slices a full [`io_slices`](Self::io_slices)
    /// returns. Coalesced copies count as one buffer.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Whether the queue is at or below `low_water`: a paused producer may resume.
    pub fn below_low_water(&self) -> bool {
        self.queued <= self.limits.low_water
    }

    /// The first `max` queued buffers, in order, the first one starting at the
    /// first unwritten byte: ready for `writev` (keep `max` at most `IOV_MAX`,
    /// 1024 on Linux). Follow with [`consume`](Self::consume) of the bytes
    /// actually written.
    pub fn io_slices(&self, max: usize) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(max.min(self.chunks.len()));
        for (i, chunk) in self.chunks.iter().take(max).enumerate() {
            let bytes = chunk.bytes();
            slices.push(IoSlice::new(if i == 0 {
                &bytes[self.head..]
            } else {
                bytes
            }));
        }
        slices
    }

    /// Marks the next `n` bytes as written, releasing every buffer fully
    /// written; `n` may end inside a buffer. `n` past the end empties the outbox.
    pub fn consume(&mut self, n: usize) {
        let mut n = n.min(self.queued);
        self.queued -= n;
        while let Some(front) = self.chunks.front() {
            let left = front.bytes().len() - self.head;
            if n < left {
                self.head += n;
                return;
            }
            n -= left;
            self.head = 0;
            self.chunks.pop_front();
        }
        // Only reached once everything is written.
        self.chunks.shrink_to(SPARE_SLOTS);
    }

    /// Appends every queued byte, in order, to `out` and empties the outbox.
    /// Returns the number of bytes appended.
    pub fn drain_into(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.queued;
        out.reserve(n);
        for (i, chunk) in self.chunks.drain(..).enumerate() {
            let bytes = chunk.bytes();
            out.extend_from_slice(if i == 0 { &bytes[self.head..] } else { bytes });
        }
        self.chunks.shrink_to(SPARE_SLOTS);
        self.head = 0;
        self.queued = 0;
        n
    }

    /// The limits in force.
    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// Replaces the limits for later pushes; bytes already queued stay queued.
    pub fn set_limits(&mut self, limits: OutboxLimits) {
        self.limits = limits;
    }

    /// The queue size after adding `len` bytes, if that stays within `max_bytes`.
    #[inline]
    fn admit(&self, len: usize) -> Option<usize> {
        self.queued
            .checked_add(len)
            .filter(|&n| n <= self.limits.max_bytes)
    }

    #[inline]
    fn status(&self) -> Push {
        if self.queued >= self.limits.high_water {
            Push::AboveHigh
        } else {
            Push::Queued
        }
    }
}

/// Outcome of [`FanOut::publish`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Recipients the frame was queued for.
    pub queued: usize,
    /// Recipients now at or above their high water mark (frame queued): pause
    /// what feeds them.
    pub paused: Vec<u64>,
    /// Recipients whose outbox was full (frame not queued): close them.
    pub overflowed: Vec<u64>,
    /// Recipients not registered.
    pub unknown: usize,
}

/// Hasher for connection ids: one folded 64x64->128 multiply. Ids are assigned
/// by the node, not chosen by peers, so no flooding resistance is needed.
#[derive(Clone, Copy, Default)]
struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        let m = u128::from(self.0 ^ n) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

struct Slot {
    outbox: Outbox,
    /// Listed in `FanOut::ready` since the last `take_ready`.
    ready: bool,
}

/// Registry of outboxes by connection id. See the [module docs](self).
#[derive(Default)]
pub struct FanOut {
    slots: HashMap<u64, Slot, BuildHasherDefault<ConnIdHasher>>,
    ready: Vec<u64>,
}

impl fmt::Debug for FanOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOut")
            .field("connections", &self.slots.len())
            .field("pending_ready", &self.ready.len())
            .finish()
    }
}

impl FanOut {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `conn` an empty outbox; false (and no change) if it already has one.
    pub fn register(&mut self, conn: u64, limits: OutboxLimits) -> bool {
        use std::collections::hash_map::Entry;
        match self.slots.entry(conn) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Slot {
                    outbox: Outbox::new(limits),
                    ready: false,
                });
                true
            }
        }
    }

    /// Removes `conn`, returning its outbox with whatever was still queued.
    pub fn unregister(&mut self, conn: u64) -> Option<Outbox> {
        self.slots.remove(&conn).map(|s| s.outbox)
    }

    /// The outbox of `conn`.
    pub fn outbox(&self, conn: u64) -> Option<&Outbox> {
        self.slots.get(&conn).map(|s| &s.outbox)
    }

    /// The outbox of `conn`, mutably (for writing out). Pushes made through it
    /// bypass [`take_ready`](Self::take_ready): queue through
    /// [`publish`](Self::publish) or [`send`](Self::send) to have `conn` listed.
    pub fn outbox_mut(&mut self, conn: u64) -> Option<&mut Outbox> {
        self.slots.get_mut(&conn).map(|s| &mut s.outbox)
    }

    /// Queues `frame` for every recipient: one refcount increment each, no
    /// copy. A recipient listed twice gets the frame twice.
    pub fn publish(&mut self, frame: &SharedFrame, recipients: &[u64]) -> PublishReport {
        let mut report = PublishReport::default();
        for &conn in recipients {
            let Some(slot) = self.slots.get_mut(&conn) else {
                report.unknown += 1;
                continue;
            };
            let was_empty = slot.outbox.is_empty();
            match slot.outbox.push(Arc::clone(frame)) {
                Push::Queued => report.queued += 1,
                Push::AboveHigh => {
                    report.queued += 1;
                    report.paused.push(conn);
                }
                Push::Overflow => report.overflowed.push(conn),
            }
            Self::mark(slot, &mut self.ready, conn, was_empty);
        }
        report
    }

    /// Queues a copy of `bytes` for `conn` (see [`Outbox::push_copy`]); `None`
    /// if `conn` is not registered.
    pub fn send(&mut self, conn: u64, bytes: &[u8]) -> Option<Push> {
        let slot = self.slots.get_mut(&conn)?;
        let was_empty = slot.outbox.is_empty();
        let push = slot.outbox.push_copy(bytes);
        Self::mark(slot, &mut self.ready, conn, was_empty);
        Some(push)
    }

    /// Connections whose outbox went from empty to non-empty since the last call (each once), so the event loop flushes each once per pass.
    ///
    /// Connections emptied or unregistered in the meantime are left out. A
    /// connection handed out and only partly flushed is not listed again while
    /// it stays non-empty: the event loop waits for the socket to be writable.
    pub fn take_ready(&mut self) -> Vec<u64> {
        let mut ready = std::mem::take(&mut self.ready);
        ready.retain(|conn| match self.slots.get_mut(conn) {
            Some(slot) if slot.ready => {
                slot.ready = false;
                !slot.outbox.is_empty()
            }
            _ => false,
        });
        ready
    }

    /// Drains the outbox of `conn` into `out` (see [`Outbox::drain_into`]);
    /// 0 if `conn` is not registered.
    pub fn drain(&mut self, conn: u64, out: &mut Vec<u8>) -> usize {
        self.slots
            .get_mut(&conn)
            .map_or(0, |s| s.outbox.drain_into(out))
    }

    /// Registered connections.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Unwritten bytes over all outboxes (walks every connection).
    pub fn queued_bytes(&self) -> usize {
        self.slots.values().map(|s| s.outbox.queued_bytes()).sum()
    }

    /// Lists `conn` as ready if a push just made its outbox non-empty and it
    /// is not listed yet.
    #[inline]
    fn mark(slot: &mut Slot, ready: &mut Vec<u64>, conn: u64, was_empty: bool) {
        if was_empty && !slot.ready && !slot.outbox.is_empty() {
            slot.ready = true;
            ready.push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(low_water: usize, high_water: usize, max_bytes: usize) -> OutboxLimits {
        OutboxLimits {
            low_water,
            high_water,
            max_bytes,
        }
    }

    fn frame(bytes: &[u8]) -> SharedFrame {
        Arc::from(bytes)
    }

    fn concat(slices: &[IoSlice<'_>]) -> Vec<u8> {
        slices.iter().flat_map(|s| s.iter().copied()).collect()
    }

    fn contents(outbox: &Outbox) -> Vec<u8> {
        concat(&outbox.io_slices(usize::MAX))
    }

    #[test]
    fn default_limits_are_64k_1m_8m_and_valid() {
        let d = OutboxLimits::default();
        assert_eq!(d, limits(64 << 10, 1 << 20, 8 << 20));
        assert_eq!(d.validate(), Ok(()));
    }

    #[test]
    fn validate_names_the_misordered_limit() {
        assert_eq!(limits(5, 5, 5).validate(), Ok(()));
        let low = limits(6, 5, 10).validate().unwrap_err();
        assert_eq!(
            low,
            OutboxError::LowAboveHigh {
                low_water: 6,
                high_water: 5
            }
        );
        assert!(low.to_string().contains("low_water (6)"));
        let high = limits(1, 11, 10).validate().unwrap_err();
        assert_eq!(
            high,
            OutboxError::HighAboveMax {
                high_water: 11,
                max_bytes: 10
            }
        );
        assert!(high.to_string().contains("max_bytes (10)"));
    }

    #[test]
    fn push_reaching_high_water_exactly_signals_above_high() {
        let mut o = Outbox::new(limits(2, 10, 20));
        assert_eq!(o.push(frame(&[0; 9])), Push::Queued);
        assert_eq!(o.push_copy(&[1]), Push::AboveHigh);
        assert_eq!(o.queued_bytes(), 10);
    }

    #[test]
    fn push_landing_on_max_bytes_is_accepted_one_more_overflows_unqueued() {
        let mut o = Outbox::new(limits(0, 10, 20));
        assert_eq!(o.push(frame(&[0; 15])), Push::AboveHigh);
        assert_eq!(o.push(frame(&[1; 5])), Push::AboveHigh);
        assert_eq!(o.queued_bytes(), 20);
        assert_eq!(o.push(frame(&[2])), Push::Overflow);
        assert_eq!(o.push_copy(&[2]), Push::Overflow);
        assert_eq!(o.queued_bytes(), 20);
        assert_eq!(o.len(), 2);
        assert!(!contents(&o).contains(&2));
    }

    #[test]
    fn copy_over_max_bytes_overflows_on_empty_outbox() {
        let mut o = Outbox::new(limits(0, 4, 4));
        assert_eq!(o.push_copy(&[7; 5]), Push::Overflow);
        assert!(o.is_empty());
        assert_eq!(o.push_copy(&[7; 4]), Push::AboveHigh);
    }

    #[test]
    fn below_low_water_holds_at_the_mark_and_not_above() {
        let mut o = Outbox::new(limits(4, 8, 16));
        o.push(frame(&[0; 9]));
        assert!(!o.below_low_water());
        o.consume(4);
        assert!(!o.below_low_water());
        o.consume(1);
        assert_eq!(o.queued_bytes(), 4);
        assert!(o.below_low_water());
    }

    #[test]
    fn order_is_preserved_across_push_and_push_copy() {
        let mut o = Outbox::new(OutboxLimits::default());
        o.push_copy(b"a");
        o.push_copy(b"b");
        o.push(frame(b"CD"));
        o.push_copy(b"e");
        o.push(frame(b"FG"));
        o.push_copy(b"h");
        o.push_copy(b"i");
        assert_eq!(o.len(), 5, "adjacent copies coalesce into one buffer");
        let mut out = b"prefix:".to_vec();
        assert_eq!(o.drain_into(&mut out), 9);
        assert_eq!(out, b"prefix:abCDeFGhi");
        assert!(o.is_empty());
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn copies_start_a_new_tail_past_the_tail_cap() {
        let mut o = Outbox::new(OutboxLimits::default());
        o.push_copy(&[1; TAIL_CAP - 1]);
        o.push_copy(&[2]);
        assert_eq!(o.len(), 1);
        o.push_copy(&[3]);
        assert_eq!(o.len(), 2);
        let mut expected = vec![1; TAIL_CAP - 1];
        expected.extend([2, 3]);
        assert_eq!(contents(&o), expected);
    }

    #[test]
    fn empty_frames_queue_nothing() {
        let mut o = Outbox::new(limits(0, 1, 1));
        assert_eq!(o.push(frame(&[])), Push::Queued);
        assert_eq!(o.push_copy(&[]), Push::Queued);
        assert!(o.is_empty());
        assert!(o.io_slices(8).is_empty());
    }

    #[test]
    fn partial_consume_inside_a_frame_resumes_there() {
        let mut o = Outbox::new(OutboxLimits::default());
        o.push(frame(b"hello"));
        o.push_copy(b"world");
        o.consume(3);
        assert_eq!(o.queued_bytes(), 7);
        let slices = o.io_slices(8);
        assert_eq!(slices.len(), 2);
        assert_eq!(&*slices[0], b"lo");
        assert_eq!(&*slices[1], b"world");
        o.consume(4);
        assert_eq!(o.len(), 1);
        assert_eq!(contents(&o), b"rld");
        // Appending to a partly written tail keeps the write position.
        o.push_copy(b"!");
        assert_eq!(o.len(), 1);
        assert_eq!(contents(&o), b"rld!");
        let mut out = Vec::new();
        assert_eq!(o.drain_into(&mut out), 4);
        assert_eq!(out, b"rld!");
    }

    #[test]
    fn consume_past_the_end_empties_without_panicking() {
        let mut o = Outbox::new(OutboxLimits::default());
        o.push(frame(b"abc"));
        o.consume(100);
        assert!(o.is_empty());
        assert_eq!(o.queued_bytes(), 0);
        o.consume(1);
        o.push(frame(b"xy"));
        assert_eq!(contents(&o), b"xy");
    }

    #[test]
    fn io_slices_respects_max_and_matches_drain_into() {
        let mut o = Outbox::new(OutboxLimits::default());
        for chunk in [&b"one"[..], b"two", b"three"] {
            o.push(frame(chunk));
        }
        o.push_copy(b"4");
        o.consume(1);
        assert_eq!(o.io_slices(0).len(), 0);
        assert_eq!(concat(&o.io_slices(2)), b"netwo");
        let all = contents(&o);
        let mut drained = Vec::new();
        o.drain_into(&mut drained);
        assert_eq!(all, drained);
        assert_eq!(drained, b"netwothree4");
    }

    #[test]
    fn consume_releases_written_shared_frames() {
        let shared = frame(b"abcd");
        let mut o = Outbox::new(OutboxLimits::default());
        o.push(Arc::clone(&shared));
        assert_eq!(Arc::strong_count(&shared), 2);
        o.consume(3);
        assert_eq!(Arc::strong_count(&shared), 2);
        o.consume(1);
        assert_eq!(Arc::strong_count(&shared), 1);
    }

    #[test]
    fn emptied_outbox_frees_a_bursts_buffer_slots() {
        let mut o = Outbox::new(OutboxLimits::default());
        let f = frame(b"x");
        for _ in 0..1000 {
            o.push(Arc::clone(&f));
        }
        o.consume(999);
        assert!(o.chunks.capacity() >= 1000, "not shrunk while non-empty");
        o.consume(1);
        assert!(o.chunks.capacity() <= SPARE_SLOTS);
        for _ in 0..1000 {
            o.push(Arc::clone(&f));
        }
        o.drain_into(&mut Vec::new());
        assert!(o.chunks.capacity() <= SPARE_SLOTS);
    }

    #[test]
    fn set_limits_applies_to_later_pushes_only() {
        let mut o = Outbox::new(limits(0, 100, 100));
        o.push(frame(&[0; 50]));
        o.set_limits(limits(0, 10, 40));
        assert_eq!(o.limits(), limits(0, 10, 40));
        assert_eq!(o.queued_bytes(), 50);
        assert_eq!(o.push(frame(&[0])), Push::Overflow);
    }

    #[test]
    fn publish_shares_one_buffer_across_recipients() {
        let mut fan = FanOut::new();
        for conn in 1..=3 {
            assert!(fan.register(conn, OutboxLimits::default()));
        }
        let msg = frame(b"broadcast");
        let report = fan.publish(&msg, &[1, 2, 3]);
        assert_eq!(report.queued, 3);
        assert_eq!(Arc::strong_count(&msg), 4);
        let first = fan.outbox(1).unwrap().io_slices(1)[0].as_ptr();
        assert_eq!(first, msg.as_ptr(), "queued by reference, not copied");
        let mut out = Vec::new();
        assert_eq!(fan.drain(2, &mut out), 9);
        assert_eq!(out, b"broadcast");
        assert_eq!(Arc::strong_count(&msg), 3);
        drop(fan.unregister(1));
        assert_eq!(Arc::strong_count(&msg), 2);
    }

    #[test]
    fn publish_counts_unknown_and_reports_paused_and_overflowed() {
        let mut fan = FanOut::new();
        fan.register(1, limits(0, 100, 1000));
        fan.register(2, limits(0, 4, 1000));
        fan.register(3, limits(0, 4, 4));
        let report = fan.publish(&frame(b"12345"), &[1, 2, 3, 9, 10]);
        assert_eq!(
            report,
            PublishReport {
                queued: 2,
                paused: vec![2],
                overflowed: vec![3],
                unknown: 2,
            }
        );
        assert!(fan.outbox(3).unwrap().is_empty());
        assert_eq!(fan.queued_bytes(), 10);
    }

    #[test]
    fn register_twice_is_refused_and_keeps_the_outbox() {
        let mut fan = FanOut::new();
        assert!(fan.register(7, limits(0, 1, 2)));
        fan.send(7, b"x");
        assert!(!fan.register(7, OutboxLimits::default()));
        assert_eq!(fan.outbox(7).unwrap().limits(), limits(0, 1, 2));
        assert_eq!(fan.outbox(7).unwrap().queued_bytes(), 1);
        assert_eq!(fan.len(), 1);
        assert_eq!(fan.send(8, b"x"), None);
        assert!(fan.unregister(7).is_some());
        assert!(fan.is_empty());
        assert!(fan.unregister(7).is_none());
    }

    #[test]
    fn ready_lists_each_connection_once_per_pass() {
        let mut fan = FanOut::new();
        for conn in [1, 2, 3] {
            fan.register(conn, OutboxLimits::default());
        }
        let msg = frame(b"m");
        fan.publish(&msg, &[2, 1]);
        fan.publish(&msg, &[1, 2]);
        fan.send(2, b"ack");
        assert_eq!(fan.take_ready(), vec![2, 1]);
        assert!(fan.take_ready().is_empty(), "nothing new since last call");
        // Still non-empty, but already handed out: not listed again.
        fan.send(1, b"more");
        assert!(fan.take_ready().is_empty());
        // Flushed to empty, then refilled: listed again.
        fan.drain(1, &mut Vec::new());
        fan.send(1, b"again");
        fan.send(1, b"again");
        assert_eq!(fan.take_ready(), vec![1]);
    }

    #[test]
    fn ready_skips_connections_emptied_or_unregistered_since() {
        let mut fan = FanOut::new();
        for conn in [1, 2, 3] {
            fan.register(conn, OutboxLimits::default());
        }
        fan.publish(&frame(b"m"), &[1, 2, 3]);
        fan.drain(1, &mut Vec::new());
        fan.unregister(2);
        fan.register(2, OutboxLimits::default());
        assert_eq!(fan.take_ready(), vec![3]);
        // Unregistered while listed, then back and refilled: listed once.
        fan.send(1, b"x");
        fan.unregister(1);
        fan.register(1, OutboxLimits::default());
        fan.send(1, b"y");
        assert_eq!(fan.take_ready(), vec![1]);
        // A connection drained and refilled before the call appears once.
        fan.drain(3, &mut Vec::new());
        fan.send(3, b"x");
        fan.drain(3, &mut Vec::new());
        fan.send(3, b"y");
        fan.drain(3, &mut Vec::new());
        fan.send(3, b"z");
        assert_eq!(fan.take_ready(), vec![3]);
    }

    #[test]
    fn overflowing_publish_to_empty_outbox_is_not_ready() {
        let mut fan = FanOut::new();
        fan.register(1, limits(0, 1, 1));
        let report = fan.publish(&frame(b"too big"), &[1]);
        assert_eq!(report.overflowed, vec![1]);
        assert!(fan.take_ready().is_empty());
    }

    #[test]
    fn debug_output_summarizes_instead_of_dumping_bytes() {
        let mut fan = FanOut::new();
        fan.register(1, OutboxLimits::default());
        fan.publish(&frame(&[0; 4096]), &[1]);
        let o = format!("{:?}", fan.outbox(1).unwrap());
        assert!(o.contains("queued_bytes: 4096") && o.len() < 200, "{o}");
        assert_eq!(
            format!("{fan:?}"),
            "FanOut { connections: 1, pending_ready: 1 }"
        );
    }

    #[test]
    fn conn_id_hasher_spreads_ids_differing_only_in_high_bits() {
        let hash = |n: u64| {
            let mut h = ConnIdHasher::default();
            h.write_u64(n);
            h.finish()
        };
        assert_ne!(hash(1) & 0xffff, hash(1 | 1 << 48) & 0xffff);
        assert_ne!(hash(0), hash(1));
    }
}
