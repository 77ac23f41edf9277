//! Property tests for the WebSocket codec: encode -> decode round trips over
//! random messages, fragmentations, masks and read chunkings; fail-fast UTF-8
//! checking; limits; and no panic on arbitrary input.

use bluewren_engine::ws::{
    apply_mask, close_code, encode_close, encode_frame, parse_request, parse_response,
    write_client_request, write_response, Decoder, Event, HandshakeLimits, OpCode, Role, WsError,
    WsLimits,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// An owned [`Event`], to compare after the decoder has moved on.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

impl From<Event<'_>> for Msg {
    fn from(ev: Event<'_>) -> Self {
        match ev {
            Event::Text(t) => Msg::Text(String::from_utf8(t.to_vec()).expect("validated UTF-8")),
            Event::Binary(b) => Msg::Binary(b.to_vec()),
            Event::Ping(b) => Msg::Ping(b.to_vec()),
            Event::Pong(b) => Msg::Pong(b.to_vec()),
            Event::Close { code, reason } => Msg::Close(code, reason.to_owned()),
        }
    }
}

/// One message with how it is cut into fragments and an optional ping that
/// travels between its fragments (or after it, if it is a single frame).
#[derive(Clone, Debug)]
struct Plan {
    text: bool,
    payload: Vec<u8>,
    cuts: Vec<Index>,
    ping: Option<Vec<u8>>,
    mask: [u8; 4],
}

fn plan() -> impl Strategy<Value = Plan> {
    let payload = prop_oneof![
        4 => any::<String>().prop_map(|s| (true, s.into_bytes())),
        4 => vec(any::<u8>(), 0..300).prop_map(|b| (false, b)),
        1 => vec(any::<u8>(), 60_000..70_000).prop_map(|b| (false, b)),
    ];
    (
        payload,
        vec(any::<Index>(), 0..4),
        prop::option::of(vec(any::<u8>(), 0..=125)),
        any::<[u8; 4]>(),
    )
        .prop_map(|((text, payload), cuts, ping, mask)| Plan {
            text,
            payload,
            cuts,
            ping,
            mask,
        })
}

