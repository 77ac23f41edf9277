//! WebSocket codec benchmarks: decoding masked client traffic (small text,
//! large binary, fragmented), unmasking, encoding server frames into a reused
//! buffer, and the opening handshake.

use std::hint::black_box;

use bluewren_engine::ws::{
    apply_mask, encode_frame, parse_request, write_client_request, write_response, Decoder, Event,
    HandshakeLimits, OpCode, Role, WsLimits,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

const JSON: &str = r#"{"op":"send","conv":"c:42","cid":"7f3a","body":"see you at 10"}"#;
const MIXED: &str = "héllo wörld, 你好, ";

/// `count` messages of `size` bytes of `text`, each in `fragments` masked
/// frames, as one read's worth of input.
fn stream(op: OpCode, text: &str, size: usize, count: usize, fragments: usize) -> Vec<u8> {
    // Whole characters only, so every message is valid UTF-8.
    let mut payload = String::new();
    for ch in text.chars().cycle() {
        if payload.len() + ch.len_utf8() > size {
            break;
        }
        payload.push(ch);
    }
    let payload = payload.into_bytes();
    let piece = size.div_ceil(fragments).max(1);
    let mut out = Vec::new();
    for _ in 0..count {
        let mut chunks = payload.chunks(piece).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let code = if first { op } else { OpCode::Continuation };
            encode_frame(&mut out, code, chunk, chunks.peek().is_none(), Some(KEY));
            first = false;
        }
    }
    out
}

/// Feeds `input` in reads of `read` bytes and drains every event.
fn drain(dec: &mut Decoder, input: &[u8], read: usize) -> usize {
    let mut total = 0;
    for chunk in input.chunks(read) {
        dec.read_buf(chunk.len())[..chunk.len()].copy_from_slice(chunk);
        dec.commit(chunk.len());
        while let Some(ev) = dec.poll().expect("benchmark input is valid") {
            total += match ev {
                Event::Text(p) | Event::Binary(p) => p.len(),
                _ => 0,
            };
        }
    }
    total
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_decode");
    let cases = [
        (
            "json_text_64B_x1000",
            stream(OpCode::Text, JSON, 64, 1000, 1),
        ),
        (
            "mixed_text_64B_x1000",
            stream(OpCode::Text, MIXED, 64, 1000, 1),
        ),
        (
            "binary_64B_x1000",
            stream(OpCode::Binary, JSON, 64, 1000, 1),
        ),
        (
            "mixed_text_1KiB_x100",
            stream(OpCode::Text, MIXED, 1024, 100, 1),
        ),
        ("binary_64KiB_x4", stream(OpCode::Binary, JSON, 65536, 4, 1)),
        (
            "mixed_text_4KiB_in_4_fragments_x50",
            stream(OpCode::Text, MIXED, 4096, 50, 4),
        ),
    ];
    for (name, input) in &cases {
        group.throughput(Throughput::Bytes(input.len() as u64));
        let mut dec = Decoder::new(Role::Server, WsLimits::default());
        group.bench_function(*name, |b| {
            b.iter(|| drain(&mut dec, black_box(input), 64 * 1024))
        });
    }
    let input = &cases[3].1;
    let mut dec = Decoder::new(Role::Server, WsLimits::default());
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("mixed_text_1KiB_x100_in_1500B_reads", |b| {
        b.iter(|| drain(&mut dec, black_box(input), 1500))
    });
    group.finish();
}

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_mask");
    let mut buf = vec![0x5au8; 64 * 1024];
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.bench_function("apply_mask_64KiB", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), KEY, 1))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_encode");
    let payload = vec![b'x'; 64];
    let mut out = Vec::with_capacity(100 * 1024);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("server_text_64B_x1000", |b| {
        b.iter(|| {
            out.clear();
            for _ in 0..1000 {
                encode_frame(&mut out, OpCode::Text, black_box(&payload), true, None);
            }
            out.len()
        })
    });
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let mut req = Vec::new();
    write_client_request(
        &mut req,
        "localhost:8080",
        "/ws",
        "dGhlIHNhbXBsZSBub25jZQ==",
        &["chat"],
    );
    let limits = HandshakeLimits::default();
    let mut out = Vec::new();
    c.bench_function("ws_handshake_parse_and_respond", |b| {
        b.iter(|| {
            let (request, _) = parse_request(black_box(&req), &limits)
                .expect("valid request")
                .expect("complete request");
            out.clear();
            write_response(&mut out, &request.key, Some("chat"));
            out.len()
        })
    });
}

criterion_group!(benches, decode, mask, encode, handshake);
criterion_main!(benches);
