//! Network checks against a booted VM (issue 5): `GET /health` on port 8080 and a 16 MiB TCP
//! echo round trip on port 7, both reached from the host through QEMU's user-mode network with
//! 127.0.0.1 port forwards. The guest gets its address by DHCP from QEMU.

use crate::boot_paths::{accel, failure_report, spawn_quiet, READY_LINE};
use crate::Paths;
use qemu::{HostForward, LinePattern, MacAddr, Netdev, Nic, Protocol, QemuCommand, Vm};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The guest's HTTP port (kernel/src/net/services.rs).
pub const GUEST_HTTP_PORT: u16 = 8080;
/// The guest's TCP echo port.
pub const GUEST_ECHO_PORT: u16 = 7;
/// Host time from QEMU start until `/health` must have answered.
pub const HEALTH_TIMEOUT_S: u64 = 60;
/// Host time the echo round trip may take (TCG moves a few MB/s).
pub const ECHO_TIMEOUT_S: u64 = 120;
/// Bytes sent through the echo service.
pub const ECHO_BYTES: usize = 16 * 1024 * 1024;
/// Largest HTTP response accepted from the guest.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
const RETRY_INTERVAL_MS: u64 = 200;
const IO_TIMEOUT_S: u64 = 10;
const ECHO_CHUNK_BYTES: usize = 64 * 1024;

/// A VM with forwards to its HTTP and echo ports.
struct NetVm {
    vm: Vm,
    http: SocketAddr,
    echo: SocketAddr,
}

fn boot(paths: &Paths, name: &str, limit: Duration) -> Result<NetVm, String> {
    let port = || qemu::free_local_port().map_err(|e| format!("no free local port: {e}"));
    let (http_port, echo_port) = (port()?, port()?);
    let forwards = vec![
        HostForward {
            protocol: Protocol::Tcp,
            host_port: http_port,
            guest_port: GUEST_HTTP_PORT,
        },
        HostForward {
            protocol: Protocol::Tcp,
            host_port: echo_port,
            guest_port: GUEST_ECHO_PORT,
        },
    ];
    let cmd = QemuCommand::pvh(paths.kernel()).accel(accel()).nic(Nic {
        netdev: Netdev::User { forwards },
        mac: MacAddr::local(1),
    });
    let mut vm = spawn_quiet(name, &cmd, &paths.run_dir(&format!("test-{name}")), limit)?;
    if let Err(err) = vm.wait_for(&LinePattern::substring(READY_LINE), limit) {
        return Err(failure_report(&mut vm, &err.to_string()));
    }
    let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    Ok(NetVm {
        vm,
        http: local(http_port),
        echo: local(echo_port),
    })
}

/// `GET /health` answers 200 with a JSON body saying `"status":"ok"`.
pub fn health(paths: &Paths) -> Result<String, String> {
    let limit = Duration::from_secs(HEALTH_TIMEOUT_S);
    let mut node = boot(paths, "net-health", limit)?;
    let deadline = Instant::now() + limit;
    let mut last_error = String::from("no attempt");
    // QEMU accepts the host connection before the guest listens (or has an address), so
    // early attempts may be reset: retry until the deadline.
    while Instant::now() < deadline && !node.vm.timed_out() {
        match get(node.http, "/health") {
            Ok((200, body)) if body.contains("\"status\":\"ok\"") => {
                return Ok(format!(
                    "200 after {:.2} s: {}",
                    node.vm.elapsed().as_secs_f64(),
                    body.trim()
                ));
            }
            Ok((status, body)) => last_error = format!("HTTP {status}: {body}"),
            Err(err) => last_error = err,
        }
        std::thread::sleep(Duration::from_millis(RETRY_INTERVAL_MS));
    }
    Err(failure_report(
        &mut node.vm,
        &format!("GET /health did not answer in time; last: {last_error}"),
    ))
}

/// One HTTP/1.1 GET with `Connection: close`; returns the status code and body.
pub(crate) fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    get_within(addr, path, Duration::from_secs(IO_TIMEOUT_S))
}

