//! zstd body compression: chat-sized JSON bodies with and without the trained
//! dictionary, and a larger body.

use std::hint::black_box;

use bluewren_engine::compress::{train_dictionary, Compressor, Decompressor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn body(i: u32) -> Vec<u8> {
    format!(
        r#"{{"op":"send","conv":{},"cmid":{},"from":"user-{}","text":"see you at {} in room {}"}}"#,
        i % 97,
        i,
        i % 13,
        i % 24,
        i % 7
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let samples: Vec<Vec<u8>> = (0..2000).map(body).collect();
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    let dict = train_dictionary(&refs, 16 * 1024).unwrap();
    let large: Vec<u8> = (0..200).flat_map(body).collect();

    let cases = [
        ("small/plain", body(4242), None),
        ("small/dict", body(4242), Some(&dict[..])),
        ("large/plain", large, None),
    ];
    for (name, src, dict) in &cases {
        let mut g = c.benchmark_group(format!("compress/{name}"));
        g.throughput(Throughput::Bytes(src.len() as u64));
        let mut comp = Compressor::new(3, *dict).unwrap();
        let packed = comp.compress(src).unwrap();
        let mut out = Vec::with_capacity(2 * src.len() + 64);
        g.bench_function("compress_into", |b| {
            b.iter(|| {
                out.clear();
                comp.compress_into(black_box(src), &mut out).unwrap()
            })
        });
        let mut de = Decompressor::new(*dict, 1 << 20).unwrap();
        g.bench_function("decompress", |b| {
            b.iter(|| de.decompress(black_box(&packed)).unwrap().len())
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
