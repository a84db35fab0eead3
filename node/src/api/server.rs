//! `HttpApi`: the sans-IO server of the HTTP interface, and `ApiBackend`, the seam through
//! which the replica serves it.
//!
//! The driver (kernel runtime or simulator) owns the sockets and the clock: it reports
//! connections, bytes and time, and sends whatever [`HttpApi::take_outputs`] yields. Nothing
//! here blocks: a synchronous call (v3/v4) parks its connection until the certified state
//! shows a terminal status or [`ApiConfig::sync_call_timeout_ns`] passes (then 202), and each
//! connection has a deadline per request (slow clients get 408) and per idle period.
//!
//! Checks on every request, in order: HTTP framing and limits; route; CBOR envelope; request
//! type; effective canister id; ingress expiry; authentication; then the endpoint's own rules
//! (replays, read_state paths). Each failure has the status code the IC uses (reference §1.1).

use super::auth::{self, AuthError};
use super::cbor::Writer;
use super::envelope::{CallContent, Content, Envelope, ReadStateContent, RequestKind};
use super::http::{self, ContentType, HttpError, Method, Request, RequestReader, Route};
use super::metrics::{self, Metric};
use super::request_id::{self, RequestId};
use super::state_tree::CertifiedState;
use crate::types::Principal;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Identifies one client connection (the driver's choice).
pub type ConnId = u64;

/// Domain separator of query-response signatures.
pub const DS_RESPONSE: &[u8] = b"\x0Bic-response";
/// Most concurrent connections.
pub const CONNECTIONS_MAX: usize = 1024;
/// Most ingress messages remembered for replay detection.
pub const TRACKED_INGRESS_MAX: usize = 100_000;
/// Size of the one attestation report `GET /_/attestation` serves (an SEV-SNP
/// ATTESTATION_REPORT, `node::attest::report`).
pub const ATTESTATION_REPORT_BYTES: usize = crate::attest::report::REPORT_SIZE_BYTES;
/// What `GET /_/attestation` says before the driver said anything.
pub const NO_ATTESTATION_YET: &str = "no attestation report: the driver has not provided one";
/// Reject codes (spec §Reject codes).
pub const REJECT_DESTINATION_INVALID: u64 = 3;
pub const REJECT_CANISTER_REJECT: u64 = 4;
pub const REJECT_CANISTER_ERROR: u64 = 5;

/// Health, as `/api/v2/status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaHealth {
    Starting,
    WaitingForCertifiedState,
    CertifiedStateBehind,
    Healthy,
}

impl ReplicaHealth {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicaHealth::Starting => "starting",
            ReplicaHealth::WaitingForCertifiedState => "waiting_for_certified_state",
            ReplicaHealth::CertifiedStateBehind => "certified_state_behind",
            ReplicaHealth::Healthy => "healthy",
        }
    }
}

/// A validated, authenticated update call for the ingress pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressMessage {
    pub request_id: RequestId,
    pub effective_canister_id: Principal,
    pub content: CallContent,
    /// The envelope bytes as received, for gossip to the other nodes (which validate again).
    pub envelope: Vec<u8>,
}

/// A rejection: of a query, or of a call before consensus (`inspect_message`, full pool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub code: u64,
    pub message: String,
    /// `IC0xxx`, as the IC sends it.
    pub error_code: String,
}

/// What the replica does for the API. The replica implements it over its pools and state.
pub trait ApiBackend {
    /// DER of the root (NNS) key, 133 bytes; the subnet's own key on a single-subnet network.
    fn root_key_der(&self) -> &[u8];
    /// This subnet's id; on the root subnet `SA(root key DER)`.
    fn subnet_id(&self) -> Principal;
    /// The canister ranges of this subnet (closed intervals).
    fn canister_ranges(&self) -> &[(Principal, Principal)];
    fn health(&self) -> ReplicaHealth;
    /// The newest certified state, if any height has been certified yet.
    fn certified_state(&self) -> Option<&CertifiedState>;
    /// Hands an update call to the ingress pool (after `inspect_message` if the replica runs
    /// it); `Err` is a non-replicated rejection.
    fn submit_ingress(&mut self, msg: IngressMessage) -> Result<(), Reject>;
    /// Runs a query against the newest state.
    fn query(&mut self, content: &CallContent) -> Result<Vec<u8>, Reject>;
    /// This node's id, `SA(its Ed25519 DER key)`.
    fn node_id(&self) -> Principal;
    /// Ed25519 signature by this node's key over `message`.
    fn sign_with_node_key(&self, message: &[u8]) -> [u8; 64];
    /// For calls to the management canister: the canister the call is about (the Candid
    /// `canister_id` of the argument), `None` when the method may target any canister
    /// (`create_canister`, `provisional_create_canister_with_cycles`) or cannot be told.
    fn management_target(&self, _method: &str, _arg: &[u8]) -> Option<Principal> {
        None
    }
    /// The samples of `GET /metrics` (heights, counters, and whatever the driver added).
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }
}

