//! Small valid inputs for every target, made with the engine's own encoders:
//! the starting corpus of `corpus/<target>/` (written by the `write_seeds`
//! example) and, through the replay test, regression cases of their own.
//!
//! Each seed is the target's configuration bytes (see each target's module)
//! followed by the data under test.

use bluewren_engine::compress::Compressor;
use bluewren_engine::frame::{self, flags, Header};
use bluewren_engine::ws::{
    encode_close, encode_frame, write_client_request, write_rejection, write_response, OpCode,
};

use crate::decompress::{samples, Dictionaries};
use crate::ws_handshake::KEY;

/// The fuzz targets, named as in `fuzz_targets/` and `corpus/`.
pub const TARGETS: [&str; 5] = [
    "ws_decoder",
    "ws_handshake",
    "frame_stream",
    "decompress",
    "server_conn",
];

/// One seed input.
#[derive(Clone, Debug)]
pub struct Seed {
    /// The target it is for.
    pub target: &'static str,
    /// A short file-name-safe description.
    pub name: &'static str,
    /// Configuration bytes, then data.
    pub bytes: Vec<u8>,
}

/// Every seed of every target; `dictionaries` must be the ones the
/// `decompress` target uses.
pub fn all(dictionaries: &Dictionaries) -> Vec<Seed> {
    let mut seeds = Vec::new();
    seeds.extend(ws_decoder());
    seeds.extend(ws_handshake());
    seeds.extend(frame_stream());
    seeds.extend(decompress(dictionaries));
    seeds.extend(server_conn());
    seeds
}

const MASK: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

fn seed(target: &'static str, name: &'static str, config: &[u8], data: &[u8]) -> Seed {
    Seed {
        target,
        name,
        bytes: [config, data].concat(),
    }
}

/// The bytes `build` appends to an empty buffer.
fn frames(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    build(&mut out);
    out
}

/// A text message in three fragments with a ping between the first two.
fn fragmented_text(out: &mut Vec<u8>, mask: Option<[u8; 4]>) {
    encode_frame(out, OpCode::Text, "κό".as_bytes(), false, mask);
    encode_frame(out, OpCode::Ping, b"mid", true, mask);
    encode_frame(out, OpCode::Continuation, "σμε".as_bytes(), false, mask);
    encode_frame(out, OpCode::Continuation, b"!", true, mask);
}

fn ws_decoder() -> Vec<Seed> {
    // Limits 510 / 2040, split after 7 bytes, read at least 16.
    let config = [255, 255, 7, 0, 16];
    let t = "ws_decoder";
    vec![
        seed(
            t,
            "text",
            &config,
            &frames(|o| encode_frame(o, OpCode::Text, b"hello", true, MASK)),
        ),
        seed(
            t,
            "binary-126",
            &config,
            &frames(|o| encode_frame(o, OpCode::Binary, &[0xA5; 200], true, MASK)),
        ),
        seed(
            t,
            "fragmented-text-with-ping",
            &config,
            &frames(|o| fragmented_text(o, MASK)),
        ),
        seed(
            t,
            "fragmented-binary",
            &config,
            &frames(|o| {
                encode_frame(o, OpCode::Binary, &[1; 100], false, MASK);
                encode_frame(o, OpCode::Continuation, &[2; 100], false, MASK);
                encode_frame(o, OpCode::Continuation, &[3; 100], true, MASK);
            }),
        ),
        seed(
            t,
            "ping-pong-close",
            &config,
            &frames(|o| {
                encode_frame(o, OpCode::Ping, b"are you there", true, MASK);
                encode_frame(o, OpCode::Pong, b"", true, MASK);
                encode_close(o, 1000, "bye", MASK);
            }),
        ),
        seed(
            t,
            "empty-close",
            &config,
            &frames(|o| encode_frame(o, OpCode::Close, b"", true, MASK)),
        ),
        seed(
            t,
            "server-frames",
            &config,
            &frames(|o| {
                encode_frame(o, OpCode::Text, b"from the server", true, None);
                fragmented_text(o, None);
                encode_close(o, 1001, "going away", None);
            }),
        ),
        seed(
            t,
            "invalid-utf8",
            &config,
            &frames(|o| encode_frame(o, OpCode::Text, b"ok \xed\xa0\x80", true, MASK)),
        ),
        seed(
            t,
            "small-limits",
            &[2, 3, 0, 0, 0],
            &frames(|o| {
                encode_frame(o, OpCode::Binary, b"abc", false, MASK);
                encode_frame(o, OpCode::Continuation, b"defgh", true, MASK);
            }),
        ),
    ]
}

