//! `cargo xtask bench testnet_sim`: update- and query-call latency (median, p99) and throughput
//! from the host against a simulated 4-node subnet (`cairn-sim`), through its HTTP interface.
//!
//! ```text
//! cargo run --release -p node --features sim --example bench_testnet_sim
//! ```
//! Builds and starts `cairn-sim` (release), creates a canister, installs the Motoko counter
//! from testdata, then measures sequential v3 update calls (`inc`, answered with a certificate)
//! and v2 queries (`get`, node-signed), and query throughput with several clients. The
//! simulator's consensus uses the IC's application-subnet delays, so update latency is bounded
//! below by block time; the table shows the finalization rate beside it.

use node::api::cbor::{self, Writer};
use node::api::hash_tree::Lookup;
use node::candid::{self, record, Type, Value};
use node::types::Principal;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Sequential calls measured per kind.
const SAMPLES: usize = 30;
/// Concurrent query clients in the throughput run.
const QUERY_CLIENTS: usize = 4;
/// Concurrent update clients in the throughput run (each sends its next call when the
/// previous one is answered).
const UPDATE_CLIENTS: usize = 64;
/// Length of the throughput run.
const THROUGHPUT_SECS: u64 = 5;
/// How long cairn-sim may take to become ready (and to finalize its first block).
const READY_TIMEOUT_SECS: u64 = 120;
/// Window over which the finalization rate is measured.
const RATE_WINDOW_SECS: u64 = 5;
/// Poll interval while waiting for the first finalized block.
const POLL_MS: u64 = 20;

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `cairn_finalized_height` from a node's `/metrics` (one request, `Connection: close`).
fn finalized_height(addr: &str) -> Option<u64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("cairn_finalized_height ")?
            .trim()
            .parse()
            .ok()
    })
}

