//! The opening handshake (RFC 6455 section 4): an HTTP/1.1 `GET` with
//! `Upgrade: websocket`, answered by `101 Switching Protocols`.
//!
//! ```text
//! GET /chat HTTP/1.1                      HTTP/1.1 101 Switching Protocols
//! Host: example.com                       Upgrade: websocket
//! Upgrade: websocket                      Connection: Upgrade
//! Connection: Upgrade                     Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
//! Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==
//! Sec-WebSocket-Version: 13               (accept = base64(SHA-1(key + GUID)))
//! Sec-WebSocket-Protocol: chat, superchat
//! ```
//!
//! Parsing is strict and bounded: the head must end within
//! [`HandshakeLimits::max_request_bytes`] and hold at most
//! [`HandshakeLimits::max_headers`] header lines, lines end with CRLF, header
//! names are HTTP tokens and values hold no control characters. Nothing is
//! allocated until the whole head is in and within the limits. Header names
//! are case-insensitive; [`Request::headers`] keeps them lowercased, values
//! trimmed, in order.

use std::fmt;
use std::io::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use self::HandshakeError::{Malformed, NotWebSocket};

/// The GUID every server appends to the client's key (RFC 6455 section 1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bounds on the size of a handshake head, enforced before parsing it.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeLimits {
    /// Largest head in bytes, blank line included (default 8192).
    pub max_request_bytes: usize,
    /// Most header lines (default 64).
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: 8192,
            max_headers: 64,
        }
    }
}

/// A validated upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The request target, e.g. `/chat?room=1`; always starts with `/`.
    pub path: String,
    /// The `Host` header, if present.
    pub host: Option<String>,
    /// The `Origin` header (sent by browsers), if present.
    pub origin: Option<String>,
    /// `Sec-WebSocket-Key`: base64 of 16 bytes, already checked.
    pub key: String,
    /// Offered subprotocols, in the client's order.
    pub protocols: Vec<String>,
    /// Offered extensions, each with its parameters (e.g.
    /// `permessage-deflate; client_max_window_bits`).
    pub extensions: Vec<String>,
    /// Every header line in order: lowercased name, trimmed value.
    pub headers: Vec<(String, String)>,
}

/// A validated `101` response, as seen by a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Always 101: other statuses are [`HandshakeError::BadStatus`].
    pub status: u16,
    /// The subprotocol the server chose, if any.
    pub protocol: Option<String>,
}