fn ws_handshake() -> Vec<Seed> {
    // 1020-byte heads, 31 headers.
    let config = [255, 31];
    let t = "ws_handshake";
    let mut request = Vec::new();
    write_client_request(
        &mut request,
        "example.com",
        "/chat?room=1",
        KEY,
        &["chat", "superchat"],
    );
    let browser = format!(
        "GET /ws HTTP/1.1\r\nHost: chat.example.com:8443\r\nConnection: keep-alive, Upgrade\r\n\
         Pragma: no-cache\r\nUser-Agent: Mozilla/5.0\r\nUpgrade: websocket\r\n\
         Origin: https://chat.example.com\r\nSec-WebSocket-Version: 13\r\n\
         Accept-Encoding: gzip, deflate, br\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         Sec-WebSocket-Protocol: bluewren.v1\r\n\r\n"
    );
    let mut pipelined = request.clone();
    encode_frame(&mut pipelined, OpCode::Text, b"early", true, MASK);
    let mut response = Vec::new();
    write_response(&mut response, KEY, Some("chat"));
    let mut plain_response = Vec::new();
    write_response(&mut plain_response, KEY, None);
    let mut rejection = Vec::new();
    write_rejection(&mut rejection, 426, "use version 13");
    vec![
        seed(t, "request", &config, &request),
        seed(t, "browser-request", &config, browser.as_bytes()),
        seed(t, "request-then-frame", &config, &pipelined),
        seed(t, "response", &config, &response),
        seed(t, "response-without-protocol", &config, &plain_response),
        seed(t, "rejection", &config, &rejection),
        seed(t, "request-at-tight-limits", &[40, 5], &request),
    ]
}

fn frame_stream() -> Vec<Seed> {
    // max_body 256, chunks of up to 15 bytes.
    let config = [64, 1, 7, 0];
    let t = "frame_stream";
    let header = |kind, flags, seq| Header {
        kind,
        flags,
        conv: 7,
        seq,
        cmid: 0x1122_3344_5566_7788,
    };
    let mut stream = Vec::new();
    frame::encode(&mut stream, &header(1, 0, 42), b"hello");
    frame::encode(&mut stream, &header(2, flags::COMPRESSED, 43), &[0x28; 40]);
    frame::encode(&mut stream, &header(3, 0, 0), b"");
    frame::encode(
        &mut stream,
        &header(4, flags::COMPRESSED | flags::DICT, 44),
        &[7; 200],
    );
    let mut one = Vec::new();
    frame::encode(&mut one, &header(1, 0, 1), b"just one frame");
    let truncated = stream[..stream.len() - 50].to_vec();
    vec![
        seed(t, "four-frames", &config, &stream),
        seed(t, "four-frames-read-buf", &[64, 9, 40, 0b101], &stream),
        seed(t, "one-frame", &config, &one),
        seed(t, "truncated", &[64, 3, 3, 0b10], &truncated),
        seed(t, "body-over-limit", &[2, 1, 7, 0], &stream),
    ]
}