/// Starts cairn-sim; returns it, its nodes' addresses and when its process was started.
fn start_sim() -> (Sim, Vec<String>, Instant) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--release", "-p", "node", "--features", "sim"])
        .args(["--bin", "cairn-sim"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "building cairn-sim failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let started = Instant::now();
    let mut child = Command::new(target.join("release/cairn-sim"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start cairn-sim");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let sim = Sim(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut urls = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(READY_TIMEOUT_SECS))
            .expect("cairn-sim ready");
        if let Some(rest) = line.strip_prefix("cairn-sim: node ") {
            if let Some((_, url)) = rest.split_once(' ') {
                urls.push(url.trim_start_matches("http://").to_string());
            }
        }
        if line == "cairn-sim: ready" {
            break;
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (sim, urls, started)
}

/// A keep-alive HTTP/1.1 client.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    fn new(addr: &str) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        let _ = s.set_nodelay(true);
        Client {
            stream: BufReader::new(s),
        }
    }

    fn post(&mut self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/cbor\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).expect("write");
        s.write_all(body).expect("write");
        let mut status = 0u16;
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).expect("read");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(rest) = l.strip_prefix("HTTP/1.1 ") {
                status = rest[..3].parse().unwrap_or(0);
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).expect("body");
        (status, body)
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn envelope(kind: &str, canister: &Principal, method: &str, arg: &[u8], nonce: u64) -> Vec<u8> {
    let mut w = Writer::self_describing();
    w.map(1).text("content").map(7);
    w.text("request_type").text(kind);
    w.text("sender").bytes(&[4]);
    w.text("nonce").bytes(&nonce.to_be_bytes());
    w.text("ingress_expiry").u64(now_ns() + 120_000_000_000);
    w.text("canister_id").bytes(canister.as_slice());
    w.text("method_name").text(method);
    w.text("arg").bytes(arg);
    w.into_bytes()
}

/// A v3 call; returns the certified reply.
fn call(c: &mut Client, canister: &Principal, method: &str, arg: &[u8], nonce: u64) -> Vec<u8> {
    let body = envelope("call", canister, method, arg, nonce);
    let rid = node::api::envelope::Envelope::decode(&body, node::api::envelope::RequestKind::Call)
        .expect("envelope")
        .request_id;
    let ecid = if canister.is_management() {
        management_ecid(method, arg).unwrap_or(*canister)
    } else {
        *canister
    };
    let (status, resp) = c.post(&format!("/api/v3/canister/{ecid}/call"), &body);
    assert_eq!(status, 200, "{method}: {}", String::from_utf8_lossy(&resp));
    let v = cbor::decode(&resp).expect("cbor");
    let r = cbor::Record::new(v.untagged()).expect("record");
    let cert = node::api::certificate::Certificate::parse(r.bytes("certificate").expect("cert"))
        .expect("certificate");
    let path: [&[u8]; 3] = [b"request_status", &rid, b"reply"];
    match cert.tree.lookup(&path) {
        Lookup::Found(reply) => reply.to_vec(),
        _ => panic!("{method}: no reply in certificate"),
    }
}

fn management_ecid(method: &str, arg: &[u8]) -> Option<Principal> {
    node::replica::stack::management_target(method, arg)
}

fn query(c: &mut Client, canister: &Principal, method: &str, nonce: u64) -> u16 {
    let body = envelope("query", canister, method, b"DIDL\x00\x00", nonce);
    c.post(&format!("/api/v2/canister/{canister}/query"), &body)
        .0
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn main() {
    let (_sim, urls, started) = start_sim();
    let first_block_s = loop {
        if finalized_height(&urls[0]).is_some_and(|h| h >= 1) {
            break started.elapsed().as_secs_f64();
        }
        assert!(
            started.elapsed() < Duration::from_secs(READY_TIMEOUT_SECS),
            "cairn-sim finalized nothing"
        );
        std::thread::sleep(Duration::from_millis(POLL_MS));
    };
    let mut c = Client::new(&urls[0]);
    let create_arg = candid::encode_args(&[(
        record(&[("amount", candid::opt(Type::Nat))]),
        Value::Record(vec![(
            candid::field_id("amount"),
            Value::Opt(Some(Box::new(Value::nat(100_000_000_000_000)))),
        )]),
    )])
    .expect("candid");
    let reply = call(
        &mut c,
        &Principal::MANAGEMENT,
        "provisional_create_canister_with_cycles",
        &create_arg,
        1,
    );
    let ty = record(&[("canister_id", Type::Principal)]);
    let id = candid::decode_args(&reply, &[ty], &Default::default()).expect("reply")[0]
        .field("canister_id")
        .and_then(|v| v.as_principal())
        .expect("canister id");
    let wasm =
        std::fs::read(root().join("../shared/testdata/canisters/motoko-counter/module.wasm"))
            .expect("motoko counter");
    let install_ty = record(&[
        ("mode", candid::variant(&[("install", Type::Null)])),
        ("canister_id", Type::Principal),
        ("wasm_module", candid::blob()),
        ("arg", candid::blob()),
    ]);
    let install = Value::Record({
        let mut f = vec![
            (
                candid::field_id("mode"),
                Value::Variant(candid::field_id("install"), Box::new(Value::Null)),
            ),
            (candid::field_id("canister_id"), Value::Principal(id)),
            (candid::field_id("wasm_module"), Value::Blob(wasm)),
            (
                candid::field_id("arg"),
                Value::Blob(b"DIDL\x00\x00".to_vec()),
            ),
        ];
        f.sort_by_key(|(k, _)| *k);
        f
    });
    let arg = candid::encode_args(&[(install_ty, install)]).expect("candid");
    call(&mut c, &Principal::MANAGEMENT, "install_code", &arg, 2);

    let mut update = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let t = Instant::now();
        call(&mut c, &id, "inc", b"DIDL\x00\x00", 100 + i as u64);
        update.push(t.elapsed());
    }
    let mut q = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let t = Instant::now();
        assert_eq!(query(&mut c, &id, "get", i as u64), 200);
        q.push(t.elapsed());
    }
    update.sort();
    q.sort();
    let start = Instant::now();
    let handles: Vec<_> = (0..QUERY_CLIENTS)
        .map(|k| {
            let url = urls[k % urls.len()].clone();
            std::thread::spawn(move || {
                let mut c = Client::new(&url);
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(THROUGHPUT_SECS) {
                    assert_eq!(query(&mut c, &id, "get", n), 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let queries: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let per_s = queries as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let handles: Vec<_> = (0..UPDATE_CLIENTS)
        .map(|k| {
            let url = urls[k % urls.len()].clone();
            std::thread::spawn(move || {
                let mut c = Client::new(&url);
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(THROUGHPUT_SECS) {
                    let nonce = 1_000_000 * (k as u64 + 1) + n;
                    call(&mut c, &id, "inc", b"DIDL\x00\x00", nonce);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let updates: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let upd_concurrent_s = updates as f64 / start.elapsed().as_secs_f64();
    let rate_start = Instant::now();
    let h0 = finalized_height(&urls[0]).expect("metrics");
    std::thread::sleep(Duration::from_secs(RATE_WINDOW_SECS));
    let h1 = finalized_height(&urls[0]).expect("metrics");
    let rate = h1.saturating_sub(h0) as f64 / rate_start.elapsed().as_secs_f64();
    println!("cairn-sim, 4 nodes, from the host over 127.0.0.1 HTTP/1.1");
    println!("first finalized block: {first_block_s:.2} s after cairn-sim start");
    println!("finalization rate: {rate:.2} blocks/s ({h0} → {h1} in {RATE_WINDOW_SECS} s)");
    println!("{:<28} {:>12} {:>12}", "", "median", "p99");
    println!(
        "{:<28} {:>10.1}ms {:>10.1}ms",
        "update (v3 call, certified)",
        percentile(&update, 50).as_secs_f64() * 1e3,
        percentile(&update, 99).as_secs_f64() * 1e3
    );
    println!(
        "{:<28} {:>10.1}ms {:>10.1}ms",
        "query (v2, node-signed)",
        percentile(&q, 50).as_secs_f64() * 1e3,
        percentile(&q, 99).as_secs_f64() * 1e3
    );
    let upd_s = SAMPLES as f64 / update.iter().map(|d| d.as_secs_f64()).sum::<f64>();
    println!("update throughput (1 client, sequential): {upd_s:.1}/s");
    println!("update throughput ({UPDATE_CLIENTS} clients): {upd_concurrent_s:.1}/s");
    println!("query throughput ({QUERY_CLIENTS} clients): {per_s:.0}/s");
    println!(
        "ratio query/update median latency: {:.1}x",
        percentile(&update, 50).as_secs_f64() / percentile(&q, 50).as_secs_f64().max(1e-9)
    );
    let sec = "cairn-sim over 127.0.0.1 TCP: 4 nodes, IC app-subnet delays, wall clock";
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (name, v, unit) in [
        (
            format!("update calls/s, {UPDATE_CLIENTS} clients (v3, certified)"),
            upd_concurrent_s,
            "calls/s",
        ),
        (
            "update calls/s, 1 sequential client".to_string(),
            upd_s,
            "calls/s",
        ),
        (
            format!("update latency median, {SAMPLES} sequential"),
            ms(percentile(&update, 50)),
            "ms",
        ),
        (
            "update latency p99".to_string(),
            ms(percentile(&update, 99)),
            "ms",
        ),
        (
            format!("query calls/s, {QUERY_CLIENTS} clients (v2, node-signed)"),
            per_s,
            "calls/s",
        ),
        (
            "query latency median".to_string(),
            ms(percentile(&q, 50)),
            "ms",
        ),
        (
            "query latency p99".to_string(),
            ms(percentile(&q, 99)),
            "ms",
        ),
    ] {
        println!("bench-row\t{sec}\t{name}\t{v:.3}\t{unit}");
    }
}