/// Why a handshake was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The head did not end within `max_request_bytes`.
    TooLarge,
    /// The head has more than `max_headers` header lines.
    TooManyHeaders,
    /// Not valid HTTP/1.1; the text says what is wrong.
    Malformed(&'static str),
    /// Valid HTTP but not a WebSocket upgrade; the text says what is missing.
    NotWebSocket(&'static str),
    /// `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion,
    /// The server answered with this status instead of 101.
    BadStatus(u16),
    /// The server's `Sec-WebSocket-Accept` does not match our key.
    BadAccept,
}

impl HandshakeError {
    /// The HTTP status to reject a request with: 431 when too large, 426 for
    /// an unsupported version (send it with [`write_rejection`], which adds
    /// `Sec-WebSocket-Version: 13`), else 400.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge | Self::TooManyHeaders => 431,
            Self::UnsupportedVersion => 426,
            _ => 400,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => f.write_str("handshake head exceeds max_request_bytes"),
            Self::TooManyHeaders => f.write_str("handshake has more header lines than max_headers"),
            Self::Malformed(what) => write!(f, "malformed handshake: {what}"),
            Self::NotWebSocket(what) => write!(f, "not a WebSocket handshake: {what}"),
            Self::UnsupportedVersion => f.write_str("unsupported Sec-WebSocket-Version (use 13)"),
            Self::BadStatus(status) => write!(f, "server answered HTTP {status} instead of 101"),
            Self::BadAccept => f.write_str("Sec-WebSocket-Accept does not match the key sent"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Parses and validates a client's upgrade request.
///
/// `Ok(None)`: the blank line ending the head has not arrived yet (and `buf`
/// is still under `max_request_bytes`). `Ok(Some((request, consumed)))`:
/// `consumed` is the length of the head, blank line included; any bytes after
/// it are already WebSocket frames.
pub fn parse_request(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(Request, usize)>, HandshakeError> {
    let Some(end) = head_end(buf, limits.max_request_bytes)? else {
        return Ok(None);
    };
    let (start, fields) = split_head(&buf[..end], limits.max_headers)?;

    let mut parts = start.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed("request line is not `METHOD TARGET VERSION`"));
    };
    if !target.starts_with(b"/") || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Malformed("request target must be a path starting with /"));
    }
    if method != b"GET" {
        return Err(NotWebSocket("method must be GET"));
    }
    if version != b"HTTP/1.1" {
        return Err(NotWebSocket("HTTP version must be 1.1"));
    }

    let (mut upgrade, mut connection) = (false, false);
    let (mut host, mut origin, mut key, mut ws_version) = (None, None, None, None);
    let (mut protocols, mut extensions) = (Vec::new(), Vec::new());
    for &(name, value) in &fields {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("upgrade") {
            upgrade |= has_token(value, "websocket");
        } else if is("connection") {
            connection |= has_token(value, "upgrade");
        } else if is("host") {
            once(&mut host, value, "duplicate Host header")?;
        } else if is("origin") {
            once(&mut origin, value, "duplicate Origin header")?;
        } else if is("sec-websocket-key") {
            once(&mut key, value, "duplicate Sec-WebSocket-Key header")?;
        } else if is("sec-websocket-version") {
            once(
                &mut ws_version,
                value,
                "duplicate Sec-WebSocket-Version header",
            )?;
        } else if is("sec-websocket-protocol") {
            for p in list(value) {
                if !is_token(p) {
                    return Err(Malformed("subprotocol is not a token"));
                }
                protocols.push(text(p));
            }
        } else if is("sec-websocket-extensions") {
            extensions.extend(list(value).map(text));
        }
    }
    if !upgrade {
        return Err(NotWebSocket("missing `Upgrade: websocket`"));
    }
    if !connection {
        return Err(NotWebSocket("missing `Connection: Upgrade`"));
    }
    match ws_version {
        None => return Err(NotWebSocket("missing Sec-WebSocket-Version")),
        Some(v) if v != b"13" => return Err(HandshakeError::UnsupportedVersion),
        Some(_) => {}
    }
    let key = key.ok_or(NotWebSocket("missing Sec-WebSocket-Key"))?;
    if !is_valid_key(key) {
        return Err(NotWebSocket("Sec-WebSocket-Key is not base64 of 16 bytes"));
    }

    let request = Request {
        path: text(target),
        host: host.map(text),
        origin: origin.map(text),
        key: text(key),
        protocols,
        extensions,
        headers: fields
            .iter()
            .map(|&(name, value)| {
                (
                    String::from_utf8_lossy(name).to_ascii_lowercase(),
                    text(value),
                )
            })
            .collect(),
    };
    Ok(Some((request, end)))
}

/// `Sec-WebSocket-Accept` for a client's key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    STANDARD.encode(key_digest(key))
}

/// A `Sec-WebSocket-Key` for a client request: base64 of 16 random bytes
/// chosen by the caller (a fresh nonce per connection).
pub fn client_key(nonce: [u8; 16]) -> String {
    STANDARD.encode(nonce)
}

/// The first of the server's `supported` subprotocols (in its preference
/// order) that the client `offered`, compared exactly.
pub fn select_subprotocol<'a>(offered: &[String], supported: &[&'a str]) -> Option<&'a str> {
    supported
        .iter()
        .copied()
        .find(|s| offered.iter().any(|o| o == s))
}