/// Tunables of the server; the defaults are the IC's where it has one.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// How long a v3/v4 call waits for its certified reply before answering 202.
    pub sync_call_timeout_ns: u64,
    /// The longest a client may take to send one whole request (slow-loris bound).
    pub request_timeout_ns: u64,
    /// How long an idle keep-alive connection is kept. Longer than the agents' own pool idle
    /// timeout (reqwest's default is 90 s), so the client retires an idle connection before the
    /// node closes it: a close racing the client's next request on that connection fails the
    /// request (hyper's `IncompleteMessage`).
    pub idle_timeout_ns: u64,
    pub impl_version: &'static str,
    /// Largest update call envelope (registry `max_ingress_bytes_per_message`; 2 MiB on
    /// application subnets, 3.5 MiB on system subnets).
    pub max_ingress_bytes: usize,
    /// The trusted execution environment the driver found (`"none"`, `"sev-snp"`), reported
    /// as `tee` in `/api/v2/status` and `cairn_tee_info` in `/metrics`; `None`: not said
    /// (the simulator). The node never probes hardware itself.
    pub tee: Option<&'static str>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            sync_call_timeout_ns: 10_000_000_000,
            request_timeout_ns: 30_000_000_000,
            idle_timeout_ns: 120_000_000_000,
            impl_version: concat!("cairn-", env!("CARGO_PKG_VERSION")),
            max_ingress_bytes: 3_584 * 1024,
            tee: None,
        }
    }
}

/// Bytes for one connection; `close` asks the driver to close it after sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub conn: ConnId,
    pub bytes: Vec<u8>,
    pub close: bool,
}

/// A refused request: status and a plain-text message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Refusal {
    status: u16,
    message: String,
}

impl Refusal {
    fn new(status: u16, message: impl fmt::Display) -> Refusal {
        Refusal {
            status,
            message: format!("{message}"),
        }
    }
}

/// What handling a request produced.
enum Handled {
    Respond {
        status: u16,
        content_type: ContentType,
        body: Vec<u8>,
    },
    /// A v3/v4 call parked until its status is terminal in the certified state.
    Wait(RequestId),
}

struct SyncWait {
    request_id: RequestId,
    deadline_ns: u64,
    keep_alive: bool,
}

struct Connection {
    reader: RequestReader,
    /// When the first byte of the request being read arrived.
    request_started_ns: Option<u64>,
    last_activity_ns: u64,
    waiting: Option<SyncWait>,
}

/// Who sent an ingress message, kept until its expiry so replays and foreign read_state of
/// its status can be refused.
struct Submitted {
    sender: Principal,
    effective: Principal,
}

/// The HTTP interface of one node.
pub struct HttpApi {
    config: ApiConfig,
    conns: BTreeMap<ConnId, Connection>,
    outputs: Vec<Output>,
    submitted: BTreeMap<RequestId, Submitted>,
    /// `(expiry, id)` of every entry of `submitted`, to forget them in expiry order.
    expiries: BTreeSet<(u64, RequestId)>,
    /// Samples the driver reported for `/metrics` (peers, uptime, store), newest set.
    driver_metrics: Vec<Metric>,
    /// `GET /_/attestation`: the report (200), or why there is none (404).
    attestation: Result<Vec<u8>, String>,
}

impl HttpApi {
    pub fn new(config: ApiConfig) -> HttpApi {
        HttpApi {
            config,
            conns: BTreeMap::new(),
            outputs: Vec::new(),
            submitted: BTreeMap::new(),
            expiries: BTreeSet::new(),
            driver_metrics: Vec::new(),
            attestation: Err(String::from(NO_ATTESTATION_YET)),
        }
    }

    /// What `GET /_/attestation` serves: the node's attestation report, raw
    /// ([`ATTESTATION_REPORT_BYTES`], `application/octet-stream`, 200), or when `report` is
    /// `None` a 404 whose plain-text body is `reason` (e.g. "no TEE: this node does not run
    /// under SEV-SNP"). A report of any other size is not served (404, saying so). The driver
    /// obtains the report; the node never produces one itself.
    pub fn set_attestation_report(&mut self, report: Option<Vec<u8>>, reason: &str) {
        self.attestation = match report {
            Some(r) if r.len() == ATTESTATION_REPORT_BYTES => Ok(r),
            Some(r) => Err(format!(
                "attestation report of {} bytes not served (expected {ATTESTATION_REPORT_BYTES})",
                r.len()
            )),
            None => Err(String::from(reason)),
        };
    }

