//! The `bluewren` protocol path of the loadgen against a small in-test fake
//! node that speaks just enough of docs/protocol.md: HELLO/WELCOME (ERROR for
//! the token "bad"), SYNC/SYNCED, SEND -> ACK + DELIVER (envelope) to every
//! other connection, CURSOR recorded.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use bluewren_engine::frame::{self, FrameLimits, Header};
use bluewren_engine::ws::{self, Decoder, Event, HandshakeLimits, OpCode, Role, WsLimits};
use serde_json::{json, Value};

use common::run_plan;

#[derive(Default)]
struct Node {
    writers: Vec<(usize, TcpStream)>,
    next_seq: u64,
    cursors: Vec<(u64, u64)>,
    sends: u64,
}

fn send_frames(stream: &mut TcpStream, frames: &[u8]) {
    let mut out = Vec::new();
    ws::encode_frame(&mut out, OpCode::Binary, frames, true, None);
    let _ = stream.write_all(&out);
}

fn serve(id: usize, mut s: TcpStream, node: Arc<Mutex<Node>>) {
    let mut hs = Vec::new();
    let mut buf = [0u8; 65536];
    let (req, used) = loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return;
        }
        hs.extend_from_slice(&buf[..n]);
        if let Some(r) = ws::parse_request(&hs, &HandshakeLimits::default()).unwrap() {
            break r;
        }
    };
    assert_eq!(req.protocols, ["bluewren.v1"]);
    let mut out = Vec::new();
    ws::write_response(&mut out, &req.key, Some("bluewren.v1"));
    s.write_all(&out).unwrap();
    node.lock()
        .unwrap()
        .writers
        .push((id, s.try_clone().unwrap()));
    let mut dec = Decoder::new(Role::Server, WsLimits::default());
    dec.feed(&hs[used..]);
    loop {
        while let Ok(Some(ev)) = dec.poll() {
            let Event::Binary(payload) = ev else { continue };
            for f in frame::frames(payload, &FrameLimits::default()) {
                let f = f.unwrap();
                let h = f.header;
                let mut reply = Vec::new();
                match h.kind {
                    0x01 if f.body == b"bad" => {
                        let body = br#"{"code":5,"name":"AUTH_FAILED","message":"bad token"}"#;
                        let h = Header {
                            kind: 0x7F,
                            ..Header::default()
                        };
                        frame::encode(&mut reply, &h, body);
                    }
                    0x01 => frame::encode(
                        &mut reply,
                        &Header {
                            kind: 0x02,
                            ..Header::default()
                        },
                        b"{}",
                    ),
                    0x20 => frame::encode(
                        &mut reply,
                        &Header {
                            kind: 0x21,
                            ..Header::default()
                        },
                        b"{}",
                    ),
                    0x40 => node.lock().unwrap().cursors.push((h.conv, h.seq)),
                    0x10 => {
                        let mut n = node.lock().unwrap();
                        n.next_seq += 1;
                        n.sends += 1;
                        let seq = n.next_seq;
                        let ack = Header {
                            kind: 0x11,
                            conv: h.conv,
                            seq,
                            cmid: h.cmid,
                            flags: 0,
                        };
                        frame::encode(&mut reply, &ack, b"");
                        let mut env = b"\x00\x01u\x00\x01d".to_vec();
                        env.extend_from_slice(f.body);
                        let mut deliver = Vec::new();
                        let dh = Header { kind: 0x12, ..ack };
                        frame::encode(&mut deliver, &dh, &env);
                        for (other, w) in n.writers.iter_mut() {
                            if *other != id {
                                send_frames(w, &deliver);
                            }
                        }
                    }
                    _ => {}
                }
                if !reply.is_empty() {
                    send_frames(&mut s, &reply);
                }
            }
        }
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        dec.feed(&buf[..n]);
    }
    node.lock()
        .unwrap()
        .writers
        .retain(|(other, _)| *other != id);
}

fn start_node() -> (u16, Arc<Mutex<Node>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let node = Arc::new(Mutex::new(Node::default()));
    let shared = Arc::clone(&node);
    std::thread::spawn(move || {
        for (id, s) in listener.incoming().enumerate() {
            let Ok(s) = s else { return };
            let node = Arc::clone(&shared);
            std::thread::spawn(move || serve(id, s, node));
        }
    });
    (port, node)
}

fn plan(port: u16, tokens: &[&str]) -> Value {
    let n = tokens.len();
    let conns: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"token": t, "conversation": 7, "send": i == 0,
                   "expect": if i == 0 { n - 1 } else { 0 }})
        })
        .collect();
    json!({"protocol": "bluewren", "port": port, "workload": "fanout",
           "warmup_s": 0.2, "duration_s": 0.5, "message_bytes": 40, "in_flight": 2,
           "connections": conns})
}

#[test]
fn fanout_over_bluewren_counts_deliveries_and_confirms_cursors() {
    let (port, node) = start_node();
    let (code, r, stderr) = run_plan("bw-fanout", &plan(port, &["a", "b", "c", "d"]));
    assert_eq!(code, 0, "{stderr}\n{r:#}");
    assert_eq!(r["protocol"], "bluewren");
    assert_eq!(r["errors"], 0, "{r:#}");
    assert_eq!(r["incomplete"], 0, "{r:#}");
    let completed = r["completed"].as_u64().unwrap();
    let deliveries = r["deliveries"].as_u64().unwrap();
    assert!(completed > 20, "{r:#}");
    assert!(deliveries.abs_diff(completed * 3) <= 2 * 2 * 3, "{r:#}");
    let n = node.lock().unwrap();
    // The drain waits until no SEND is unacknowledged: one ACK per SEND.
    assert_eq!(r["acks"].as_u64(), Some(n.sends), "{r:#}");
    // Every connection confirmed the last seq it saw: the sender by ACK,
    // receivers by DELIVER; all of conversation 7, up to the last message.
    assert_eq!(n.cursors.len(), 4, "{:?}", n.cursors);
    let expected = vec![(7, n.sends); 4];
    assert_eq!(n.cursors, expected);
}

#[test]
fn refused_hello_fails_the_run() {
    let (port, _node) = start_node();
    let (code, r, stderr) = run_plan("bw-hello", &plan(port, &["a", "bad", "c"]));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(r["error_counts"]["hello_refused"], 1, "{r:#}");
    assert!(stderr.contains("AUTH_FAILED"), "{stderr}");
}
