//! `bluewren-room-baseline`: the room protocol served the plain way, as the
//! reference point of the end-to-end benchmarks. One thread, epoll
//! (edge-triggered), RFC 6455 via the engine. Every binary message is
//! encoded once as an unmasked frame and written with one `write()` per other
//! member of the room: no coalescing across messages or recipients. Bytes a
//! recipient's socket does not take wait in its outbox (bounded by
//! `max_outbox`: past it the recipient is dropped as a slow consumer) and
//! later messages queue behind them, keeping order.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use bluewren_engine::ws::{
    self, close_code, Decoder, Event, HandshakeLimits, OpCode, Role, WsLimits,
};

use crate::sys::{self, Epoll, EDGE, HANGUP, READABLE, WRITABLE};

/// Default `max_outbox`: bytes queued for one recipient before it is dropped.
pub const DEFAULT_MAX_OUTBOX: usize = 16 << 20;
/// Largest message accepted from a client.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Listen backlog asked for (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;
const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
const FIRST_PEER: u64 = 2;
/// Smallest read: also each connection's buffer size, as long as messages are
/// smaller (the decoder grows it only for bigger ones), so an idle connection
/// costs a few KiB.
const READ_CHUNK: usize = 4 << 10;

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on.
    pub host: IpAddr,
    /// Port (0: any free port; the READY line tells which).
    pub port: u16,
    /// Bytes queued for one recipient before it is dropped.
    pub max_outbox: usize,
}

struct Peer {
    stream: TcpStream,
    /// Handshake bytes until the upgrade, then empty.
    hs: Vec<u8>,
    room: Option<usize>,
    dec: Decoder,
    out: Vec<u8>,
    out_pos: usize,
}

struct Server {
    ep: Epoll,
    peers: Vec<Option<Peer>>,
    free: Vec<usize>,
    rooms: Vec<Vec<usize>>,
    room_ids: HashMap<String, usize>,
    frame: Vec<u8>,
    max_outbox: usize,
}

fn room_of(path: &str) -> Option<&str> {
    let query = path.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("room="))
        .filter(|r| !r.is_empty())
}

impl Server {
    fn close(&mut self, p: usize) {
        let Some(peer) = self.peers[p].take() else {
            return;
        };
        let _ = self.ep.delete(peer.stream.as_raw_fd());
        if let Some(r) = peer.room {
            let members = &mut self.rooms[r];
            if let Some(at) = members.iter().position(|&m| m == p) {
                members.swap_remove(at);
            }
        }
        self.free.push(p);
    }

    /// Writes `peer.out` until done or the socket is full; false on error.
    fn flush(peer: &mut Peer) -> bool {
        sys::flush_out(&peer.stream, &mut peer.out, &mut peer.out_pos).is_ok()
    }

