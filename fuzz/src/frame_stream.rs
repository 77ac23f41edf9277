//! `frame_stream`: the BlueWren frame codec, whole-buffer ([`frames`],
//! [`decode_all`], [`decode`]) against streaming ([`StreamDecoder`]).
//!
//! Input: `[body_limit, chunk_seed, chunk_max, mode, bytes..]`. `max_body` is
//! `4 * body_limit` (0..=1020). The bytes are fed to a [`StreamDecoder`] in
//! chunks of [`ChunkSizes`]`(chunk_seed, 2 * chunk_max + 1)`, draining `poll`
//! after each. `mode` bit 0 writes through `read_buf` (asking for
//! `8 * (mode >> 2)` bytes more than the chunk) and `commit` instead of
//! `feed`; bit 1 calls `shrink` after every drain.
//!
//! Invariants:
//! - the stream yields exactly the frames [`frames`] finds in the whole
//!   input, in order, and ends the same way: the same error, or (for a
//!   trailing partial frame, `Truncated { have, .. }`) waiting with `have`
//!   bytes buffered, or with nothing buffered;
//! - [`decode_all`] agrees with [`frames`], [`decode`] with its first item;
//! - the decoded frames, encoded again, are the input bytes they came from;
//! - with every complete frame polled out, less than one frame of `max_body`
//!   is buffered, and `read_buf` never offers more than that frame plus the
//!   largest read asked for;
//! - stream errors are final: the same error repeats, also after more bytes.

use bluewren_engine::frame::{
    decode, decode_all, encode, encoded_len, flags, frames, FrameError, FrameLimits, FrameRef,
    Header, StreamDecoder, HEADER_LEN,
};

use crate::input::{ChunkSizes, Chunks, Input};

/// Runs every invariant of this target on one fuzz input; panics on a breach.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let limits = FrameLimits {
        max_body: usize::from(input.byte()) * 4,
    };
    let sizes = ChunkSizes::new(input.byte(), usize::from(input.byte()) * 2 + 1);
    let mode = input.byte();
    let bytes = input.rest();

    let whole = whole(bytes, &limits);
    let (stream, buffered) = stream(bytes, &limits, sizes, mode);
    assert_eq!(
        stream.frames, whole.frames,
        "the stream and the whole buffer disagree"
    );
    match whole.end {
        Ok(()) => assert_eq!((stream.end, buffered), (Ok(()), 0)),
        Err(FrameError::Truncated { have, .. }) => {
            assert_eq!(
                (stream.end, buffered),
                (Ok(()), have),
                "trailing partial frame"
            );
        }
        Err(err) => assert_eq!(stream.end, Err(err)),
    }
}

/// Frames copied out of a decoder, and how decoding ended.
struct Decoded {
    frames: Vec<(Header, Vec<u8>)>,
    end: Result<(), FrameError>,
}

/// The frames of `bytes` decoded as one message.
fn whole(bytes: &[u8], limits: &FrameLimits) -> Decoded {
    let mut found: Vec<FrameRef<'_>> = Vec::new();
    let mut end = Ok(());
    let mut iter = frames(bytes, limits);
    for item in iter.by_ref() {
        assert!(end.is_ok(), "frames went on after an error");
        match item {
            Ok(frame) => found.push(frame),
            Err(err) => end = Err(err),
        }
    }
    let consumed: usize = found.iter().map(|f| encoded_len(f.body.len())).sum();
    match end {
        Ok(()) => assert_eq!(consumed, bytes.len()),
        Err(_) => assert!(iter.remainder().is_empty(), "remainder after an error"),
    }
    if let Err(FrameError::Truncated { have, need }) = end {
        assert_eq!(have, bytes.len() - consumed, "Truncated.have");
        assert!(have < need, "Truncated {{ have: {have}, need: {need} }}");
    }

    let all = decode_all(bytes, limits);
    match end {
        Ok(()) => assert_eq!(all, Ok(found.clone())),
        Err(err) => assert_eq!(all, Err(err)),
    }
    match decode(bytes, limits) {
        Ok(Some((frame, used))) => {
            assert_eq!(Some(&frame), found.first());
            assert_eq!(used, HEADER_LEN + frame.body.len());
        }
        Ok(None) => assert!(
            found.is_empty() && matches!(end, Ok(()) | Err(FrameError::Truncated { .. })),
            "decode wanted more bytes, frames found {found:?} ending {end:?}"
        ),
        Err(err) => assert!(
            found.is_empty() && end == Err(err),
            "decode failed with {err:?}"
        ),
    }

    let mut again = Vec::new();
    for frame in &found {
        assert_eq!(
            frame.header.flags & flags::RESERVED,
            0,
            "reserved flags passed"
        );
        assert!(
            frame.body.len() <= limits.max_body,
            "body of {}",
            frame.body.len()
        );
        encode(&mut again, &frame.header, frame.body);
    }
    assert_eq!(
        again,
        bytes[..consumed],
        "re-encoded frames differ from their bytes"
    );

    let frames = found.iter().map(|f| (f.header, f.body.to_vec())).collect();
    Decoded { frames, end }
}

/// The frames a [`StreamDecoder`] yields for `bytes` fed in chunks, and how
/// many bytes it still buffers at the end.
fn stream(bytes: &[u8], limits: &FrameLimits, sizes: ChunkSizes, mode: u8) -> (Decoded, usize) {
    let extra = usize::from(mode >> 2) * 8;
    let largest_frame = encoded_len(limits.max_body);
    let mut dec = StreamDecoder::new(*limits);
    let mut got = Vec::new();
    let mut largest_read = 0;
    for chunk in Chunks::new(bytes, sizes) {
        largest_read = largest_read.max(chunk.len() + extra);
        if mode & 1 == 0 {
            dec.feed(chunk);
        } else {
            let want = chunk.len() + extra;
            let spare = dec.read_buf(want);
            assert!(spare.len() >= want, "read_buf({want}) gave {}", spare.len());
            assert!(
                spare.len() <= largest_frame + largest_read,
                "read_buf({want}) offered {} bytes with max_body {}",
                spare.len(),
                limits.max_body
            );
            spare[..chunk.len()].copy_from_slice(chunk);
            dec.commit(chunk.len());
        }
        loop {
            match dec.poll() {
                Ok(Some(frame)) => got.push((frame.header, frame.body.to_vec())),
                Ok(None) => break,
                Err(err) => {
                    assert_eq!(dec.poll(), Err(err), "error is not final");
                    let mut valid = Vec::new();
                    encode(&mut valid, &Header::default(), b"");
                    dec.feed(&valid);
                    assert_eq!(dec.poll(), Err(err), "error is not final after more bytes");
                    let end = Err(err);
                    return (Decoded { frames: got, end }, dec.buffered());
                }
            }
        }
        assert!(
            dec.buffered() < largest_frame,
            "{} bytes buffered after draining, max_body {}",
            dec.buffered(),
            limits.max_body
        );
        if mode & 2 != 0 {
            let before = dec.buffered();
            dec.shrink();
            assert_eq!(dec.buffered(), before, "shrink dropped bytes");
        }
    }
    let end = Ok(());
    (Decoded { frames: got, end }, dec.buffered())
}
