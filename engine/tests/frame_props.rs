//! Property tests for the BlueWren frame codec: round trips through every
//! decoder under any chunking, and no panic or limit breach on any input.

use bluewren_engine::frame::{
    decode, decode_all, decode_header, encode, encoded_len, flags, frames, FrameError, FrameLimits,
    FrameRef, Header, StreamDecoder, HEADER_LEN, VERSION,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn header() -> impl Strategy<Value = Header> {
    (
        any::<u8>(),
        0..=flags::COMPRESSED | flags::DICT,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(kind, flags, conv, seq, cmid)| Header {
            kind,
            flags,
            conv,
            seq,
            cmid,
        })
}

fn message() -> impl Strategy<Value = Vec<(Header, Vec<u8>)>> {
    vec((header(), vec(any::<u8>(), 0..300)), 0..12)
}

fn encode_all(frames: &[(Header, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (h, body) in frames {
        encode(&mut out, h, body);
    }
    out
}

fn owned(f: FrameRef<'_>) -> (Header, Vec<u8>) {
    (f.header, f.body.to_vec())
}

const ROOMY: FrameLimits = FrameLimits { max_body: 300 };

/// Feeds `bytes` to a stream decoder in chunks of the given sizes (cycled),
/// polling after each, through `read_buf`/`commit` or `feed`. Returns the
/// frames and the first error.
fn stream(
    bytes: &[u8],
    chunks: &[usize],
    limits: FrameLimits,
    zero_copy: bool,
) -> (Vec<(Header, Vec<u8>)>, Option<FrameError>) {
    let mut d = StreamDecoder::new(limits);
    let mut got = Vec::new();
    let mut rest = bytes;
    for &size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        if zero_copy {
            d.read_buf(chunk.len())[..chunk.len()].copy_from_slice(chunk);
            d.commit(chunk.len());
        } else {
            d.feed(chunk);
        }
        loop {
            match d.poll() {
                Ok(Some(f)) => got.push(owned(f)),
                Ok(None) => break,
                Err(e) => return (got, Some(e)),
            }
        }
    }
    (got, None)
}

proptest! {
    // Failing cases are kept beside this file, in regressions/.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn encode_then_decode_round_trips(h in header(), body in vec(any::<u8>(), 0..2000)) {
        let mut bytes = Vec::new();
        encode(&mut bytes, &h, &body);
        prop_assert_eq!(bytes.len(), encoded_len(body.len()));
        let limits = FrameLimits { max_body: body.len() };
        let (f, used) = decode(&bytes, &limits).unwrap().unwrap();
        prop_assert_eq!(f.header, h);
        prop_assert_eq!(f.body, &body[..]);
        prop_assert_eq!(used, bytes.len());
    }

    #[test]
    fn message_round_trips_through_decode_all_and_frames(msg in message()) {
        let bytes = encode_all(&msg);
        let all: Vec<_> = decode_all(&bytes, &ROOMY).unwrap().into_iter().map(owned).collect();
        prop_assert_eq!(&all, &msg);
        let iterated: Vec<_> = frames(&bytes, &ROOMY).map(|f| owned(f.unwrap())).collect();
        prop_assert_eq!(&iterated, &msg);
    }

    #[test]
    fn stream_decoder_yields_the_same_frames_for_any_chunking(
        msg in message(),
        chunks in vec(1usize..80, 1..40),
        zero_copy in any::<bool>(),
    ) {
        let bytes = encode_all(&msg);
        let (got, err) = stream(&bytes, &chunks, ROOMY, zero_copy);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, msg);
    }

    #[test]
    fn cutting_a_message_short_is_truncated_unless_on_a_boundary(msg in message(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_all(&msg);
        prop_assume!(!bytes.is_empty());
        let cut = cut.index(bytes.len());
        let mut boundaries = vec![0];
        for (_, body) in &msg {
            boundaries.push(boundaries.last().unwrap() + encoded_len(body.len()));
        }
        match decode_all(&bytes[..cut], &ROOMY) {
            Ok(frames) => {
                prop_assert!(boundaries.contains(&cut));
                prop_assert_eq!(frames.len(), boundaries.iter().position(|&b| b == cut).unwrap());
            }
            Err(FrameError::Truncated { have, need }) => {
                prop_assert!(!boundaries.contains(&cut));
                prop_assert!(have < need);
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn header_verdict_matches_the_spec(bytes in any::<[u8; HEADER_LEN]>(), max_body in any::<u32>()) {
        let limits = FrameLimits { max_body: max_body as usize };
        let len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        let expected = if bytes[0] != VERSION {
            Err(FrameError::BadVersion(bytes[0]))
        } else if bytes[2] & flags::RESERVED != 0 || bytes[3] != 0 {
            Err(FrameError::ReservedBits)
        } else if len > limits.max_body {
            Err(FrameError::TooLarge { len, max: limits.max_body })
        } else {
            Ok(len)
        };
        prop_assert_eq!(decode_header(&bytes, &limits).map(|(_, len)| len), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_decoders_agree(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..400),
            // Valid messages with a few bytes overwritten reach deeper.
            (message(), vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)).prop_map(|(msg, edits)| {
                let mut bytes = encode_all(&msg);
                if !bytes.is_empty() {
                    for (at, v) in edits {
                        let at = at.index(bytes.len());
                        bytes[at] = v;
                    }
                }
                bytes
            }),
        ],
        max_body in 0usize..400,
        chunks in vec(1usize..100, 1..10),
    ) {
        let limits = FrameLimits { max_body };
        if let Some((f, used)) = decode(&bytes, &limits).unwrap_or(None) {
            prop_assert!(f.body.len() <= max_body);
            prop_assert_eq!(used, HEADER_LEN + f.body.len());
            let mut again = Vec::new();
            encode(&mut again, &f.header, f.body);
            prop_assert_eq!(&again[..], &bytes[..used]);
        }
        let iterated: Vec<_> = frames(&bytes, &limits).collect();
        // Only the last item may be an error.
        prop_assert!(iterated.iter().rev().skip(1).all(Result::is_ok));
        let all = decode_all(&bytes, &limits);
        let ok: Vec<_> = iterated.iter().map_while(|r| r.ok().map(owned)).collect();
        let first_err = iterated.iter().find_map(|r| r.err());
        match &all {
            Ok(frames) => prop_assert_eq!(frames.iter().copied().map(owned).collect::<Vec<_>>(), ok.clone()),
            Err(e) => prop_assert_eq!(Some(*e), first_err),
        }
        // A stream sees the same frames, and the same error unless the bytes
        // merely stop early (a stream waits for more instead).
        let (streamed, stream_err) = stream(&bytes, &chunks, limits, true);
        prop_assert_eq!(streamed, ok);
        match first_err {
            Some(FrameError::Truncated { .. }) | None => prop_assert_eq!(stream_err, None),
            Some(e) => prop_assert_eq!(stream_err, Some(e)),
        }
    }
}
