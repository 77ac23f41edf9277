//! End to end: `bluewren-loadgen` against `bluewren-room-baseline` on
//! loopback, small and short.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{loadgen, read_result, run_plan};
use serde_json::{json, Value};

const BASELINE: &str = env!("CARGO_BIN_EXE_bluewren-room-baseline");

/// A running baseline server, stopped with SIGTERM when dropped.
struct Baseline {
    child: Child,
    port: u16,
}

impl Baseline {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// Started with `args` added to the command line.
    fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(BASELINE)
            .args(["--port", "0", "--host", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the baseline");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no READY line: {line:?}"));
        Self { child, port }
    }

    /// SIGTERM, then the exit code (within 5 s).
    fn stop(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn fanout_plan(port: u16, members: usize, senders: usize) -> Value {
    let conns: Vec<Value> = (0..members)
        .map(|i| {
            let send = i < senders;
            json!({"token": null, "room": "g1", "send": send,
                   "expect": if send { members - 1 } else { 0 }})
        })
        .collect();
    json!({
        "protocol": "room", "host": "127.0.0.1", "port": port,
        "source_addrs": ["127.0.0.1", "127.0.0.2"],
        "workload": "fanout", "warmup_s": 0.3, "duration_s": 1.0,
        "message_bytes": 100, "in_flight": 2, "rate": null,
        "connections": conns,
    })
}

#[test]
fn fanout_through_the_baseline_counts_every_delivery() {
    let mut server = Baseline::start();
    let (code, r, stderr) = run_plan("fanout", &fanout_plan(server.port, 20, 2));
    assert_eq!(code, 0, "{stderr}\n{r:#}");
    assert_eq!(r["workload"], "fanout");
    assert_eq!(r["protocol"], "room");
    assert_eq!(
        (r["connections"].as_u64(), r["senders"].as_u64()),
        (Some(20), Some(2))
    );
    assert_eq!(r["errors"], 0, "{r:#}");
    assert_eq!(r["incomplete"], 0, "{r:#}");
    assert_eq!(r["extra_deliveries"], 0, "{r:#}");
    let completed = r["completed"].as_u64().unwrap();
    let deliveries = r["deliveries"].as_u64().unwrap();
    assert!(completed > 100, "{r:#}");
    // Messages straddling the window edges are counted partly; at most
    // senders x in_flight messages do at each edge.
    let slack = 2 * 2 * 2 * 19;
    assert!(
        deliveries.abs_diff(completed * 19) <= slack,
        "deliveries {deliveries} vs completed {completed} x 19"
    );
    let window = r["window_s"].as_f64().unwrap();
    assert!((0.95..1.5).contains(&window), "{window}");
    let per_s = r["deliveries_per_s"].as_f64().unwrap();
    assert!((per_s - deliveries as f64 / window).abs() < 1.0);
    let lat = &r["latency_us"];
    let (p50, p99, max) = (
        lat["p50"].as_u64().unwrap(),
        lat["p99"].as_u64().unwrap(),
        lat["max"].as_u64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max && max > 0, "{lat}");
    let cpu = r["loadgen_cpu"].as_f64().unwrap();
    assert!(cpu > 0.0 && cpu < 1.5, "{cpu}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn open_loop_paces_to_the_rate() {
    let server = Baseline::start();
    let mut plan = fanout_plan(server.port, 5, 1);
    plan["rate"] = json!(2000.0);
    let (code, r, stderr) = run_plan("paced", &plan);
    assert_eq!(code, 0, "{stderr}\n{r:#}");
    let sent = r["sent"].as_f64().unwrap() / r["window_s"].as_f64().unwrap();
    assert!((1800.0..2200.0).contains(&sent), "{sent} messages/s sent");
    assert_eq!(r["skipped"], 0);
    assert_eq!(r["incomplete"], 0);
}

#[test]
fn idle_holds_until_stdin_closes() {
    let server = Baseline::start();
    let conns: Vec<Value> = (0..300)
        .map(|i| json!({"room": format!("r{}", i % 7)}))
        .collect();
    let plan = json!({"protocol": "room", "port": server.port, "workload": "idle",
                      "hold_s": 30.0, "connections": conns});
    let (mut cmd, out_path) = loadgen("idle", &plan);
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let to_ready = started.elapsed().as_secs_f64();
    assert_eq!(line, "READY 300\n");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"not yet\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before stdin EOF"
    );
    drop(stdin);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "did not end at EOF"
    );
    let r = read_result(&out_path);
    assert_eq!(r["workload"], "idle");
    assert_eq!(
        (r["connections"].as_u64(), r["connected"].as_u64()),
        (Some(300), Some(300))
    );
    assert_eq!(
        (r["failed"].as_u64(), r["errors"].as_u64()),
        (Some(0), Some(0))
    );
    // Setup ends before READY is printed.
    let connect_s = r["connect_s"].as_f64().unwrap();
    assert!(
        connect_s > 0.0 && connect_s <= to_ready,
        "{connect_s} vs {to_ready}"
    );
}

