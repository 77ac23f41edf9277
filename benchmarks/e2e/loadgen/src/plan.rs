//! The run plan (`plan.json`), parsed and validated before anything connects.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// Most connections one plan may hold.
pub const MAX_CONNECTIONS: usize = 100_000;
/// Smallest message: the stamp (u64 time, u32 sender, u32 sequence).
pub const MIN_MESSAGE_BYTES: usize = crate::body::STAMP_LEN;
/// Largest message body.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Most messages in flight per sending connection.
pub const MAX_IN_FLIGHT: u32 = 65_536;
/// Longest warm-up, measured window, hold, connect timeout or drain, in seconds.
pub const MAX_SECONDS: f64 = 3600.0;
/// Most connections being set up at once (`connect_burst`).
pub const MAX_CONNECT_BURST: usize = 4096;
/// Highest open-loop `rate` (messages/s across all senders).
pub const MAX_RATE: f64 = 100_000_000.0;

/// Which server protocol to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// BlueWren `bluewren.v1`: HELLO, SYNC, SEND, DELIVER.
    Bluewren,
    /// The room protocol of the peer servers: `/?room=NAME`, binary relayed.
    Room,
}

impl Protocol {
    /// The name used in plan and result.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bluewren => "bluewren",
            Self::Room => "room",
        }
    }
}

/// What the run does once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Senders to many receivers.
    Fanout,
    /// Senders each to one receiver (same mechanics as fanout, `expect` 1).
    Pairs,
    /// Connect, print `READY n`, hold, close.
    Idle,
}

impl Workload {
    /// The name used in plan and result.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fanout => "fanout",
            Self::Pairs => "pairs",
            Self::Idle => "idle",
        }
    }
}

/// One connection of the plan.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnSpec {
    /// Access token for HELLO (bluewren only).
    #[serde(default)]
    pub token: Option<String>,
    /// Room name (room only).
    #[serde(default)]
    pub room: Option<String>,
    /// Conversation id to SEND to (bluewren senders only).
    #[serde(default)]
    pub conversation: Option<u64>,
    /// Whether this connection sends.
    #[serde(default)]
    pub send: bool,
    /// Receivers each of its messages must reach to complete.
    #[serde(default)]
    pub expect: u32,
}

/// A validated plan.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Server protocol.
    pub protocol: Protocol,
    /// Server address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Local addresses connections bind to, round-robin (none: the kernel picks).
    #[serde(default)]
    pub source_addrs: Vec<String>,
    /// What to do once connected.
    pub workload: Workload,
    /// Seconds of load before the measured window.
    #[serde(default = "default_warmup")]
    pub warmup_s: f64,
    /// The measured window in seconds.
    #[serde(default = "default_duration")]
    pub duration_s: f64,
    /// Length of every message body.
    #[serde(default = "default_message_bytes")]
    pub message_bytes: usize,
    /// Messages in flight per sender (closed loop).
    #[serde(default = "default_in_flight")]
    pub in_flight: u32,
    /// Total messages/s across senders (open loop); `null` for closed loop.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Idle only: longest hold in seconds.
    #[serde(default = "default_hold")]
    pub hold_s: f64,
    /// Longest time for every connection to be set up, in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: f64,
    /// After the window: longest wait for messages in flight, in seconds.
    #[serde(default = "default_drain")]
    pub drain_s: f64,
    /// Most connections being set up at once.
    #[serde(default = "default_connect_burst")]
    pub connect_burst: usize,
    /// The connections.
    pub connections: Vec<ConnSpec>,
    /// Parsed `host:port`.
    #[serde(skip)]
    pub server: Option<SocketAddr>,
    /// Parsed `source_addrs`.
    #[serde(skip)]
    pub sources: Vec<SocketAddr>,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_warmup() -> f64 {
    1.0
}
fn default_duration() -> f64 {
    8.0
}
fn default_message_bytes() -> usize {
    100
}
fn default_in_flight() -> u32 {
    1
}
fn default_hold() -> f64 {
    30.0
}
fn default_connect_timeout() -> f64 {
    60.0
}
fn default_drain() -> f64 {
    2.0
}
fn default_connect_burst() -> usize {
    256
}