/// Appends the `101 Switching Protocols` response for a request's `key`.
///
/// `protocol` should come from [`select_subprotocol`]; a value that is not an
/// HTTP token could never have been offered and is left out.
pub fn write_response(out: &mut Vec<u8>, key: &str, protocol: Option<&str>) {
    let mut accept = [0u8; 28];
    // 20 digest bytes encode to exactly 28, so this cannot fail.
    let n = STANDARD
        .encode_slice(key_digest(key), &mut accept)
        .unwrap_or(0);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept[..n]);
    if let Some(p) = protocol.filter(|p| is_token(p.as_bytes())) {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends an HTTP error response that refuses the upgrade and closes the
/// connection, with `reason` as a plain-text body. A 426 also carries
/// `Sec-WebSocket-Version: 13`, telling the client which version to use.
pub fn write_rejection(out: &mut Vec<u8>, status: u16, reason: &str) {
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nConnection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        reason_phrase(status),
        reason.len()
    );
    if status == 426 {
        out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(reason.as_bytes());
}

/// Appends a client's upgrade request. `key` should come from [`client_key`];
/// `protocols` are offered in order, none if empty.
pub fn write_client_request(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    key: &str,
    protocols: &[&str],
) {
    let _ = write!(
        out,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some((first, rest)) = protocols.split_first() {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(first.as_bytes());
        for p in rest {
            out.extend_from_slice(b", ");
            out.extend_from_slice(p.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses and validates a server's answer to a request sent with
/// `expected_key`. Returns like [`parse_request`]. No extension is ever
/// offered, so a response that enables one is refused.
pub fn parse_response(
    buf: &[u8],
    expected_key: &str,
    limits: &HandshakeLimits,
) -> Result<Option<(Response, usize)>, HandshakeError> {
    let Some(end) = head_end(buf, limits.max_request_bytes)? else {
        return Ok(None);
    };
    let (start, fields) = split_head(&buf[..end], limits.max_headers)?;

    let status = match start {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'1', b' ', a, b, c, rest @ ..]
            if [a, b, c].iter().all(|d| d.is_ascii_digit())
                && (rest.is_empty() || rest[0] == b' ') =>
        {
            [a, b, c]
                .iter()
                .fold(0u16, |n, &&d| n * 10 + u16::from(d - b'0'))
        }
        _ => return Err(Malformed("status line is not `HTTP/1.1 NNN reason`")),
    };
    if status != 101 {
        return Err(HandshakeError::BadStatus(status));
    }

    let (mut upgrade, mut connection) = (false, false);
    let (mut accept, mut protocol) = (None, None);
    for &(name, value) in &fields {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("upgrade") {
            upgrade |= has_token(value, "websocket");
        } else if is("connection") {
            connection |= has_token(value, "upgrade");
        } else if is("sec-websocket-accept") {
            once(&mut accept, value, "duplicate Sec-WebSocket-Accept header")?;
        } else if is("sec-websocket-protocol") {
            once(
                &mut protocol,
                value,
                "duplicate Sec-WebSocket-Protocol header",
            )?;
        } else if is("sec-websocket-extensions") && list(value).next().is_some() {
            return Err(NotWebSocket("server enabled an extension not offered"));
        }
    }
    if !upgrade {
        return Err(NotWebSocket("missing `Upgrade: websocket`"));
    }
    if !connection {
        return Err(NotWebSocket("missing `Connection: Upgrade`"));
    }
    if accept != Some(accept_key(expected_key).as_bytes()) {
        return Err(HandshakeError::BadAccept);
    }
    if protocol.is_some_and(|p| !is_token(p)) {
        return Err(Malformed("subprotocol is not a single token"));
    }
    Ok(Some((
        Response {
            status,
            protocol: protocol.map(text),
        },
        end,
    )))
}

fn key_digest(key: &str) -> [u8; 20] {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID);
    sha.digest().bytes()
}

/// The length of the head (through the blank line), if it is all in.
fn head_end(buf: &[u8], max: usize) -> Result<Option<usize>, HandshakeError> {
    let window = &buf[..buf.len().min(max)];
    match window.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => Ok(Some(i + 4)),
        None if buf.len() >= max => Err(HandshakeError::TooLarge),
        None => Ok(None),
    }
}

type Field<'a> = (&'a [u8], &'a [u8]);

/// Splits a complete head into its start line and its `(name, value)` fields.
fn split_head(head: &[u8], max_headers: usize) -> Result<(&[u8], Vec<Field<'_>>), HandshakeError> {
    let body = &head[..head.len() - 2]; // every line keeps its own CRLF
    let mut lines = body.split_inclusive(|&b| b == b'\n').map(|line| {
        line.strip_suffix(b"\r\n")
            .filter(|l| !l.contains(&b'\r'))
            .ok_or(Malformed("line not ended by CRLF"))
    });
    let start = lines.next().unwrap_or(Ok(b""))?;
    let mut fields = Vec::new();
    for line in lines {
        if fields.len() == max_headers {
            return Err(HandshakeError::TooManyHeaders);
        }
        fields.push(parse_field(line?)?);
    }
    Ok((start, fields))
}

fn parse_field(line: &[u8]) -> Result<Field<'_>, HandshakeError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(Malformed("header line without a colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if !is_token(name) {
        return Err(Malformed("header name is not a token"));
    }
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7F) {
        return Err(Malformed("control character in a header value"));
    }
    Ok((name, value.trim_ascii()))
}