    /// Sends `self.frame` to peer `q` with one write() (or queues it behind
    /// bytes already waiting); false if `q` must be dropped (an error, or
    /// more than `max_outbox` bytes would wait).
    fn send_to(peer: &mut Peer, frame: &[u8], max_outbox: usize) -> bool {
        if peer.out_pos < peer.out.len() {
            if peer.out.len() - peer.out_pos + frame.len() > max_outbox {
                return false;
            }
            peer.out.extend_from_slice(frame);
            return true;
        }
        // A full flush leaves `out` empty (sys::flush_out clears it).
        debug_assert!(peer.out.is_empty() && peer.out_pos == 0);
        loop {
            match (&peer.stream).write(frame) {
                Ok(n) if n == frame.len() => return true,
                Ok(0) => return false,
                Ok(n) => {
                    peer.out.extend_from_slice(&frame[n..]);
                    return frame.len() - n <= max_outbox;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    peer.out.extend_from_slice(frame);
                    return frame.len() <= max_outbox;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn accept(&mut self, listener: &TcpListener) {
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of fds and the like: report and keep serving.
                    eprintln!("bluewren-room-baseline: accept: {e}");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                continue;
            }
            let p = self.free.pop().unwrap_or_else(|| {
                self.peers.push(None);
                self.peers.len() - 1
            });
            let bits = READABLE | WRITABLE | HANGUP | EDGE;
            if self
                .ep
                .add(stream.as_raw_fd(), bits, FIRST_PEER + p as u64)
                .is_err()
            {
                self.free.push(p);
                continue;
            }
            let limits = WsLimits {
                max_frame_size: MAX_MESSAGE,
                max_message_size: MAX_MESSAGE,
            };
            self.peers[p] = Some(Peer {
                stream,
                hs: Vec::new(),
                room: None,
                dec: Decoder::new(Role::Server, limits),
                out: Vec::new(),
                out_pos: 0,
            });
        }
    }

    fn on_peer(&mut self, p: usize, bits: u32) {
        let Some(peer) = self.peers[p].as_mut() else {
            return;
        };
        if bits & WRITABLE != 0 && !Self::flush(peer) {
            return self.close(p);
        }
        if bits & (READABLE | HANGUP) != 0 {
            self.read(p, bits);
        }
    }

    /// Reads peer `p` until the socket is drained; `bits` are the event's.
    fn read(&mut self, p: usize, bits: u32) {
        loop {
            let Some(peer) = self.peers[p].as_mut() else {
                return;
            };
            if peer.room.is_none() {
                let mut tmp = [0u8; 4096];
                match (&peer.stream).read(&mut tmp) {
                    Ok(0) => return self.close(p),
                    Ok(n) => peer.hs.extend_from_slice(&tmp[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.close(p),
                }
                match ws::parse_request(&peer.hs, &HandshakeLimits::default()) {
                    Ok(None) => continue,
                    Err(e) => {
                        ws::write_rejection(&mut peer.out, e.status(), &e.to_string());
                        Self::flush(peer);
                        return self.close(p);
                    }
                    Ok(Some((req, used))) => {
                        let Some(room) = room_of(&req.path) else {
                            ws::write_rejection(&mut peer.out, 400, "missing ?room=NAME");
                            Self::flush(peer);
                            return self.close(p);
                        };
                        let next = self.rooms.len();
                        let r = *self.room_ids.entry(room.to_string()).or_insert(next);
                        if r == next {
                            self.rooms.push(Vec::new());
                        }
                        self.rooms[r].push(p);
                        peer.room = Some(r);
                        let rest = peer.hs.split_off(used);
                        peer.hs = Vec::new();
                        peer.dec.feed(&rest);
                        ws::write_response(&mut peer.out, &req.key, None);
                        if !Self::flush(peer) {
                            return self.close(p);
                        }
                        if !self.process(p) {
                            return;
                        }
                        continue;
                    }
                }
            }
            let buf = peer.dec.read_buf(READ_CHUNK);
            let want = buf.len();
            match (&peer.stream).read(buf) {
                Ok(0) => return self.close(p),
                Ok(n) => {
                    peer.dec.commit(n);
                    if !self.process(p) {
                        return;
                    }
                    // A short read drained the socket; with edge triggering,
                    // later bytes raise a new event. A hang-up that came
                    // with the data raises none: read on to the EOF.
                    if n < want && bits & HANGUP == 0 {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(p),
            }
        }
    }

    /// Relays every complete message of peer `p`; false if `p` was closed.
    fn process(&mut self, p: usize) -> bool {
        let Some(peer) = self.peers[p].as_mut() else {
            return false;
        };
        let Some(room) = peer.room else {
            return true;
        };
        // The decoder is taken out so the other peers can be written while
        // its events borrow it (a fresh Decoder allocates nothing).
        let mut dec = std::mem::replace(
            &mut peer.dec,
            Decoder::new(Role::Server, WsLimits::default()),
        );
        let mut drop_list = Vec::new();
        let mut close_self = false;
        loop {
            match dec.poll() {
                Ok(None) => break,
                Ok(Some(Event::Binary(payload))) => {
                    self.frame.clear();
                    ws::encode_frame(&mut self.frame, OpCode::Binary, payload, true, None);
                    for &q in &self.rooms[room] {
                        if q == p {
                            continue;
                        }
                        if let Some(other) = self.peers[q].as_mut() {
                            if !Self::send_to(other, &self.frame, self.max_outbox) {
                                drop_list.push(q);
                            }
                        }
                    }
                }
                Ok(Some(Event::Ping(data))) => {
                    if let Some(me) = self.peers[p].as_mut() {
                        ws::encode_frame(&mut me.out, OpCode::Pong, data, true, None);
                    }
                }
                Ok(Some(Event::Text(_) | Event::Pong(_))) => {}
                Ok(Some(Event::Close { code, .. })) => {
                    if let Some(me) = self.peers[p].as_mut() {
                        ws::encode_close(
                            &mut me.out,
                            code.unwrap_or(close_code::NO_STATUS),
                            "",
                            None,
                        );
                    }
                    close_self = true;
                    break;
                }
                Err(e) => {
                    if let Some(me) = self.peers[p].as_mut() {
                        ws::encode_close(&mut me.out, e.close_code, e.reason, None);
                    }
                    close_self = true;
                    break;
                }
            }
        }
        for q in drop_list {
            if q != p {
                self.close(q);
            }
        }
        let Some(me) = self.peers[p].as_mut() else {
            return false;
        };
        me.dec = dec;
        let flushed = Self::flush(me);
        if close_self || !flushed {
            self.close(p);
            return false;
        }
        true
    }
}

/// Serves until SIGTERM or SIGINT. Prints `READY <port>` to `ready` once
/// listening.
pub fn serve(cfg: &Config, ready: &mut dyn Write) -> io::Result<()> {
    let signals = sys::termination_signalfd()?;
    let listener = sys::listen(SocketAddr::new(cfg.host, cfg.port), LISTEN_BACKLOG)?;
    let mut server = Server {
        ep: Epoll::new(1024)?,
        peers: Vec::new(),
        free: Vec::new(),
        rooms: Vec::new(),
        room_ids: HashMap::new(),
        frame: Vec::new(),
        max_outbox: cfg.max_outbox,
    };
    server
        .ep
        .add(listener.as_raw_fd(), READABLE | EDGE, LISTENER)?;
    server.ep.add(signals.as_raw_fd(), READABLE, SIGNALS)?;
    writeln!(ready, "READY {}", listener.local_addr()?.port())?;
    ready.flush()?;
    let mut events = Vec::with_capacity(1024);
    let mut signal_file = File::from(signals);
    loop {
        server.ep.wait(&mut events, -1)?;
        for ev in &events {
            match ev.token {
                LISTENER => server.accept(&listener),
                SIGNALS => {
                    let mut info = [0u8; 128];
                    let _ = signal_file.read(&mut info);
                    return Ok(());
                }
                t => server.on_peer((t - FIRST_PEER) as usize, ev.bits),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::room_of;

    #[test]
    fn room_comes_from_the_query() {
        assert_eq!(room_of("/?room=g1"), Some("g1"));
        assert_eq!(room_of("/x?a=1&room=r-2&b"), Some("r-2"));
        assert_eq!(room_of("/?room="), None);
        assert_eq!(room_of("/"), None);
        assert_eq!(room_of("/?rooms=x"), None);
    }
}
