//! Frame codec throughput: encoding, whole-message decoding and stream decoding
//! of many small frames, the shape of chat traffic.

use std::hint::black_box;

use bluewren_engine::frame::{
    decode_all, encode, encoded_len, frames, FrameLimits, Header, StreamDecoder,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const FRAMES: usize = 1000;

fn header(i: u64) -> Header {
    Header {
        kind: 3,
        flags: 0,
        conv: 42,
        seq: i,
        cmid: i ^ 0x5555,
    }
}

fn message(body_len: usize) -> Vec<u8> {
    let body = vec![b'x'; body_len];
    let mut out = Vec::with_capacity(FRAMES * encoded_len(body_len));
    for i in 0..FRAMES as u64 {
        encode(&mut out, &header(i), &body);
    }
    out
}

fn bench(c: &mut Criterion) {
    let limits = FrameLimits::default();
    for body_len in [64, 1024] {
        let msg = message(body_len);
        let body = vec![b'x'; body_len];

        let mut g = c.benchmark_group(format!("frame/{body_len}B"));
        g.throughput(Throughput::Bytes(msg.len() as u64));

        let mut out = Vec::with_capacity(msg.len());
        g.bench_function(BenchmarkId::new("encode", FRAMES), |b| {
            b.iter(|| {
                out.clear();
                for i in 0..FRAMES as u64 {
                    encode(&mut out, &header(i), black_box(&body));
                }
                black_box(out.len())
            })
        });
        g.bench_function(BenchmarkId::new("decode_all", FRAMES), |b| {
            b.iter(|| decode_all(black_box(&msg), &limits).unwrap().len())
        });
        g.bench_function(BenchmarkId::new("frames", FRAMES), |b| {
            b.iter(|| {
                frames(black_box(&msg), &limits)
                    .map(|f| f.unwrap().body.len())
                    .sum::<usize>()
            })
        });
        g.bench_function(BenchmarkId::new("stream_4KiB_reads", FRAMES), |b| {
            let mut d = StreamDecoder::new(limits);
            b.iter(|| {
                let mut n = 0;
                for chunk in black_box(&msg).chunks(4096) {
                    d.read_buf(chunk.len())[..chunk.len()].copy_from_slice(chunk);
                    d.commit(chunk.len());
                    while let Some(f) = d.poll().unwrap() {
                        n += f.body.len();
                    }
                }
                n
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
