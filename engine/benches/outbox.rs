//! Encode-once fan-out: one frame to 1,000 outboxes, then a flush of each.

use std::hint::black_box;
use std::sync::Arc;

use bluewren_engine::outbox::{FanOut, Outbox, OutboxLimits, SharedFrame};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn fan_out(c: &mut Criterion) {
    let recipients: Vec<u64> = (0..1000).collect();
    let mut fan = FanOut::new();
    for &conn in &recipients {
        fan.register(conn, OutboxLimits::default());
    }
    let frame: SharedFrame = Arc::from(vec![7u8; 256]);
    let mut out = Vec::with_capacity(4096);
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(recipients.len() as u64));
    g.bench_function("publish_1000", |b| {
        b.iter(|| {
            let report = fan.publish(black_box(&frame), &recipients);
            // Writing is not measured here; empty the outboxes cheaply.
            for &conn in &recipients {
                fan.outbox_mut(conn).unwrap().consume(usize::MAX);
            }
            fan.take_ready();
            report.queued
        })
    });
    g.bench_function("publish_1000_and_drain", |b| {
        b.iter(|| {
            let report = fan.publish(black_box(&frame), &recipients);
            for conn in fan.take_ready() {
                out.clear();
                fan.drain(conn, &mut out);
                black_box(&out);
            }
            report.queued
        })
    });
    g.finish();
}

fn outbox(c: &mut Criterion) {
    let frame: SharedFrame = Arc::from(vec![7u8; 256]);
    let ack = [1u8; 24];
    let mut o = Outbox::new(OutboxLimits::default());
    let mut g = c.benchmark_group("outbox");
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_mixed_frames_writev_consume", |b| {
        b.iter(|| {
            for i in 0..64 {
                if i % 4 == 0 {
                    o.push_copy(&ack);
                } else {
                    o.push(Arc::clone(&frame));
                }
            }
            let n: usize = o.io_slices(64).iter().map(|s| s.len()).sum();
            o.consume(black_box(n));
            n
        })
    });
    g.finish();
}

criterion_group!(benches, fan_out, outbox);
criterion_main!(benches);