#[test]
fn idle_ends_after_hold_s_with_stdin_open() {
    let server = Baseline::start();
    let plan = json!({"protocol": "room", "port": server.port, "workload": "idle",
                      "hold_s": 0.5, "connections": [{"room": "a"}, {"room": "a"}]});
    let (mut cmd, out_path) = loadgen("idle-hold", &plan);
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let status = child.wait().unwrap();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let r = read_result(&out_path);
    assert_eq!(r["connected"], 2);
}

#[test]
fn refused_connections_fail_the_run_with_counts() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (code, r, stderr) = run_plan("refused", &fanout_plan(port, 4, 1));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("4 of 4 connections failed to set up"),
        "{stderr}"
    );
    assert_eq!(r["error_counts"]["connect_refused"], 4, "{r:#}");
    assert_eq!(r["errors"], 4);
}

#[test]
fn bad_plan_exits_2_with_the_reason() {
    let mut plan = fanout_plan(1, 3, 1);
    plan["message_bytes"] = json!(8);
    let (code, r, stderr) = run_plan("bad", &plan);
    assert_eq!(code, 2);
    assert_eq!(r, Value::Null, "no result for a bad plan");
    assert!(
        stderr.contains("bad plan: message_bytes must be 16-"),
        "{stderr}"
    );
}

#[test]
fn baseline_refuses_an_upgrade_without_a_room() {
    let server = Baseline::start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.ends_with("missing ?room=NAME"), "{answer}");
}

/// Connects to the baseline, upgrades into `room` and reads the 101 answer.
fn room_member(port: u16, room: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /?room={room} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    // Byte by byte, so that nothing after the answer is consumed.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(std::io::Read::read(&mut s, &mut byte).unwrap(), 1);
        answer.push(byte[0]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 101"), "{answer:?}");
    s
}

#[test]
fn baseline_drops_a_member_that_never_reads_past_max_outbox() {
    use std::io::Read;
    let server = Baseline::start_with(&["--max-outbox", "65536"]);
    let mut slow = room_member(server.port, "slow");
    let mut writer = room_member(server.port, "slow");
    // 16 MiB for the member that never reads: far more than the loopback
    // socket buffers (a few MiB) plus a 64 KiB outbox.
    let payload = vec![7u8; 64 << 10];
    let mut frame = Vec::new();
    bluewren_engine::ws::encode_frame(
        &mut frame,
        bluewren_engine::ws::OpCode::Binary,
        &payload,
        true,
        Some([1, 2, 3, 4]),
    );
    let messages = 256;
    for _ in 0..messages {
        writer.write_all(&frame).unwrap();
    }
    // The slow member gets what the kernel had buffered, then the close;
    // without the bound it would get all 16 MiB and then wait (timeout).
    let relayed = messages * (payload.len() + 10); // 10: header of 64 KiB
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("not dropped: {e} after {got} of {relayed} bytes"),
        }
    }
    eprintln!("the slow member got {got} of {relayed} bytes before the close");
    assert!(got < relayed, "{got} of {relayed} bytes: not dropped");
}