/// [`get`] with `io` as the connect, send and receive timeout.
pub(crate) fn get_within(
    addr: SocketAddr,
    path: &str,
    io: Duration,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, io).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(io))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(io))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut response)
        .map_err(|e| format!("receive: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// [`ECHO_BYTES`] of pseudo-random data sent to port 7 come back byte-identical.
pub fn echo(paths: &Paths) -> Result<String, String> {
    let limit = Duration::from_secs(ECHO_TIMEOUT_S);
    let mut node = boot(paths, "net-echo", limit)?;
    // The guest must be serving before the bulk transfer starts.
    health_ready(&node, limit)?;
    let data = pattern(ECHO_BYTES, 0x00ca_1e0f_5eed);
    let started = Instant::now();
    match round_trip(node.echo, &data, limit) {
        Ok(()) => {
            let secs = started.elapsed().as_secs_f64();
            Ok(format!(
                "{} MiB echoed byte-identical in {secs:.2} s ({:.2} MB/s each way)",
                ECHO_BYTES / (1024 * 1024),
                ECHO_BYTES as f64 / secs / 1e6
            ))
        }
        Err(err) => Err(failure_report(&mut node.vm, &format!("echo: {err}"))),
    }
}

fn health_ready(node: &NetVm, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(get(node.http, "/health"), Ok((200, _))) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(RETRY_INTERVAL_MS));
    }
    Err("the guest never answered GET /health".into())
}

/// Send `data` and read it back concurrently (the guest's buffers are far smaller than data).
pub(crate) fn round_trip(addr: SocketAddr, data: &[u8], limit: Duration) -> Result<(), String> {
    let io = Duration::from_secs(IO_TIMEOUT_S);
    let stream = TcpStream::connect_timeout(&addr, io).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(io))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(io))
        .map_err(|e| e.to_string())?;
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    let expected = data.len();
    let deadline = Instant::now() + limit;
    let receiver = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let mut got = Vec::with_capacity(expected);
        let mut buf = vec![0u8; ECHO_CHUNK_BYTES];
        while got.len() < expected {
            if Instant::now() > deadline {
                return Err(format!("timed out after {} of {expected} bytes", got.len()));
            }
            match reader.read(&mut buf) {
                Ok(0) => {
                    return Err(format!(
                        "connection closed after {} of {expected} bytes",
                        got.len()
                    ))
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("receive after {} bytes: {e}", got.len())),
            }
        }
        Ok(got)
    });
    let mut writer = stream;
    for chunk in data.chunks(ECHO_CHUNK_BYTES) {
        if let Err(e) = writer.write_all(chunk) {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            let _ = receiver.join();
            return Err(format!("send: {e}"));
        }
    }
    let got = receiver
        .join()
        .map_err(|_| "receiver thread panicked".to_string())??;
    match got.iter().zip(data).position(|(a, b)| a != b) {
        None if got.len() == data.len() => Ok(()),
        None => Err(format!("got {} bytes, sent {}", got.len(), data.len())),
        Some(at) => Err(format!("first difference at byte {at}")),
    }
}

/// Deterministic pseudo-random bytes (xorshift64), so a failure can be reproduced.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_varied() {
        let a = pattern(1000, 7);
        assert_eq!(a, pattern(1000, 7));
        assert_ne!(a, pattern(1000, 8));
        assert_eq!(a.len(), 1000);
        let zeros = a.iter().filter(|&&b| b == 0).count();
        assert!(zeros < 20, "{zeros} zero bytes");
    }

    #[test]
    fn http_get_against_a_local_server() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"GET /health HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}")
                .unwrap();
        });
        assert_eq!(
            get(addr, "/health").unwrap(),
            (200, "{\"status\":\"ok\"}".to_string())
        );
        server.join().unwrap();
    }

    #[test]
    fn echo_round_trip_against_a_local_echo_server() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = s.try_clone().unwrap();
            let mut w = s;
            let _ = std::io::copy(&mut r, &mut w);
        });
        let data = pattern(1 << 20, 3);
        assert_eq!(round_trip(addr, &data, Duration::from_secs(30)), Ok(()));
    }
}
