//! `bluewren-room-baseline --port P [--host 127.0.0.1] [--max-outbox BYTES]`:
//! the one-write-per-recipient room server (see `bluewren_loadgen::baseline`).
//! Prints `READY <port>` once listening; exits 0 on SIGTERM or SIGINT, 2 on a
//! bad command line, 1 if it cannot serve.

use std::net::IpAddr;
use std::process::ExitCode;

use bluewren_loadgen::baseline::{self, Config, DEFAULT_MAX_OUTBOX};

const USAGE: &str =
    "usage: bluewren-room-baseline --port PORT [--host 127.0.0.1] [--max-outbox BYTES]";

fn parse() -> Result<Config, String> {
    let mut cfg = Config {
        host: IpAddr::from([127, 0, 0, 1]),
        port: 0,
        max_outbox: DEFAULT_MAX_OUTBOX,
    };
    let mut port = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--port" => {
                let v = value("--port")?;
                port = Some(
                    v.parse::<u16>()
                        .map_err(|_| format!("--port: {v:?} is not 0-65535"))?,
                );
            }
            "--host" => {
                let v = value("--host")?;
                cfg.host = v
                    .parse()
                    .map_err(|_| format!("--host: {v:?} is not an IP address"))?;
            }
            "--max-outbox" => {
                let v = value("--max-outbox")?;
                cfg.max_outbox = v
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n >= 1024)
                    .ok_or(format!("--max-outbox: {v:?} is not a byte count >= 1024"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    cfg.port = port.ok_or("--port is required (0: any free port)")?;
    Ok(cfg)
}

fn main() -> ExitCode {
    let cfg = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bluewren-room-baseline: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match baseline::serve(&cfg, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bluewren-room-baseline: {e}");
            ExitCode::from(1)
        }
    }
}
