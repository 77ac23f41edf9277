//! Ring lookups on 64 equal nodes at the default virtual-node count.

use std::hint::black_box;

use bluewren_engine::ring::{BoundedLoad, HashRing};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn ring64() -> HashRing {
    let mut ring = HashRing::default();
    for i in 0..64 {
        ring.add(&format!("node-{i}"), 1).unwrap();
    }
    ring
}

fn lookups(c: &mut Criterion) {
    let ring = ring64();
    let keys: Vec<String> = (0..1000).map(|k| format!("conversation-{k}")).collect();
    let mut g = c.benchmark_group("ring64");
    g.bench_function("get", |b| {
        b.iter(|| ring.get(black_box(b"conversation-42")))
    });
    g.bench_function("get_n3", |b| {
        b.iter(|| ring.get_n(black_box(b"conversation-42"), 3))
    });
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("get_batch_1000", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for key in &keys {
                acc += ring.get(black_box(key.as_bytes())).map_or(0, str::len);
            }
            acc
        })
    });
    g.finish();
}

fn membership(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring64_membership");
    g.sample_size(10);
    g.bench_function("build", |b| b.iter(ring64));
    let ring = ring64();
    g.bench_function("add_65th", |b| {
        b.iter_batched(
            || ring.clone(),
            |mut r| r.add("node-new", 1).map(|()| r),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn bounded(c: &mut Criterion) {
    let ring = ring64();
    let keys: Vec<String> = (0..1000).map(|k| format!("conversation-{k}")).collect();
    let mut g = c.benchmark_group("bounded64");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("assign_1000_eps_0.25", |b| {
        b.iter_batched(
            || BoundedLoad::new(ring.clone(), 0.25),
            |mut bl| {
                for key in &keys {
                    black_box(bl.assign(key.as_bytes()));
                }
                bl.total()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, lookups, membership, bounded);
criterion_main!(benches);