    /// Replaces the driver's samples served by `GET /metrics` (at most
    /// [`metrics::SAMPLES_MAX`] are rendered in all).
    pub fn set_driver_metrics(&mut self, samples: Vec<Metric>) {
        self.driver_metrics = samples;
    }

    /// A new connection. Over [`CONNECTIONS_MAX`] it is answered 503 and closed.
    pub fn connect(&mut self, conn: ConnId, now_ns: u64) {
        if self.conns.len() >= CONNECTIONS_MAX {
            let body = b"too many connections";
            let bytes = http::response(503, ContentType::Text, body, true);
            self.outputs.push(Output {
                conn,
                bytes,
                close: true,
            });
            return;
        }
        self.conns.insert(
            conn,
            Connection {
                reader: RequestReader::new(),
                request_started_ns: None,
                last_activity_ns: now_ns,
                waiting: None,
            },
        );
    }

    /// The peer closed, or the driver dropped the connection.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// Bytes from a client. Complete requests are answered at once (into the outputs).
    pub fn receive<B: ApiBackend>(
        &mut self,
        backend: &mut B,
        conn: ConnId,
        bytes: &[u8],
        now_ns: u64,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_activity_ns = now_ns;
        if c.request_started_ns.is_none() && !bytes.is_empty() {
            c.request_started_ns = Some(now_ns);
        }
        c.reader.push(bytes);
        self.serve(backend, conn, now_ns);
    }