/// Encodes the plans as `role`'s peer would, returning the bytes and the
/// events the decoder must yield.
fn encode(plans: &[Plan], role: Role) -> (Vec<u8>, Vec<Msg>) {
    let (mut bytes, mut expect) = (Vec::new(), Vec::new());
    for p in plans {
        let mask = (role == Role::Server).then_some(p.mask);
        let mut cuts: Vec<usize> = p
            .cuts
            .iter()
            .map(|i| i.index(p.payload.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(p.payload.len());
        let mut from = 0;
        for (i, &to) in cuts.iter().enumerate() {
            let op = match (i, p.text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            encode_frame(
                &mut bytes,
                op,
                &p.payload[from..to],
                i + 1 == cuts.len(),
                mask,
            );
            if i == 0 {
                if let Some(ping) = &p.ping {
                    encode_frame(&mut bytes, OpCode::Ping, ping, true, mask);
                }
            }
            from = to;
        }
        let msg = if p.text {
            Msg::Text(String::from_utf8(p.payload.clone()).expect("text plan"))
        } else {
            Msg::Binary(p.payload.clone())
        };
        let ping = p.ping.clone().map(Msg::Ping);
        if cuts.len() > 1 {
            expect.extend(ping);
            expect.push(msg);
        } else {
            expect.push(msg);
            expect.extend(ping);
        }
    }
    (bytes, expect)
}

/// Feeds `bytes` cut at `cuts` through `read_buf`/`commit`, polling after
/// every read as an event loop would.
fn decode(dec: &mut Decoder, bytes: &[u8], cuts: &[Index]) -> Result<Vec<Msg>, WsError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());
    let (mut from, mut out) = (0, Vec::new());
    for to in cuts {
        let chunk = &bytes[from..to];
        dec.read_buf(chunk.len())[..chunk.len()].copy_from_slice(chunk);
        dec.commit(chunk.len());
        from = to;
        while let Some(ev) = dec.poll()? {
            out.push(ev.into());
        }
    }
    Ok(out)
}

fn big_limits() -> WsLimits {
    WsLimits {
        max_frame_size: 1 << 20,
        max_message_size: 1 << 20,
    }
}

proptest! {
    #[test]
    fn masked_client_frames_round_trip_in_any_chunking(
        plans in vec(plan(), 1..6),
        cuts in vec(any::<Index>(), 0..24),
    ) {
        let (bytes, expect) = encode(&plans, Role::Server);
        let mut dec = Decoder::new(Role::Server, big_limits());
        prop_assert_eq!(decode(&mut dec, &bytes, &cuts), Ok(expect));
        prop_assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn unmasked_server_frames_round_trip_in_any_chunking(
        plans in vec(plan(), 1..6),
        cuts in vec(any::<Index>(), 0..24),
    ) {
        let (bytes, expect) = encode(&plans, Role::Client);
        let mut dec = Decoder::new(Role::Client, big_limits());
        prop_assert_eq!(decode(&mut dec, &bytes, &cuts), Ok(expect));
    }

    #[test]
    fn close_round_trips_and_ends_the_stream(
        code in prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999],
        reason in any::<String>(),
        mask in any::<[u8; 4]>(),
        cuts in vec(any::<Index>(), 0..6),
    ) {
        let mut bytes = Vec::new();
        encode_close(&mut bytes, code, &reason, Some(mask));
        encode_frame(&mut bytes, OpCode::Text, b"after close", true, Some(mask));
        let mut dec = Decoder::new(Role::Server, big_limits());
        let got = decode(&mut dec, &bytes, &cuts).expect("valid close");
        prop_assert_eq!(got.len(), 1);
        let Msg::Close(Some(got_code), got_reason) = &got[0] else {
            return Err(TestCaseError::fail(format!("{got:?}")));
        };
        prop_assert_eq!(*got_code, code);
        // The reason is the longest prefix of whole characters that fits 123 bytes.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        prop_assert_eq!(got_reason.as_str(), &reason[..end]);
    }

    #[test]
    fn text_is_accepted_iff_utf8_and_rejected_as_soon_as_invalid(
        payload in prop_oneof![
            vec(any::<u8>(), 0..64),
            (any::<String>(), any::<Index>(), vec(any::<u8>(), 1..4)).prop_map(|(s, at, junk)| {
                let mut b = s.into_bytes();
                let at = at.index(b.len() + 1);
                b.splice(at..at, junk);
                b
            }),
        ],
        cuts in vec(any::<Index>(), 0..4),
    ) {
        // The shortest prefix that no continuation can make valid, if any.
        let first_bad = (1..=payload.len()).find(|&n| {
            std::str::from_utf8(&payload[..n]).is_err_and(|e| e.error_len().is_some())
        });
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(payload.len());

        // Send each fragment's header, then its payload one byte per read.
        let mut dec = Decoder::new(Role::Server, big_limits());
        let (mut from, mut sent, mut events, mut failed) = (0, 0, Vec::new(), None);
        'send: for (i, &to) in cuts.iter().enumerate() {
            let op = if i == 0 { OpCode::Text } else { OpCode::Continuation };
            let mut frame = Vec::new();
            encode_frame(&mut frame, op, &payload[from..to], i + 1 == cuts.len(), Some([1, 2, 3, 4]));
            let header = frame.len() - (to - from);
            let reads = std::iter::once(&frame[..header]).chain(frame[header..].chunks(1));
            for (j, read) in reads.enumerate() {
                dec.feed(read);
                sent += usize::from(j > 0);
                loop {
                    match dec.poll() {
                        Ok(Some(ev)) => events.push(Msg::from(ev)),
                        Ok(None) => break,
                        Err(err) => {
                            failed = Some((err, sent));
                            break 'send;
                        }
                    }
                }
            }
            from = to;
        }
        match (std::str::from_utf8(&payload), failed) {
            (Ok(text), None) => prop_assert_eq!(events, vec![Msg::Text(text.to_owned())]),
            (Err(_), Some((err, at))) => {
                prop_assert_eq!(err.close_code, close_code::INVALID_PAYLOAD);
                // Fail fast: at the byte that makes the prefix hopeless, or at
                // the end of the message for a truncated last code point.
                prop_assert_eq!(at, first_bad.unwrap_or(payload.len()));
            }
            (valid, failed) => prop_assert!(false, "valid: {}, failed: {:?}", valid.is_ok(), failed),
        }
    }

    #[test]
    fn frames_over_the_limit_fail_from_the_header_alone(
        len in 0usize..3000,
        max in 0usize..3000,
        mask in any::<[u8; 4]>(),
    ) {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, OpCode::Binary, &vec![0; len], true, Some(mask));
        let limits = WsLimits { max_frame_size: max, max_message_size: usize::MAX };
        let mut dec = Decoder::new(Role::Server, limits);
        dec.feed(&bytes[..bytes.len() - len]); // header only
        let first = dec.poll().map(|e| e.map(Msg::from));
        if len > max {
            prop_assert_eq!(first.unwrap_err().close_code, close_code::MESSAGE_TOO_BIG);
        } else {
            prop_assert_eq!(first, Ok(if len == 0 { Some(Msg::Binary(vec![])) } else { None }));
        }
    }

    #[test]
    fn fragmented_messages_over_the_limit_are_too_big(
        sizes in vec(0usize..200, 1..6),
        max in 0usize..600,
    ) {
        let mut bytes = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let op = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
            encode_frame(&mut bytes, op, &vec![7; n], i + 1 == sizes.len(), Some([9; 4]));
        }
        let limits = WsLimits { max_frame_size: 1000, max_message_size: max };
        let mut dec = Decoder::new(Role::Server, limits);
        let total: usize = sizes.iter().sum();
        let got = decode(&mut dec, &bytes, &[]);
        if total > max {
            prop_assert_eq!(got.unwrap_err().close_code, close_code::MESSAGE_TOO_BIG);
        } else {
            prop_assert_eq!(got, Ok(vec![Msg::Binary(vec![7; total])]));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_errors_stick(
        bytes in vec(any::<u8>(), 0..600),
        cuts in vec(any::<Index>(), 0..8),
        server in any::<bool>(),
        max in 0usize..400,
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let mut dec = Decoder::new(role, WsLimits { max_frame_size: max, max_message_size: max });
        if let Err(err) = decode(&mut dec, &bytes, &cuts) {
            prop_assert!([1002, 1007, 1009].contains(&err.close_code));
            prop_assert_eq!(dec.poll(), Err(err));
        }
        prop_assert!(dec.buffered() <= bytes.len());
    }

    #[test]
    fn random_frame_headers_never_panic(
        frames in vec((any::<u8>(), any::<bool>(), 0u8..3, 0usize..300, any::<[u8; 4]>()), 1..8),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        // Arbitrary first bytes and length encodings (including non-minimal
        // ones) with plausible payloads, to get past the first checks.
        let mut bytes = Vec::new();
        for (b0, masked, form, len, key) in frames {
            bytes.push(b0);
            let m = if masked { 0x80 } else { 0 };
            match form {
                0 => bytes.push(m | (len.min(125) as u8)),
                1 => { bytes.push(m | 126); bytes.extend((len as u16).to_be_bytes()); }
                _ => { bytes.push(m | 127); bytes.extend((len as u64).to_be_bytes()); }
            }
            if masked { bytes.extend(key); }
            bytes.extend(std::iter::repeat_n(b'a', len));
        }
        for role in [Role::Server, Role::Client] {
            let mut dec = Decoder::new(role, WsLimits { max_frame_size: 250, max_message_size: 500 });
            let _ = decode(&mut dec, &bytes, &cuts);
        }
    }

    #[test]
    fn apply_mask_is_an_involution_at_any_offset(
        data in vec(any::<u8>(), 0..100),
        mask in any::<[u8; 4]>(),
        offset in 0usize..16,
        split in any::<Index>(),
    ) {
        let mut buf = data.clone();
        apply_mask(&mut buf, mask, offset);
        for (i, (&m, &d)) in buf.iter().zip(&data).enumerate() {
            prop_assert_eq!(m, d ^ mask[(i + offset) % 4]);
        }
        let at = split.index(buf.len() + 1);
        let (a, b) = buf.split_at_mut(at);
        apply_mask(a, mask, offset);
        apply_mask(b, mask, offset + at);
        prop_assert_eq!(buf, data);
    }

    #[test]
    fn handshake_parsers_never_panic_on_arbitrary_bytes(
        bytes in vec(any::<u8>(), 0..400),
        max_bytes in 0usize..500,
        max_headers in 0usize..8,
    ) {
        let limits = HandshakeLimits { max_request_bytes: max_bytes, max_headers };
        if let Ok(Some((_, n))) = parse_request(&bytes, &limits) {
            prop_assert!(n <= bytes.len() && n <= max_bytes);
        }
        if let Ok(Some((_, n))) = parse_response(&bytes, "x", &limits) {
            prop_assert!(n <= bytes.len() && n <= max_bytes);
        }
    }

    #[test]
    fn handshake_round_trips_between_client_and_server(
        path in "/[a-zA-Z0-9/?=&%._~-]{0,40}",
        host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        nonce in any::<[u8; 16]>(),
        protocols in vec("[a-zA-Z0-9.+-]{1,12}", 0..4),
        pick in any::<Index>(),
        tail in vec(any::<u8>(), 0..20),
    ) {
        let key = bluewren_engine::ws::client_key(nonce);
        let offered: Vec<&str> = protocols.iter().map(String::as_str).collect();
        let mut req = Vec::new();
        write_client_request(&mut req, &host, &path, &key, &offered);
        let head = req.len();
        req.extend(&tail);
        let (parsed, n) = parse_request(&req, &HandshakeLimits::default()).unwrap().unwrap();
        prop_assert_eq!(n, head);
        prop_assert_eq!(&parsed.path, &path);
        prop_assert_eq!(parsed.host.as_deref(), Some(host.as_str()));
        prop_assert_eq!(&parsed.protocols, &protocols);

        let chosen = (!offered.is_empty()).then(|| offered[pick.index(offered.len())]);
        let mut resp = Vec::new();
        write_response(&mut resp, &parsed.key, chosen);
        let (r, n) = parse_response(&resp, &key, &HandshakeLimits::default()).unwrap().unwrap();
        prop_assert_eq!(n, resp.len());
        prop_assert_eq!(r.protocol.as_deref(), chosen);
    }
}