/// Stores the value of a header that may appear only once.
fn once<'a>(
    slot: &mut Option<&'a [u8]>,
    value: &'a [u8],
    dup: &'static str,
) -> Result<(), HandshakeError> {
    match slot.replace(value) {
        Some(_) => Err(Malformed(dup)),
        None => Ok(()),
    }
}

/// The non-empty elements of a comma-separated header value.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn has_token(value: &[u8], token: &str) -> bool {
    list(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// An HTTP token (RFC 9110 section 5.6.2): one or more `tchar`s.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_valid_key(key: &[u8]) -> bool {
    let mut nonce = [0u8; 18];
    key.len() == 24 && STANDARD.decode_slice(key, &mut nonce) == Ok(16)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(extra: &str) -> String {
        format!(
            "GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn parse(req: &str) -> Result<Option<(Request, usize)>, HandshakeError> {
        parse_request(req.as_bytes(), &HandshakeLimits::default())
    }

    fn parse_err(req: &str) -> HandshakeError {
        parse(req).expect_err("request accepted")
    }

    #[test]
    fn rfc_sample_key_gives_rfc_accept() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn valid_request_parses_every_field() {
        let raw = request("Origin: https://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Protocol: v2\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo\r\n");
        let (req, consumed) = parse(&raw).unwrap().unwrap();
        assert_eq!(consumed, raw.len());
        assert_eq!(req.path, "/chat?room=1");
        assert_eq!(req.host.as_deref(), Some("example.com"));
        assert_eq!(req.origin.as_deref(), Some("https://example.com"));
        assert_eq!(req.key, KEY);
        assert_eq!(req.protocols, ["chat", "superchat", "v2"]);
        assert_eq!(
            req.extensions,
            ["permessage-deflate; client_max_window_bits", "x-foo"]
        );
        assert_eq!(req.headers.len(), 9);
        assert_eq!(req.headers[0], ("host".into(), "example.com".into()));
    }

    #[test]
    fn consumed_stops_at_the_blank_line() {
        let mut raw = request("").into_bytes();
        let head = raw.len();
        raw.extend_from_slice(b"\x81\x80frame bytes");
        let (_, consumed) = parse_request(&raw, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(consumed, head);
    }

    #[test]
    fn incomplete_request_needs_more_bytes_at_every_cut() {
        let raw = request("");
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn oversized_request_is_too_large() {
        let limits = HandshakeLimits {
            max_request_bytes: 100,
            max_headers: 64,
        };
        let raw = request(
            "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
        assert_eq!(
            parse_request(raw.as_bytes(), &limits),
            Err(HandshakeError::TooLarge)
        );
        assert_eq!(
            parse_request(&raw.as_bytes()[..100], &limits),
            Err(HandshakeError::TooLarge)
        );
        assert_eq!(parse_request(&raw.as_bytes()[..99], &limits), Ok(None));
        assert_eq!(HandshakeError::TooLarge.status(), 431);
    }

    #[test]
    fn request_exactly_at_the_size_limit_parses() {
        let raw = request("");
        let limits = HandshakeLimits {
            max_request_bytes: raw.len(),
            max_headers: 64,
        };
        assert!(parse_request(raw.as_bytes(), &limits).unwrap().is_some());
    }

    #[test]
    fn too_many_headers_is_refused() {
        let raw = request("A: 1\r\nB: 2\r\n"); // 5 + 2 header lines
        let limits = HandshakeLimits {
            max_request_bytes: 8192,
            max_headers: 6,
        };
        let err = parse_request(raw.as_bytes(), &limits).unwrap_err();
        assert_eq!(
            (err.clone(), err.status()),
            (HandshakeError::TooManyHeaders, 431)
        );
        let limits = HandshakeLimits {
            max_headers: 7,
            ..limits
        };
        assert!(parse_request(raw.as_bytes(), &limits).unwrap().is_some());
    }

    #[test]
    fn missing_key_is_refused() {
        let raw = request("").replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "");
        assert_eq!(
            parse_err(&raw),
            HandshakeError::NotWebSocket("missing Sec-WebSocket-Key")
        );
    }

    #[test]
    fn key_that_is_not_16_base64_bytes_is_refused() {
        for bad in [
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZXg=",
            "dGhlIHNhbXBsZSBub25j!Q==",
            "",
        ] {
            let raw = request("").replace(KEY, bad);
            assert!(
                matches!(parse_err(&raw), HandshakeError::NotWebSocket(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn wrong_version_is_426() {
        let raw = request("").replace("Version: 13", "Version: 8");
        let err = parse_err(&raw);
        assert_eq!(
            (err.clone(), err.status()),
            (HandshakeError::UnsupportedVersion, 426)
        );
    }

    #[test]
    fn non_get_is_refused() {
        let raw = request("").replacen("GET", "POST", 1);
        let err = parse_err(&raw);
        assert_eq!(err, HandshakeError::NotWebSocket("method must be GET"));
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn http_1_0_is_refused() {
        let raw = request("").replacen("HTTP/1.1", "HTTP/1.0", 1);
        assert_eq!(
            parse_err(&raw),
            HandshakeError::NotWebSocket("HTTP version must be 1.1")
        );
    }

    #[test]
    fn upgrade_and_connection_tokens_are_case_insensitive_lists() {
        let raw = request("")
            .replace("Upgrade: websocket", "Upgrade: h2c, WebSocket")
            .replace("keep-alive, Upgrade", "keep-alive,UPGRADE");
        assert!(parse(&raw).unwrap().is_some());
    }

    #[test]
    fn missing_upgrade_or_connection_token_is_refused() {
        let raw = request("").replace("Upgrade: websocket", "Upgrade: websockets");
        assert!(matches!(parse_err(&raw), HandshakeError::NotWebSocket(_)));
        let raw = request("").replace("keep-alive, Upgrade", "keep-alive");
        assert!(matches!(parse_err(&raw), HandshakeError::NotWebSocket(_)));
    }

    #[test]
    fn malformed_lines_are_refused() {
        for (from, to) in [
            ("Host: example.com\r\n", "Host: example.com\n"),
            ("Host: example.com", " Host: example.com"),
            ("Host: example.com", "Host example.com"),
            ("Host: example.com", "Ho st: example.com"),
            ("Host: example.com", "Host: exa\x01mple.com"),
            ("Host: example.com", "Host: exa\rmple.com"),
            ("/chat?room=1", "chat"),
            ("GET /chat?room=1 HTTP/1.1", "GET  /chat HTTP/1.1"),
        ] {
            let raw = request("").replace(from, to);
            assert!(
                matches!(parse_err(&raw), HandshakeError::Malformed(_)),
                "{to:?}"
            );
        }
    }

    #[test]
    fn duplicate_key_is_refused() {
        let raw = request(&format!("Sec-WebSocket-Key: {KEY}\r\n"));
        assert!(matches!(parse_err(&raw), HandshakeError::Malformed(_)));
    }

    #[test]
    fn subprotocol_follows_server_preference() {
        let offered = vec!["chat".to_string(), "v2".to_string()];
        assert_eq!(select_subprotocol(&offered, &["v2", "chat"]), Some("v2"));
        assert_eq!(select_subprotocol(&offered, &["v3", "chat"]), Some("chat"));
        assert_eq!(select_subprotocol(&offered, &["v3"]), None);
        assert_eq!(select_subprotocol(&[], &["chat"]), None);
        assert_eq!(select_subprotocol(&offered, &["CHAT"]), None);
    }

    #[test]
    fn response_carries_accept_and_protocol() {
        let mut out = Vec::new();
        write_response(&mut out, KEY, Some("chat"));
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
        );
    }

    #[test]
    fn response_omits_a_protocol_that_is_not_a_token() {
        let mut out = Vec::new();
        write_response(&mut out, KEY, Some("evil\r\nSet-Cookie: x"));
        assert!(!out.windows(6).any(|w| w == b"Cookie"));
    }

    #[test]
    fn rejection_426_names_the_supported_version() {
        let mut out = Vec::new();
        write_rejection(&mut out, 426, "use version 13");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with(
            "\r\nContent-Length: 14\r\nSec-WebSocket-Version: 13\r\n\r\nuse version 13"
        ));
    }

    #[test]
    fn rejection_400_has_no_version_header() {
        let mut out = Vec::new();
        write_rejection(&mut out, 400, "");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(!text.contains("Sec-WebSocket-Version"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn client_request_is_accepted_by_the_server_parser() {
        let key = client_key(*b"0123456789abcdef");
        let mut out = Vec::new();
        write_client_request(&mut out, "localhost:8080", "/ws", &key, &["chat", "v2"]);
        let (req, n) = parse_request(&out, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(n, out.len());
        assert_eq!((req.path.as_str(), req.key.as_str()), ("/ws", key.as_str()));
        assert_eq!(req.host.as_deref(), Some("localhost:8080"));
        assert_eq!(req.protocols, ["chat", "v2"]);
    }

    #[test]
    fn server_response_is_accepted_by_the_client_parser() {
        let mut out = Vec::new();
        write_response(&mut out, KEY, Some("chat"));
        let (resp, n) = parse_response(&out, KEY, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(n, out.len());
        assert_eq!(
            resp,
            Response {
                status: 101,
                protocol: Some("chat".into())
            }
        );
        for cut in 0..out.len() {
            assert_eq!(
                parse_response(&out[..cut], KEY, &HandshakeLimits::default()),
                Ok(None)
            );
        }
    }

    #[test]
    fn response_for_another_key_is_bad_accept() {
        let mut out = Vec::new();
        write_response(&mut out, KEY, None);
        let other = client_key([7; 16]);
        assert_eq!(
            parse_response(&out, &other, &HandshakeLimits::default()),
            Err(HandshakeError::BadAccept)
        );
    }

    #[test]
    fn rejection_is_bad_status_for_the_client() {
        let mut out = Vec::new();
        write_rejection(&mut out, 403, "no");
        assert_eq!(
            parse_response(&out, KEY, &HandshakeLimits::default()),
            Err(HandshakeError::BadStatus(403))
        );
    }

    #[test]
    fn response_enabling_an_extension_is_refused() {
        let mut out = Vec::new();
        write_response(&mut out, KEY, None);
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
        assert!(matches!(
            parse_response(&out, KEY, &HandshakeLimits::default()),
            Err(HandshakeError::NotWebSocket(_))
        ));
    }

    #[test]
    fn errors_explain_themselves() {
        assert_eq!(
            HandshakeError::NotWebSocket("method must be GET").to_string(),
            "not a WebSocket handshake: method must be GET"
        );
        assert_eq!(
            HandshakeError::BadStatus(503).to_string(),
            "server answered HTTP 503 instead of 101"
        );
    }
}