    /// Answers every complete request buffered on `conn`, unless it is parked.
    fn serve<B: ApiBackend>(&mut self, backend: &mut B, conn: ConnId, now_ns: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if c.waiting.is_some() {
                // Pipelined bytes wait behind the parked call, within the usual bounds.
                if c.reader.buffered() > http::HEADER_BYTES_MAX + http::BODY_BYTES_MAX {
                    self.fail(conn, HttpError::PayloadTooLarge);
                }
                return;
            }
            let request = match c.reader.next_request() {
                Ok(Some(r)) => r,
                Ok(None) => {
                    if c.reader.take_expect_continue() {
                        self.outputs.push(Output {
                            conn,
                            bytes: b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                            close: false,
                        });
                    }
                    return;
                }
                Err(e) => return self.fail(conn, e),
            };
            c.request_started_ns = (c.reader.buffered() > 0).then_some(now_ns);
            let keep_alive = request.keep_alive;
            match self.handle(backend, &request, now_ns) {
                Handled::Respond {
                    status,
                    content_type,
                    body,
                } => {
                    self.respond(conn, status, content_type, &body, !keep_alive);
                    if !keep_alive {
                        self.conns.remove(&conn);
                        return;
                    }
                }
                Handled::Wait(request_id) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.waiting = Some(SyncWait {
                            request_id,
                            deadline_ns: now_ns.saturating_add(self.config.sync_call_timeout_ns),
                            keep_alive,
                        });
                    }
                    // The reply may already be certified (a replay of a finished call).
                    self.finish_waits(&*backend, now_ns);
                }
            }
        }
    }

    fn respond(&mut self, conn: ConnId, status: u16, ct: ContentType, body: &[u8], close: bool) {
        self.outputs.push(Output {
            conn,
            bytes: http::response(status, ct, body, close),
            close,
        });
    }

    fn fail(&mut self, conn: ConnId, e: HttpError) {
        let msg = format!("{e}");
        self.respond(conn, e.status(), ContentType::Text, msg.as_bytes(), true);
        self.conns.remove(&conn);
    }

    /// Advances time: finishes parked calls whose reply is certified or whose wait is over,
    /// answers 408 to requests that take too long, closes idle connections, forgets expired
    /// ingress. Call it when time passes and whenever a new height is certified.
    pub fn poll<B: ApiBackend>(&mut self, backend: &mut B, now_ns: u64) {
        self.finish_waits(&*backend, now_ns);
        let mut timed_out = Vec::new();
        let mut idle = Vec::new();
        for (id, c) in &self.conns {
            if c.waiting.is_some() {
                continue;
            }
            match c.request_started_ns {
                Some(t) if now_ns.saturating_sub(t) > self.config.request_timeout_ns => {
                    timed_out.push(*id)
                }
                None if now_ns.saturating_sub(c.last_activity_ns) > self.config.idle_timeout_ns => {
                    idle.push(*id)
                }
                _ => {}
            }
        }
        for id in timed_out {
            self.respond(id, 408, ContentType::Text, b"request timeout", true);
            self.conns.remove(&id);
        }
        for id in idle {
            self.outputs.push(Output {
                conn: id,
                bytes: Vec::new(),
                close: true,
            });
            self.conns.remove(&id);
        }
        while let Some(&(expiry, rid)) = self.expiries.first() {
            if expiry >= now_ns {
                break;
            }
            self.expiries.pop_first();
            self.submitted.remove(&rid);
        }
        // Parked connections that were released may hold pipelined requests.
        let ready: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.waiting.is_none() && c.reader.buffered() > 0)
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            self.serve(backend, id, now_ns);
        }
    }

    fn finish_waits<B: ApiBackend>(&mut self, backend: &B, now_ns: u64) {
        let state = backend.certified_state();
        let mut done = Vec::new();
        for (id, c) in &self.conns {
            let Some(w) = &c.waiting else { continue };
            let terminal = state.is_some_and(|s| {
                matches!(
                    s.request_status(&w.request_id),
                    Some("replied" | "rejected" | "done")
                )
            });
            match (terminal, state) {
                (true, Some(s)) => {
                    let path: [&[u8]; 2] = [b"request_status", &w.request_id];
                    let cert = s.certificate_for(&[&path[..]]);
                    let mut body = Writer::self_describing();
                    body.map(2).text("status").text("replied");
                    body.text("certificate").bytes(&cert);
                    done.push((*id, 200, ContentType::Cbor, body.into_bytes(), w.keep_alive));
                }
                _ if now_ns >= w.deadline_ns => {
                    done.push((*id, 202, ContentType::None, Vec::new(), w.keep_alive))
                }
                _ => {}
            }
        }
        for (id, status, ct, body, keep_alive) in done {
            self.respond(id, status, ct, &body, !keep_alive);
            match self.conns.get_mut(&id) {
                Some(c) if keep_alive => {
                    c.waiting = None;
                    c.last_activity_ns = now_ns;
                    c.request_started_ns = (c.reader.buffered() > 0).then_some(now_ns);
                }
                _ => {
                    self.conns.remove(&id);
                }
            }
        }
    }

    /// Everything to send since the last call.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        core::mem::take(&mut self.outputs)
    }

    /// The earliest time [`HttpApi::poll`] has something to do.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.conns
            .values()
            .map(|c| match (&c.waiting, c.request_started_ns) {
                (Some(w), _) => w.deadline_ns,
                (None, Some(t)) => t.saturating_add(self.config.request_timeout_ns),
                (None, None) => c
                    .last_activity_ns
                    .saturating_add(self.config.idle_timeout_ns),
            })
            .min()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// `GET /metrics`: the backend's samples, the driver's, then the server's own.
    fn metrics_body<B: ApiBackend>(&self, backend: &B) -> String {
        let mut samples = backend.metrics();
        samples.extend(self.driver_metrics.iter().cloned());
        samples.push(Metric::gauge(
            "cairn_http_connections",
            "open HTTP API connections",
            self.conns.len() as u64,
        ));
        if let Some(tee) = self.config.tee {
            samples.push(
                Metric::gauge("cairn_tee_info", "the trusted execution environment", 1)
                    .with_label("tee", tee),
            );
        }
        metrics::render(&samples)
    }

    fn handle<B: ApiBackend>(&mut self, backend: &mut B, req: &Request, now_ns: u64) -> Handled {
        if req.method == Method::Options {
            return respond(204, ContentType::None, Vec::new());
        }
        let route = http::route(req.method, &req.path);
        let serving = !matches!(
            backend.health(),
            ReplicaHealth::Starting | ReplicaHealth::WaitingForCertifiedState
        );
        let always = matches!(
            route,
            Ok(Route::Status | Route::Metrics | Route::Attestation) | Err(_)
        );
        if !serving && !always {
            let body = b"replica is not healthy yet".to_vec();
            return respond(503, ContentType::Text, body);
        }
        let result = match route {
            Err(e) => Err(Refusal::new(e.status(), e)),
            Ok(Route::Status) => Ok(respond(
                200,
                ContentType::Cbor,
                status_body(backend, &self.config),
            )),
            Ok(Route::Metrics) => Ok(respond(
                200,
                ContentType::Metrics,
                self.metrics_body(backend).into_bytes(),
            )),
            Ok(Route::Attestation) => Ok(match &self.attestation {
                Ok(report) => respond(200, ContentType::OctetStream, report.clone()),
                Err(reason) => respond(404, ContentType::Text, reason.clone().into_bytes()),
            }),
            Ok(Route::Call { version, ecid }) => {
                self.call(backend, version, ecid, &req.body, now_ns)
            }
            Ok(Route::Query { ecid, .. }) => query(backend, ecid, &req.body, now_ns),
            Ok(Route::ReadStateCanister { ecid, .. }) => {
                self.read_state(&*backend, Target::Canister(ecid), &req.body, now_ns)
            }
            Ok(Route::ReadStateSubnet { esid, .. }) => {
                self.read_state(&*backend, Target::Subnet(esid), &req.body, now_ns)
            }
        };
        result.unwrap_or_else(|r| respond(r.status, ContentType::Text, r.message.into_bytes()))
    }

    fn call<B: ApiBackend>(
        &mut self,
        backend: &mut B,
        version: u8,
        ecid: Principal,
        body: &[u8],
        now_ns: u64,
    ) -> Result<Handled, Refusal> {
        if body.len() > self.config.max_ingress_bytes {
            return Err(Refusal::new(
                413,
                "ingress message larger than the subnet allows",
            ));
        }
        let env = Envelope::decode(body, RequestKind::Call).map_err(|e| Refusal::new(400, e))?;
        let Content::Call(content) = &env.content else {
            return Err(Refusal::new(400, "not a call"));
        };
        let target = check_effective_canister(backend, content, ecid)?;
        authenticate(backend, &env, Some(target), now_ns)?;
        let rid = env.request_id;
        let certified = backend
            .certified_state()
            .and_then(|s| s.request_status(&rid));
        if self.submitted.contains_key(&rid) || certified.is_some() {
            // A replay: never submitted twice. v2 answers as before; v3/v4 wait for (or
            // return at once) the certified outcome.
            return Ok(if version == 2 {
                respond(202, ContentType::None, Vec::new())
            } else {
                Handled::Wait(rid)
            });
        }
        if self.submitted.len() >= TRACKED_INGRESS_MAX {
            return Err(Refusal::new(429, "too many ingress messages in flight"));
        }
        let msg = IngressMessage {
            request_id: rid,
            effective_canister_id: ecid,
            content: content.clone(),
            envelope: body.to_vec(),
        };
        if let Err(reject) = backend.submit_ingress(msg) {
            return Ok(respond(
                200,
                ContentType::Cbor,
                non_replicated_body(version, &reject),
            ));
        }
        self.expiries.insert((content.ingress_expiry_ns, rid));
        self.submitted.insert(
            rid,
            Submitted {
                sender: content.sender,
                effective: ecid,
            },
        );
        Ok(if version == 2 {
            respond(202, ContentType::None, Vec::new())
        } else {
            Handled::Wait(rid)
        })
    }

    fn read_state<B: ApiBackend>(
        &self,
        backend: &B,
        target: Target,
        body: &[u8],
        now_ns: u64,
    ) -> Result<Handled, Refusal> {
        let env =
            Envelope::decode(body, RequestKind::ReadState).map_err(|e| Refusal::new(400, e))?;
        let Content::ReadState(content) = &env.content else {
            return Err(Refusal::new(400, "not a read_state"));
        };
        match target {
            Target::Canister(ecid) => check_in_ranges(backend, ecid)?,
            Target::Subnet(esid) if esid != backend.subnet_id() => {
                return Err(Refusal::new(404, "unknown subnet"))
            }
            Target::Subnet(_) => {}
        }
        let delegation_target = match target {
            Target::Canister(ecid) => Some(ecid),
            Target::Subnet(_) => None,
        };
        authenticate(backend, &env, delegation_target, now_ns)?;
        self.check_paths(content, target)?;
        let state = backend
            .certified_state()
            .ok_or_else(|| Refusal::new(503, "certified state not available yet"))?;
        // An empty path asks for nothing beyond `/time` (never for the whole tree).
        let paths: Vec<&[Vec<u8>]> = content
            .paths
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.as_slice())
            .collect();
        let cert = state.certificate_for(&paths);
        let mut w = Writer::self_describing();
        w.map(1).text("certificate").bytes(&cert);
        Ok(respond(200, ContentType::Cbor, w.into_bytes()))
    }

    /// The read_state path rules of the spec (reference §1.11).
    fn check_paths(&self, content: &ReadStateContent, target: Target) -> Result<(), Refusal> {
        let forbidden = |why: &str| Err(Refusal::new(403, format!("path not allowed: {why}")));
        let mut request_id: Option<&[u8]> = None;
        let mut ranges_of: Option<&[u8]> = None;
        for path in &content.paths {
            let labels: Vec<&[u8]> = path.iter().map(|l| l.as_slice()).collect();
            match (labels.as_slice(), target) {
                ([], _)
                | ([b"time"], _)
                | ([b"subnet", ..], _)
                | ([b"api_boundary_nodes", ..], _) => {}
                ([b"canister_ranges", sid], Target::Subnet(_)) => {
                    if ranges_of.is_some_and(|s| s != *sid) {
                        return forbidden("canister ranges of more than one subnet");
                    }
                    ranges_of = Some(sid);
                }
                ([b"request_status", rid, rest @ ..], _) => {
                    if rid.len() != 32 || rest.len() > 1 {
                        return Err(Refusal::new(400, "malformed request_status path"));
                    }
                    if request_id.is_some_and(|r| r != *rid) {
                        return forbidden("more than one request id");
                    }
                    request_id = Some(rid);
                    self.check_request_owner(rid, content.sender, target)?;
                }
                ([b"canister", cid, field, ..], Target::Canister(ecid)) => {
                    if *cid != ecid.as_slice() {
                        return forbidden("canister is not the effective canister");
                    }
                    match *field {
                        b"module_hash"
                        | b"controllers"
                        | b"metadata"
                        | b"canister_creation_timestamp"
                        | b"last_install_timestamp" => {}
                        _ => return forbidden("canister field"),
                    }
                }
                _ => return forbidden("unknown or disallowed path"),
            }
        }
        Ok(())
    }

    fn check_request_owner(
        &self,
        rid: &[u8],
        sender: Principal,
        target: Target,
    ) -> Result<(), Refusal> {
        let Ok(rid) = <[u8; 32]>::try_from(rid) else {
            return Err(Refusal::new(400, "malformed request id"));
        };
        if let Some(s) = self.submitted.get(&rid) {
            let same_target = match target {
                Target::Canister(ecid) => ecid == s.effective,
                Target::Subnet(_) => true,
            };
            if s.sender != sender || !same_target {
                return Err(Refusal::new(
                    403,
                    "request status belongs to another sender",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Canister(Principal),
    Subnet(Principal),
}

fn respond(status: u16, content_type: ContentType, body: Vec<u8>) -> Handled {
    Handled::Respond {
        status,
        content_type,
        body,
    }
}

fn authenticate<B: ApiBackend>(
    backend: &B,
    env: &Envelope,
    target: Option<Principal>,
    now_ns: u64,
) -> Result<(), Refusal> {
    auth::authenticate(env, target, now_ns, backend.root_key_der())
        .map_err(|e: AuthError| Refusal::new(e.http_status(), e))
}

/// The effective canister must be on this subnet. `aaaaa-aa` itself is accepted as an
/// effective id for management calls (older ic-utils sends `provisional_create_canister_*`
/// that way, and the later read_state of its status uses the same id); a replica of a
/// multi-subnet network would route it to the right subnet instead.
fn check_in_ranges<B: ApiBackend>(backend: &B, ecid: Principal) -> Result<(), Refusal> {
    let inside = ecid.is_management()
        || backend
            .canister_ranges()
            .iter()
            .any(|(lo, hi)| *lo <= ecid && ecid <= *hi);
    if inside {
        Ok(())
    } else {
        Err(Refusal::new(
            400,
            "effective canister id is not on this subnet",
        ))
    }
}

/// The effective canister id must be the addressed canister, or for the management canister
/// the canister the call is about. Returns the canister delegation targets must allow.
fn check_effective_canister<B: ApiBackend>(
    backend: &B,
    content: &CallContent,
    ecid: Principal,
) -> Result<Principal, Refusal> {
    check_in_ranges(backend, ecid)?;
    if !content.canister_id.is_management() {
        if content.canister_id != ecid {
            return Err(Refusal::new(
                400,
                "canister_id does not match the effective canister id",
            ));
        }
        return Ok(ecid);
    }
    match backend.management_target(&content.method_name, &content.arg) {
        Some(t) if t != ecid => Err(Refusal::new(
            400,
            "effective canister id does not match the management call's canister",
        )),
        _ => Ok(ecid),
    }
}

fn query<B: ApiBackend>(
    backend: &mut B,
    ecid: Principal,
    body: &[u8],
    now_ns: u64,
) -> Result<Handled, Refusal> {
    let env = Envelope::decode(body, RequestKind::Query).map_err(|e| Refusal::new(400, e))?;
    let Content::Query(content) = &env.content else {
        return Err(Refusal::new(400, "not a query"));
    };
    let target = check_effective_canister(&*backend, content, ecid)?;
    authenticate(&*backend, &env, Some(target), now_ns)?;
    let outcome = backend.query(content);
    Ok(respond(
        200,
        ContentType::Cbor,
        signed_query_response(&*backend, &outcome, &env.request_id, now_ns),
    ))
}

/// The hash a node signs for a query response (reference §1.9).
pub fn query_response_hash(
    outcome: &Result<Vec<u8>, Reject>,
    request_id: &RequestId,
    timestamp_ns: u64,
) -> [u8; 32] {
    let mut entries = Vec::with_capacity(6);
    match outcome {
        Ok(arg) => {
            entries.push(request_id::entry("status", request_id::sha256(b"replied")));
            let reply = request_id::hash_of_entries(alloc::vec![request_id::entry(
                "arg",
                request_id::sha256(arg)
            )]);
            entries.push(request_id::entry("reply", reply));
        }
        Err(r) => {
            entries.push(request_id::entry("status", request_id::sha256(b"rejected")));
            entries.push(request_id::entry(
                "reject_code",
                request_id::hash_nat(r.code),
            ));
            let msg = request_id::sha256(r.message.as_bytes());
            entries.push(request_id::entry("reject_message", msg));
            let code = request_id::sha256(r.error_code.as_bytes());
            entries.push(request_id::entry("error_code", code));
        }
    }
    entries.push(request_id::entry(
        "timestamp",
        request_id::hash_nat(timestamp_ns),
    ));
    entries.push(request_id::entry(
        "request_id",
        request_id::sha256(request_id),
    ));
    request_id::hash_of_entries(entries)
}

fn signed_query_response<B: ApiBackend>(
    backend: &B,
    outcome: &Result<Vec<u8>, Reject>,
    request_id: &RequestId,
    now_ns: u64,
) -> Vec<u8> {
    let hash = query_response_hash(outcome, request_id, now_ns);
    let mut msg = Vec::with_capacity(DS_RESPONSE.len() + 32);
    msg.extend_from_slice(DS_RESPONSE);
    msg.extend_from_slice(&hash);
    let signature = backend.sign_with_node_key(&msg);
    let mut w = Writer::self_describing();
    match outcome {
        Ok(arg) => {
            w.map(3).text("status").text("replied");
            w.text("reply").map(1).text("arg").bytes(arg);
        }
        Err(r) => {
            w.map(5).text("status").text("rejected");
            w.text("reject_code").u64(r.code);
            w.text("reject_message").text(&r.message);
            w.text("error_code").text(&r.error_code);
        }
    }
    w.text("signatures").array(1).map(3);
    w.text("timestamp").u64(now_ns);
    w.text("signature").bytes(&signature);
    w.text("identity").bytes(backend.node_id().as_slice());
    w.into_bytes()
}

fn non_replicated_body(version: u8, r: &Reject) -> Vec<u8> {
    let mut w = Writer::self_describing();
    if version == 2 {
        w.map(3);
    } else {
        w.map(4).text("status").text("non_replicated_rejection");
    }
    w.text("reject_code").u64(r.code);
    w.text("reject_message").text(&r.message);
    w.text("error_code").text(&r.error_code);
    w.into_bytes()
}

/// `GET /api/v2/status`, fields in the IC's order, then cairn's `tee` (agents ignore keys
/// they do not know).
fn status_body<B: ApiBackend>(backend: &B, config: &ApiConfig) -> Vec<u8> {
    let height = backend.certified_state().map(|s| s.height);
    let mut w = Writer::self_describing();
    w.map(3 + usize::from(height.is_some()) + usize::from(config.tee.is_some()));
    w.text("root_key").bytes(backend.root_key_der());
    w.text("impl_version").text(config.impl_version);
    w.text("replica_health_status")
        .text(backend.health().as_str());
    if let Some(h) = height {
        w.text("certified_height").u64(h);
    }
    if let Some(tee) = config.tee {
        w.text("tee").text(tee);
    }
    w.into_bytes()
}

/// Checks a query response's node signature as ic-agent does (for tests and tools).
pub fn verify_query_signature(
    node_der_key: &[u8],
    outcome: &Result<Vec<u8>, Reject>,
    request_id: &RequestId,
    timestamp_ns: u64,
    signature: &[u8],
) -> Result<(), AuthError> {
    let mut msg = Vec::with_capacity(DS_RESPONSE.len() + 32);
    msg.extend_from_slice(DS_RESPONSE);
    msg.extend_from_slice(&query_response_hash(outcome, request_id, timestamp_ns));
    let raw = node_der_key
        .get(12..)
        .filter(|_| node_der_key.len() == 44)
        .ok_or(AuthError::UnsupportedKey)?;
    auth::verify_ed25519(raw, &msg, signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cbor::{self, Record};

    /// A replica that has certified nothing yet and reports one metric of its own.
    struct Starting;

    impl ApiBackend for Starting {
        fn root_key_der(&self) -> &[u8] {
            &[0x30, 0x03]
        }
        fn subnet_id(&self) -> Principal {
            Principal::ANONYMOUS
        }
        fn canister_ranges(&self) -> &[(Principal, Principal)] {
            &[]
        }
        fn health(&self) -> ReplicaHealth {
            ReplicaHealth::WaitingForCertifiedState
        }
        fn certified_state(&self) -> Option<&CertifiedState> {
            None
        }
        fn submit_ingress(&mut self, _msg: IngressMessage) -> Result<(), Reject> {
            unreachable!("no calls in these tests")
        }
        fn query(&mut self, _content: &CallContent) -> Result<Vec<u8>, Reject> {
            unreachable!("no queries in these tests")
        }
        fn node_id(&self) -> Principal {
            Principal::ANONYMOUS
        }
        fn sign_with_node_key(&self, _message: &[u8]) -> [u8; 64] {
            [0; 64]
        }
        fn metrics(&self) -> Vec<Metric> {
            alloc::vec![Metric::gauge("cairn_finalized_height", "finalized", 5)]
        }
    }

    fn get(api: &mut HttpApi, path: &str) -> (String, Vec<u8>) {
        let request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n");
        exchange(api, request.as_bytes())
    }

    fn exchange(api: &mut HttpApi, request: &[u8]) -> (String, Vec<u8>) {
        api.connect(1, 0);
        api.receive(&mut Starting, 1, request, 0);
        let out = api.take_outputs();
        api.disconnect(1);
        assert_eq!(out.len(), 1);
        let bytes = &out[0].bytes;
        let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(bytes[..split].to_vec()).unwrap();
        (head, bytes[split + 4..].to_vec())
    }

    #[test]
    fn metrics_are_served_before_the_replica_is_healthy_with_the_tee() {
        let config = ApiConfig {
            tee: Some("none"),
            ..ApiConfig::default()
        };
        let mut api = HttpApi::new(config);
        api.set_driver_metrics(alloc::vec![Metric::gauge("cairn_uptime_seconds", "up", 9)]);
        let (head, body) = get(&mut api, "/metrics");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"));
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("\ncairn_finalized_height 5\n"), "{text}");
        assert!(text.contains("\ncairn_http_connections 1\n"), "{text}");
        assert!(text.contains("\ncairn_uptime_seconds 9\n"), "{text}");
        assert!(
            text.contains("\ncairn_tee_info{tee=\"none\"} 1\n"),
            "{text}"
        );
        // Everything of the IC's interface but status still waits for a certified state.
        let query = b"POST /api/v2/canister/aaaaa-aa/query HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        let (head, _) = exchange(&mut api, query);
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    }

    #[test]
    fn attestation_report_is_served_raw_or_refused_with_the_reason() {
        let mut api = HttpApi::new(ApiConfig::default());
        let (head, body) = get(&mut api, "/_/attestation");
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
        assert_eq!(body, NO_ATTESTATION_YET.as_bytes());
        let reason = "no TEE: this node does not run under SEV-SNP";
        api.set_attestation_report(None, reason);
        let (head, body) = get(&mut api, "/_/attestation");
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; charset=utf-8"),
            "{head}"
        );
        assert_eq!(body, reason.as_bytes());
        // A real report (the shared test data's Milan v3 report), served byte for byte while
        // the replica is still waiting for a certified state.
        let report = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/testdata/sev-snp/milan-v3-oak-oc-release/report.bin"
        ));
        assert_eq!(report.len(), ATTESTATION_REPORT_BYTES);
        api.set_attestation_report(Some(report.to_vec()), "unused");
        let (head, body) = get(&mut api, "/_/attestation");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(
            head.contains("Content-Type: application/octet-stream"),
            "{head}"
        );
        assert!(head.contains(&format!("Content-Length: {ATTESTATION_REPORT_BYTES}")));
        assert_eq!(body, report);
        // Anything but a whole report is refused, and only GET is allowed.
        api.set_attestation_report(Some(report[..100].to_vec()), "unused");
        let (head, body) = get(&mut api, "/_/attestation");
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
        assert!(String::from_utf8(body).unwrap().contains("100 bytes"));
        let post =
            b"POST /_/attestation HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let (head, _) = exchange(&mut api, post);
        assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    }

    #[test]
    fn status_reports_the_tee_only_when_the_driver_said() {
        for tee in [Some("none"), Some("sev-snp"), None] {
            let mut api = HttpApi::new(ApiConfig {
                tee,
                ..ApiConfig::default()
            });
            let (head, body) = get(&mut api, "/api/v2/status");
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            let value = cbor::decode(&body).unwrap();
            let map = Record::new(value.untagged()).unwrap();
            assert_eq!(map.text("tee").ok(), tee);
            assert_eq!(map.keys().count(), 3 + usize::from(tee.is_some()));
            assert_eq!(
                map.text("replica_health_status").ok(),
                Some("waiting_for_certified_state")
            );
        }
        let mut api = HttpApi::new(ApiConfig::default());
        let (_, body) = get(&mut api, "/metrics");
        assert!(!String::from_utf8(body).unwrap().contains("cairn_tee_info"));
    }
}
