//! `ws_handshake`: the HTTP/1.1 upgrade parsers, [`parse_request`] and
//! [`parse_response`].
//!
//! Input: `[size_limit, header_limit, head..]`. `max_request_bytes` is
//! `4 * size_limit` (0..=1020) and `max_headers` is `header_limit % 32`. The
//! head is parsed as a client's request and as a server's answer to a request
//! sent with the RFC 6455 sample key ([`KEY`]).
//!
//! Invariants, for both parsers:
//! - `Ok(None)` only while the head is shorter than the limit and holds no
//!   blank line; [`HandshakeError::TooLarge`] only when it is at least the
//!   limit and the blank line is not within it; any other answer only when
//!   the blank line is within the limit;
//! - a parsed head's `consumed` is the end of its first blank line, at most
//!   the input length and the limit; the head alone parses the same, and one
//!   byte less is `Ok(None)`;
//! - a refusal maps to HTTP 400, 426 or 431, and [`write_rejection`] with
//!   that status writes a response that [`parse_response`] reports as that
//!   status.
//!
//! For a parsed request: at most `max_headers` headers, a path starting with
//! `/`, a 24-character key; the 101 response written for it (with the last
//! offered subprotocol) parses back with that subprotocol, and the request
//! rewritten with [`write_client_request`] parses back to the same path, host,
//! key and subprotocols. A parsed response has status 101.

use bluewren_engine::ws::{
    parse_request, parse_response, select_subprotocol, write_client_request, write_rejection,
    write_response, HandshakeError, HandshakeLimits, Request, Response,
};

use crate::input::Input;

/// The `Sec-WebSocket-Key` of RFC 6455's example, which responses answer.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Runs every invariant of this target on one fuzz input; panics on a breach.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let limits = HandshakeLimits {
        max_request_bytes: usize::from(input.byte()) * 4,
        max_headers: usize::from(input.byte() % 32),
    };
    let head = input.rest();

    let request = parse_request(head, &limits);
    check_framing(head, &limits, &request, |h| parse_request(h, &limits));
    if let Ok(Some((req, _))) = &request {
        check_request(req, &limits);
    }

    let response = parse_response(head, KEY, &limits);
    check_framing(head, &limits, &response, |h| {
        parse_response(h, KEY, &limits)
    });
    match &response {
        Ok(Some((resp, _))) => {
            assert_eq!(resp.status, 101);
            if let Some(p) = &resp.protocol {
                assert!(!p.is_empty() && !p.contains([',', ' ']), "protocol {p:?}");
            }
        }
        Err(HandshakeError::BadStatus(status)) => assert!(*status != 101 && *status <= 999),
        _ => {}
    }
}

/// The length of `head` through its first blank line, if it has one.
fn head_end(head: &[u8]) -> Option<usize> {
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Checks where a parse stopped, and what it answered, against the input.
fn check_framing<T: PartialEq + std::fmt::Debug>(
    head: &[u8],
    limits: &HandshakeLimits,
    result: &Result<Option<(T, usize)>, HandshakeError>,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, HandshakeError>,
) {
    let max = limits.max_request_bytes;
    let end = head_end(head);
    match result {
        Ok(None) => {
            assert!(end.is_none(), "a complete head was reported incomplete");
            assert!(
                head.len() < max,
                "an oversized head was reported incomplete"
            );
        }
        Err(HandshakeError::TooLarge) => {
            assert!(head.len() >= max, "a head under the limit was too large");
            assert!(
                end.is_none_or(|e| e > max),
                "a head within the limit was too large"
            );
        }
        Err(err) => {
            assert!(
                end.is_some_and(|e| e <= max),
                "{err:?} before the head was in"
            );
            check_rejection(err);
        }
        Ok(Some((_, used))) => {
            assert_eq!(Some(*used), end, "consumed is not the end of the head");
            assert!(*used <= head.len() && *used <= max, "consumed {used}");
            assert_eq!(
                &parse(&head[..*used]),
                result,
                "bytes after the head mattered"
            );
            assert_eq!(
                parse(&head[..*used - 1]),
                Ok(None),
                "a head without its last byte"
            );
        }
    }
}

/// Checks the status of a refusal and the rejection response written for it.
fn check_rejection(err: &HandshakeError) {
    let status = err.status();
    assert!(
        matches!(status, 400 | 426 | 431),
        "{err:?} maps to {status}"
    );
    let mut out = Vec::new();
    write_rejection(&mut out, status, &err.to_string());
    assert_eq!(
        parse_response(&out, KEY, &HandshakeLimits::default()),
        Err(HandshakeError::BadStatus(status)),
        "rejection {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// Checks a parsed request and round-trips it through the writers.
fn check_request(req: &Request, limits: &HandshakeLimits) {
    assert!(
        req.headers.len() <= limits.max_headers,
        "{} headers",
        req.headers.len()
    );
    assert!(req.path.starts_with('/'), "path {:?}", req.path);
    assert_eq!(req.key.len(), 24, "key {:?}", req.key);

    let preferred: Vec<&str> = req.protocols.iter().rev().map(String::as_str).collect();
    let protocol = select_subprotocol(&req.protocols, &preferred);
    assert_eq!(protocol, req.protocols.last().map(String::as_str));
    let mut out = Vec::new();
    write_response(&mut out, &req.key, protocol);
    let exact = HandshakeLimits {
        max_request_bytes: out.len(),
        max_headers: 8,
    };
    let expected = Response {
        status: 101,
        protocol: protocol.map(str::to_owned),
    };
    assert_eq!(
        parse_response(&out, &req.key, &exact),
        Ok(Some((expected, out.len()))),
        "101 response {:?}",
        String::from_utf8_lossy(&out)
    );

    let host = req.host.as_deref().unwrap_or("localhost");
    let protocols: Vec<&str> = req.protocols.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    write_client_request(&mut out, host, &req.path, &req.key, &protocols);
    let exact = HandshakeLimits {
        max_request_bytes: out.len(),
        max_headers: 8,
    };
    let again = match parse_request(&out, &exact) {
        Ok(Some((again, used))) if used == out.len() => again,
        other => panic!(
            "rewritten request {:?} parses as {other:?}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(again.path, req.path);
    assert_eq!(again.host.as_deref(), Some(host));
    assert_eq!(again.key, req.key);
    assert_eq!(again.protocols, req.protocols);
}
