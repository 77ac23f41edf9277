//! Property tests for outboxes and fan-out against a plain byte-queue model.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bluewren_engine::outbox::{FanOut, Outbox, OutboxLimits, Push, SharedFrame};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Push(Vec<u8>),
    PushCopy(Vec<u8>),
    Consume(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..40);
    prop::collection::vec(
        prop_oneof![
            bytes().prop_map(Op::Push),
            bytes().prop_map(Op::PushCopy),
            (0usize..60).prop_map(Op::Consume),
        ],
        0..80,
    )
}

fn limits() -> impl Strategy<Value = OutboxLimits> {
    (0usize..100, 0usize..100, 0usize..300).prop_map(|(a, b, c)| {
        let mut v = [a, b, c];
        v.sort_unstable();
        OutboxLimits {
            low_water: v[0],
            high_water: v[1],
            max_bytes: v[2],
        }
    })
}

fn queued(outbox: &Outbox, max: usize) -> Vec<u8> {
    outbox
        .io_slices(max)
        .iter()
        .flat_map(|s| s.iter().copied())
        .collect()
}

proptest! {
    #[test]
    fn outbox_matches_a_byte_queue(limits in limits(), ops in ops(), max in 1usize..6) {
        prop_assert_eq!(limits.validate(), Ok(()));
        let mut outbox = Outbox::new(limits);
        let mut model: VecDeque<u8> = VecDeque::new();
        for op in ops {
            match &op {
                Op::Push(bytes) | Op::PushCopy(bytes) => {
                    let fits = model.len() + bytes.len() <= limits.max_bytes;
                    if fits {
                        model.extend(bytes);
                    }
                    let want = if !fits {
                        Push::Overflow
                    } else if model.len() >= limits.high_water {
                        Push::AboveHigh
                    } else {
                        Push::Queued
                    };
                    let got = match op {
                        Op::Push(_) => outbox.push(Arc::from(&bytes[..])),
                        _ => outbox.push_copy(bytes),
                    };
                    prop_assert_eq!(got, want);
                }
                Op::Consume(n) => {
                    outbox.consume(*n);
                    model.drain(..(*n).min(model.len()));
                }
            }
            let all: Vec<u8> = model.iter().copied().collect();
            prop_assert_eq!(outbox.queued_bytes(), all.len());
            prop_assert_eq!(outbox.is_empty(), all.is_empty());
            prop_assert_eq!(outbox.below_low_water(), all.len() <= limits.low_water);
            prop_assert!(all.len() <= limits.max_bytes);
            prop_assert_eq!(queued(&outbox, usize::MAX), all.clone());
            let prefix = queued(&outbox, max);
            prop_assert!(all.starts_with(&prefix));
            prop_assert_eq!(outbox.io_slices(max).len(), max.min(outbox.len()));
            prop_assert!(outbox.io_slices(usize::MAX).iter().all(|s| !s.is_empty()));
        }
        let expected: Vec<u8> = model.into_iter().collect();
        let mut out = vec![0xAA];
        prop_assert_eq!(outbox.drain_into(&mut out), expected.len());
        prop_assert_eq!(&out[1..], &expected[..]);
        prop_assert!(outbox.is_empty());
    }

    #[test]
    fn partial_writes_in_any_sizes_deliver_every_byte_in_order(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 0..20),
        writes in prop::collection::vec(1usize..30, 1..20),
    ) {
        let mut outbox = Outbox::new(OutboxLimits::default());
        for (i, f) in frames.iter().enumerate() {
            if i % 3 == 0 { outbox.push_copy(f); } else { outbox.push(Arc::from(&f[..])); }
        }
        let mut written = Vec::new();
        // A socket that accepts at most `w` bytes per writev.
        for &w in writes.iter().cycle().take(1000) {
            if outbox.is_empty() { break; }
            let slices = outbox.io_slices(4);
            let chunk: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).take(w).collect();
            written.extend_from_slice(&chunk);
            outbox.consume(chunk.len());
        }
        prop_assert!(outbox.is_empty());
        prop_assert_eq!(written, frames.concat());
    }

    #[test]
    fn fan_out_delivers_to_each_recipient_and_lists_ready_once(
        conns in prop::collection::btree_set(0u64..16, 1..8),
        steps in prop::collection::vec(
            (prop::collection::vec(0u64..20, 0..10), prop::collection::vec(any::<u8>(), 0..8), any::<bool>(), any::<bool>()),
            1..30,
        ),
    ) {
        let limits = OutboxLimits { low_water: 8, high_water: 32, max_bytes: 64 };
        let mut fan = FanOut::new();
        for &c in &conns {
            prop_assert!(fan.register(c, limits));
        }
        let mut model: HashMap<u64, Vec<u8>> = conns.iter().map(|&c| (c, Vec::new())).collect();
        let mut filled: HashSet<u64> = HashSet::new();
        let mut frames: Vec<SharedFrame> = Vec::new();
        for (recipients, body, take, drain_some) in steps {
            let frame: SharedFrame = Arc::from(body);
            for &r in &recipients {
                if let Some(q) = model.get_mut(&r) {
                    if q.len() + frame.len() <= limits.max_bytes && !frame.is_empty() {
                        if q.is_empty() { filled.insert(r); }
                        q.extend_from_slice(&frame);
                    }
                }
            }
            let report = fan.publish(&frame, &recipients);
            let unknown = recipients.iter().filter(|r| !conns.contains(r)).count();
            prop_assert_eq!(report.unknown, unknown);
            prop_assert_eq!(report.queued + report.overflowed.len() + unknown, recipients.len());
            frames.push(frame);
            if drain_some {
                if let Some(&c) = conns.iter().next() {
                    let mut out = Vec::new();
                    fan.drain(c, &mut out);
                    prop_assert_eq!(&out, &model[&c]);
                    model.get_mut(&c).unwrap().clear();
                }
            }
            if take {
                let ready = fan.take_ready();
                let set: HashSet<u64> = ready.iter().copied().collect();
                prop_assert_eq!(set.len(), ready.len(), "listed twice: {:?}", ready);
                let want: HashSet<u64> = filled.iter().copied().filter(|c| !model[c].is_empty()).collect();
                prop_assert_eq!(set, want);
                filled.clear();
            }
        }
        let total: usize = model.values().map(Vec::len).sum();
        prop_assert_eq!(fan.queued_bytes(), total);
        // Every queued copy is a reference to the published frame.
        let refs: usize = frames.iter().map(|f| Arc::strong_count(f) - 1).sum();
        let held: usize = conns.iter().map(|&c| fan.outbox(c).unwrap().len()).sum();
        prop_assert_eq!(refs, held);
        for (c, bytes) in model {
            let mut out = Vec::new();
            prop_assert_eq!(fan.drain(c, &mut out), bytes.len());
            prop_assert_eq!(out, bytes);
        }
    }
}