/// Why a plan was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError(pub String);

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad plan: {}", self.0)
    }
}

impl std::error::Error for PlanError {}

fn bad<T>(msg: String) -> Result<T, PlanError> {
    Err(PlanError(msg))
}

fn seconds(name: &str, value: f64, zero_ok: bool) -> Result<(), PlanError> {
    let low_ok = if zero_ok { value >= 0.0 } else { value > 0.0 };
    if !value.is_finite() || !low_ok || value > MAX_SECONDS {
        let low = if zero_ok { "0" } else { "above 0" };
        return bad(format!(
            "{name} must be a number of seconds from {low} to {MAX_SECONDS}; got {value}"
        ));
    }
    Ok(())
}

fn room_name_ok(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 200
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

impl Plan {
    /// Parses and validates plan JSON.
    pub fn parse(text: &str) -> Result<Self, PlanError> {
        let mut plan: Plan = serde_json::from_str(text).map_err(|e| PlanError(format!("{e}")))?;
        plan.validate()?;
        Ok(plan)
    }

    /// Indices of the sending connections, in plan order (the sender index
    /// stamped into every message is the position in this list).
    pub fn senders(&self) -> Vec<usize> {
        if self.workload == Workload::Idle {
            return Vec::new();
        }
        (0..self.connections.len())
            .filter(|&i| self.connections[i].send)
            .collect()
    }

    fn validate(&mut self) -> Result<(), PlanError> {
        let ip: IpAddr = self
            .host
            .parse()
            .map_err(|_| PlanError(format!("host must be an IP address; got {:?}", self.host)))?;
        if self.port == 0 {
            return bad("port must be 1-65535; got 0".into());
        }
        self.server = Some(SocketAddr::new(ip, self.port));
        self.sources = Vec::with_capacity(self.source_addrs.len());
        for s in &self.source_addrs {
            let src: IpAddr = s
                .parse()
                .map_err(|_| PlanError(format!("source_addrs: {s:?} is not an IP address")))?;
            if src.is_ipv4() != ip.is_ipv4() {
                return bad(format!(
                    "source_addrs: {s} is not of the same address family as host {}",
                    self.host
                ));
            }
            self.sources.push(SocketAddr::new(src, 0));
        }
        seconds("warmup_s", self.warmup_s, true)?;
        seconds("duration_s", self.duration_s, false)?;
        seconds("hold_s", self.hold_s, false)?;
        seconds("connect_timeout_s", self.connect_timeout_s, false)?;
        seconds("drain_s", self.drain_s, true)?;
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&self.message_bytes) {
            return bad(format!(
                "message_bytes must be {MIN_MESSAGE_BYTES}-{MAX_MESSAGE_BYTES} (the body starts \
                 with a {MIN_MESSAGE_BYTES}-byte stamp); got {}",
                self.message_bytes
            ));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.in_flight) {
            return bad(format!(
                "in_flight must be 1-{MAX_IN_FLIGHT}; got {}",
                self.in_flight
            ));
        }
        if let Some(rate) = self.rate {
            if !rate.is_finite() || rate <= 0.0 || rate > MAX_RATE {
                return bad(format!(
                    "rate must be null (closed loop) or messages/s above 0 and at most \
                     {MAX_RATE}; got {rate}"
                ));
            }
        }
        if !(1..=MAX_CONNECT_BURST).contains(&self.connect_burst) {
            return bad(format!(
                "connect_burst must be 1-{MAX_CONNECT_BURST}; got {}",
                self.connect_burst
            ));
        }
        let n = self.connections.len();
        if n == 0 || n > MAX_CONNECTIONS {
            return bad(format!(
                "connections must hold 1-{MAX_CONNECTIONS} entries; got {n}"
            ));
        }
        for (i, c) in self.connections.iter().enumerate() {
            match self.protocol {
                Protocol::Bluewren => {
                    if c.token.as_deref().is_none_or(str::is_empty) {
                        return bad(format!("connections[{i}]: protocol bluewren needs a token"));
                    }
                    if c.send && self.workload != Workload::Idle && c.conversation.unwrap_or(0) == 0
                    {
                        return bad(format!(
                            "connections[{i}]: a bluewren sender needs a conversation id >= 1"
                        ));
                    }
                }
                Protocol::Room => {
                    let room = c.room.as_deref().unwrap_or("");
                    if !room_name_ok(room) {
                        return bad(format!(
                            "connections[{i}]: protocol room needs a room name of 1-200 \
                             characters from A-Z a-z 0-9 - _ . ~; got {room:?}"
                        ));
                    }
                }
            }
            if self.workload == Workload::Idle {
                continue;
            }
            if c.send {
                if c.expect == 0 || c.expect as usize >= n {
                    return bad(format!(
                        "connections[{i}]: a sender's expect must be 1-{} (receivers among the \
                         other connections); got {}",
                        n - 1,
                        c.expect
                    ));
                }
            } else if c.expect != 0 {
                return bad(format!(
                    "connections[{i}]: expect is only meaningful with send: true; got {}",
                    c.expect
                ));
            }
        }
        if self.workload != Workload::Idle {
            let senders = self.connections.iter().filter(|c| c.send).count();
            if senders == 0 {
                return bad(format!(
                    "workload {} needs at least one connection with send: true",
                    self.workload.name()
                ));
            }
            if senders > u32::MAX as usize {
                return bad("too many senders".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "protocol": "room", "host": "127.0.0.1", "port": 9000,
            "source_addrs": ["127.0.0.1", "127.0.0.2"],
            "workload": "fanout", "warmup_s": 0.5, "duration_s": 1.0,
            "message_bytes": 64, "in_flight": 2, "rate": null,
            "connections": [
                {"token": null, "room": "g1", "conversation": 0, "send": true, "expect": 2},
                {"room": "g1"},
                {"room": "g1"}
            ]
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Plan, PlanError> {
        Plan::parse(&v.to_string())
    }

    fn err_of(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v = base();
        edit(&mut v);
        parse(&v).expect_err("plan should be refused").to_string()
    }

    #[test]
    fn good_plan_parses_with_addresses_and_senders() {
        let plan = parse(&base()).unwrap();
        assert_eq!(plan.server, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(plan.sources.len(), 2);
        assert_eq!(plan.senders(), [0]);
        assert_eq!((plan.hold_s, plan.connect_burst), (30.0, 256));
    }

    #[test]
    fn invalid_json_and_unknown_fields_are_named() {
        assert!(Plan::parse("{")
            .unwrap_err()
            .to_string()
            .starts_with("bad plan: "));
        let e = err_of(|v| v["duration"] = 3.into());
        assert!(e.contains("unknown field `duration`"), "{e}");
        let e = err_of(|v| v["connections"][1]["sned"] = true.into());
        assert!(e.contains("unknown field `sned`"), "{e}");
        let e = err_of(|v| v["protocol"] = "http".into());
        assert!(e.contains("unknown variant `http`"), "{e}");
    }

    #[test]
    fn addresses_are_checked() {
        assert!(err_of(|v| v["host"] = "localhost".into()).contains("host must be an IP"));
        assert!(err_of(|v| v["port"] = 0.into()).contains("port must be 1-65535"));
        assert!(err_of(|v| v["port"] = 70000.into()).contains("70000"));
        let e = err_of(|v| v["source_addrs"][1] = "127.0.0.x".into());
        assert!(e.contains("\"127.0.0.x\" is not an IP address"), "{e}");
        let e = err_of(|v| v["source_addrs"][0] = "::1".into());
        assert!(e.contains("same address family"), "{e}");
    }

    #[test]
    fn numeric_limits_hold_at_their_edges() {
        let ok = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = base();
            edit(&mut v);
            parse(&v)
        };
        assert!(ok(&|v| v["message_bytes"] = MIN_MESSAGE_BYTES.into()).is_ok());
        assert!(ok(&|v| v["message_bytes"] = MAX_MESSAGE_BYTES.into()).is_ok());
        let e = ok(&|v| v["message_bytes"] = (MIN_MESSAGE_BYTES - 1).into()).unwrap_err();
        assert!(
            e.to_string().contains("message_bytes must be 16-1048576"),
            "{e}"
        );
        assert!(ok(&|v| v["message_bytes"] = (MAX_MESSAGE_BYTES + 1).into()).is_err());
        assert!(ok(&|v| v["in_flight"] = MAX_IN_FLIGHT.into()).is_ok());
        assert!(ok(&|v| v["in_flight"] = (MAX_IN_FLIGHT + 1).into()).is_err());
        assert!(ok(&|v| v["in_flight"] = 0.into()).is_err());
        assert!(ok(&|v| v["warmup_s"] = 0.0.into()).is_ok());
        assert!(ok(&|v| v["duration_s"] = 0.0.into()).is_err());
        assert!(ok(&|v| v["duration_s"] = MAX_SECONDS.into()).is_ok());
        let e = ok(&|v| v["duration_s"] = (MAX_SECONDS + 1.0).into()).unwrap_err();
        assert!(e.to_string().contains("duration_s must be"), "{e}");
        assert!(ok(&|v| v["warmup_s"] = (-1.0).into()).is_err());
        assert!(ok(&|v| v["rate"] = 1000.0.into()).is_ok());
        assert!(ok(&|v| v["rate"] = 0.0.into())
            .unwrap_err()
            .0
            .contains("rate must be"));
        assert!(ok(&|v| v["connect_burst"] = MAX_CONNECT_BURST.into()).is_ok());
        assert!(ok(&|v| v["connect_burst"] = (MAX_CONNECT_BURST + 1).into()).is_err());
    }

    #[test]
    fn connections_are_checked() {
        let e = err_of(|v| v["connections"] = serde_json::json!([]));
        assert!(
            e.contains("connections must hold 1-100000 entries; got 0"),
            "{e}"
        );
        let e = err_of(|v| v["connections"][0]["expect"] = 3.into());
        assert!(
            e.contains("connections[0]: a sender's expect must be 1-2"),
            "{e}"
        );
        let e = err_of(|v| v["connections"][0]["expect"] = 0.into());
        assert!(e.contains("a sender's expect"), "{e}");
        let e = err_of(|v| v["connections"][1]["expect"] = 1.into());
        assert!(
            e.contains("connections[1]: expect is only meaningful"),
            "{e}"
        );
        let e = err_of(|v| v["connections"][0]["send"] = false.into());
        assert!(e.contains("connections[0]: expect is only"), "{e}");
        let e = err_of(|v| v["connections"][2]["room"] = "a b".into());
        assert!(
            e.contains("connections[2]: protocol room needs a room name"),
            "{e}"
        );
    }

    #[test]
    fn fanout_needs_a_sender_and_idle_does_not() {
        let mut v = base();
        v["connections"][0]["send"] = false.into();
        v["connections"][0]["expect"] = 0.into();
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("workload fanout needs at least one connection with send"),
            "{e}"
        );
        v["workload"] = "idle".into();
        let plan = parse(&v).unwrap();
        assert!(plan.senders().is_empty());
    }

    #[test]
    fn bluewren_needs_tokens_and_sender_conversations() {
        let mut v = base();
        v["protocol"] = "bluewren".into();
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("connections[0]: protocol bluewren needs a token"),
            "{e}"
        );
        for c in v["connections"].as_array_mut().unwrap() {
            c["token"] = "t".into();
        }
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("a bluewren sender needs a conversation id"),
            "{e}"
        );
        v["connections"][0]["conversation"] = 17.into();
        assert!(parse(&v).is_ok());
    }
}