fn decompress(dictionaries: &Dictionaries) -> Vec<Seed> {
    use std::io::Write as _;

    let t = "decompress";
    let compress = |which: usize, level, data: &[u8]| {
        Compressor::new(level, dictionaries.get(which))
            .and_then(|mut c| c.compress(data))
            .expect("seed compresses")
    };
    let stream = |data: &[u8], content_size: bool, checksum: bool| {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        enc.include_contentsize(content_size).expect("parameter");
        enc.include_checksum(checksum).expect("parameter");
        enc.write_all(data).expect("in memory");
        enc.finish().expect("in memory")
    };
    let text: Vec<u8> = (0..3000).map(|i| b"the quick brown fox "[i % 20]).collect();
    let samples = samples();
    let sample = &samples[3];
    // Limit 4096 (little-endian), dictionary, mode.
    let config = |which: u8, mode: u8| [0x00, 0x10, which, mode];
    let mut two_frames = compress(0, 3, b"first frame ");
    two_frames.extend(compress(0, 3, b"second frame"));
    let mut skippable = vec![0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    skippable.extend(compress(0, 3, b"after a skippable frame"));
    vec![
        seed(t, "plain", &config(0, 1), &compress(0, 3, &text)),
        seed(t, "plain-fast", &config(0, 0), &compress(0, -5, &text)),
        seed(t, "empty", &config(0, 1), &compress(0, 3, b"")),
        seed(t, "over-limit", &[100, 0, 0, 0], &compress(0, 3, &text)),
        seed(
            t,
            "trained-dictionary",
            &config(1, 1),
            &compress(1, 3, sample),
        ),
        seed(t, "raw-dictionary", &config(2, 1), &compress(2, 3, sample)),
        seed(
            t,
            "wrong-dictionary",
            &config(0, 0),
            &compress(1, 3, sample),
        ),
        seed(
            t,
            "undeclared-size",
            &config(0, 0),
            &stream(&text, false, false),
        ),
        seed(
            t,
            "undeclared-size-over-limit",
            &[0, 2, 0, 0],
            &stream(&text, false, true),
        ),
        seed(t, "checksum", &config(0, 0), &stream(sample, true, true)),
        seed(t, "two-frames", &config(0, 0), &two_frames),
        seed(t, "skippable-frame", &config(0, 0), &skippable),
    ]
}

fn server_conn() -> Vec<Seed> {
    // Frames 1020, messages 4080, requests 2104 bytes, 19 headers; reads of
    // up to 33 bytes (mode >> 4 = 1).
    let config = |mode: u8| [255, 255, 255, 15, 3, mode];
    let t = "server_conn";
    let mut request = Vec::new();
    write_client_request(&mut request, "localhost", "/chat", KEY, &["bluewren.v1"]);
    let with = |build: &dyn Fn(&mut Vec<u8>)| {
        let mut out = request.clone();
        build(&mut out);
        out
    };
    vec![
        seed(t, "request", &config(0x10), &request),
        seed(
            t,
            "chat",
            &config(0x10),
            &with(&|o| {
                encode_frame(o, OpCode::Text, b"hello", true, MASK);
                encode_frame(o, OpCode::Ping, b"ping", true, MASK);
                encode_frame(o, OpCode::Binary, &[9; 300], true, MASK);
                encode_close(o, 1000, "done", MASK);
            }),
        ),
        seed(
            t,
            "fragments-read-buf",
            &config(0x11),
            &with(&|o| fragmented_text(o, MASK)),
        ),
        seed(
            t,
            "subprotocol-and-partial-writes",
            &config(0x3C),
            &with(&|o| encode_frame(o, OpCode::Ping, b"", true, MASK)),
        ),
        seed(t, "rejected-by-server", &config(0x12), &request),
        seed(
            t,
            "unmasked-frame",
            &config(0x10),
            &with(&|o| encode_frame(o, OpCode::Text, b"x", true, None)),
        ),
        seed(
            t,
            "bad-request",
            &config(0x10),
            b"POST /chat HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        seed(
            t,
            "request-over-limit",
            &[255, 255, 2, 15, 3, 0x10],
            &request,
        ),
    ]
}
