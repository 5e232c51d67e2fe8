//! Telemetry: per-worker counters and their aggregation into Prometheus text at scrape
//! time.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer: counters are bumped with
//! a relaxed load and store (plain `mov`s on x86, no locked instruction), so the hot path
//! pays no contention. The admin thread reads every worker's block when scraped; a
//! scrape never blocks or slows a worker. Must not touch sockets or TLS state.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus::proto::{self, MetricFamily, MetricType};

use crate::reason::s3::Code;
use crate::reason::store::Fault;
use crate::reason::{Close, FailReason, ResumeRefusal, TokenReason};

pub mod logs;

/// A counter with exactly one writer thread; readers may be anywhere.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. Must only be called from the owning worker.
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: load+store is enough and avoids a locked read-modify-write.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds (seconds) of the handshake duration histogram buckets.
pub const HANDSHAKE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket histogram with a single writer.
#[derive(Debug, Default)]
pub struct Histo {
    buckets: [Counter; 12],
    count: Counter,
    sum_micros: Counter,
}

impl Histo {
    /// Record one handshake-time observation.
    pub fn observe(&self, secs: f64) {
        self.observe_in(&HANDSHAKE_BUCKETS, secs)
    }

    /// Record one observation against the given bucket bounds.
    pub fn observe_in(&self, bounds: &[f64; 12], secs: f64) {
        for (i, b) in bounds.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].inc();
                break;
            }
        }
        self.count.inc();
        self.sum_micros.add((secs * 1e6) as u64);
    }
}

/// Upper bounds (seconds) of the request duration histogram buckets.
pub const REQUEST_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Methods counted in `lakegate_requests_total` (LIST is GET on a bucket).
pub const METHODS: [&str; 6] = ["GET", "HEAD", "PUT", "DELETE", "LIST", "OTHER"];
/// Statuses counted one by one; any other lands in the last slot, labelled "other".
pub const STATUSES: [u16; 25] = [
    200, 201, 204, 206, 304, 400, 401, 403, 404, 405, 408, 409, 411, 412, 413, 416, 431, 499, 500,
    501, 502, 503, 504, 507, 0,
];

/// Endpoint slots of the s3 backend's upstream metrics (`[backend] endpoints` is
/// capped at this many by the configuration).
pub const UPSTREAM_SLOTS: usize = 8;

/// The `result` label of `lakegate_upstream_requests_total`: an answer below 400, a
/// 4xx passed to the client, a 5xx (→ 502), no answer within `response_timeout`
/// (→ 504), no connection (the next endpoint is tried), a broken connection.
pub const UPSTREAM_RESULTS: [&str; 6] = [
    "ok",
    "client_error",
    "server_error",
    "timeout",
    "connect_failed",
    "io_error",
];

/// One endpoint's upstream counters in one worker.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// By [`UPSTREAM_RESULTS`] index.
    pub results: [Counter; UPSTREAM_RESULTS.len()],
    /// Request sent → response head received (or failure).
    pub latency: Histo,
}

/// The slot of a request's (method, status).
pub fn request_slot(method: &str, status: u16) -> usize {
    let m = METHODS
        .iter()
        .position(|x| *x == method)
        .unwrap_or(METHODS.len() - 1);
    let s = STATUSES
        .iter()
        .position(|x| *x == status)
        .unwrap_or(STATUSES.len() - 1);
    m * STATUSES.len() + s
}

/// Number of slots in the TLS session matrix: version × suite index × resumed.
const SESSION_SLOTS: usize = 2 * 16 * 2;

/// Everything one worker counts.
#[derive(Debug)]
pub struct WorkerStats {
    /// Connections accepted.
    pub connections_total: Counter,
    /// Connections finished (active = total - closed).
    pub connections_closed: Counter,
    /// Connections refused because `max_connections` was reached.
    pub connections_refused: Counter,
    /// Successful handshakes.
    pub handshakes_ok: Counter,
    /// Failed handshakes by [`FailReason`] index.
    pub handshakes_failed: [Counter; FailReason::ALL.len()],
    /// Tickets refused by [`ResumeRefusal`] label index (the client then made a full
    /// handshake, or gave up).
    pub resumptions_refused: [Counter; ResumeRefusal::LABELS.len()],
    /// Open connections ended because the current policy no longer admits them, by
    /// [`FailReason`] index, or the last slot for `max_connection_age`.
    pub policy_closes: [Counter; FailReason::ALL.len() + 1],
    /// Handshake durations.
    pub handshake_duration: Histo,
    /// TLS bytes received from clients.
    pub bytes_received: Counter,
    /// TLS bytes sent to clients.
    pub bytes_sent: Counter,
    /// Upstream connect failures (forward).
    pub upstream_errors: Counter,
    /// s3 backend: per endpoint slot (the order of `[backend] endpoints`).
    pub upstream: [UpstreamStats; UPSTREAM_SLOTS],
    /// s3 backend: requests answered 503 because every endpoint was down.
    pub upstream_unavailable: Counter,
    /// Sessions by version/suite/resumed slot; see [`session_slot`].
    pub sessions: [Counter; SESSION_SLOTS],
    /// Requests by (method, status) slot; see [`request_slot`].
    pub requests: [Counter; METHODS.len() * STATUSES.len()],
    /// Requests answered with an S3 error document, by [`Code::index`].
    pub request_errors: [Counter; Code::ALL.len()],
    /// Store operations that failed for a request (a refusal, a DeleteObjects key, a
    /// GET's read after its status), by [`Fault::index`].
    pub store_errors: [Counter; Fault::ALL.len()],
    /// Request durations (head received to response done).
    pub request_duration: Histo,
    /// Token decisions: [0] valid, [1] absent where not required, then one per
    /// [`TokenReason`] index (failed).
    pub tokens: [Counter; 2 + TokenReason::ALL.len()],
    /// Client certificates seen lately, for `lakegate_client_cert_expiry_seconds`.
    /// Locked by this worker once per handshake and by the admin thread per scrape;
    /// never by another worker.
    pub recent_certs: Mutex<RecentCerts>,
    /// Store jobs refused because the blocking pool's queue was full (answered 503
    /// `SlowDown`).
    pub blocking_rejected: Counter,
    /// Connections still open on this worker when the drain deadline passed, cut then.
    pub drain_cut: Counter,
    /// Lines about failed handshakes skipped over the per-worker budget
    /// ([`logs::LineBudget`]).
    pub unauthenticated_lines_skipped: Counter,
    /// Receives that found this worker's buffer ring empty (`ENOBUFS`) and re-armed.
    pub recv_ring_empty: Counter,
    /// Waits that carried a partial record instead of holding a receive buffer.
    pub recv_carried: Counter,
    /// Waits with a partial record that found this worker's carry budget spent, and
    /// kept their receive buffer instead.
    pub recv_carry_full: Counter,
    /// Established connections ended, by [`Close::index`].
    pub closes: [Counter; Close::LABELS.len()],
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            connections_total: Counter::default(),
            connections_closed: Counter::default(),
            connections_refused: Counter::default(),
            handshakes_ok: Counter::default(),
            handshakes_failed: Default::default(),
            resumptions_refused: Default::default(),
            policy_closes: Default::default(),
            handshake_duration: Histo::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            upstream_errors: Counter::default(),
            upstream: Default::default(),
            upstream_unavailable: Counter::default(),
            sessions: std::array::from_fn(|_| Counter::default()),
            requests: std::array::from_fn(|_| Counter::default()),
            request_errors: std::array::from_fn(|_| Counter::default()),
            store_errors: std::array::from_fn(|_| Counter::default()),
            request_duration: Histo::default(),
            tokens: Default::default(),
            recent_certs: Mutex::new(RecentCerts::default()),
            blocking_rejected: Counter::default(),
            drain_cut: Counter::default(),
            unauthenticated_lines_skipped: Counter::default(),
            recv_ring_empty: Counter::default(),
            recv_carried: Counter::default(),
            recv_carry_full: Counter::default(),
            closes: Default::default(),
        }
    }
}

impl WorkerStats {
    /// Count a failed handshake.
    pub fn handshake_failed(&self, r: FailReason) {
        if let Some(i) = FailReason::ALL.iter().position(|x| *x == r) {
            self.handshakes_failed[i].inc();
        }
    }

    /// Count a token decision: `Ok(true)` a valid token, `Ok(false)` none where none is
    /// required, `Err(reason)` a refusal.
    pub fn token(&self, r: Result<bool, TokenReason>) {
        let i = match r {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(reason) => 2 + reason.index(),
        };
        self.tokens[i].inc();
    }

    /// Count an open connection ended by policy: `None` for its maximum age.
    pub fn policy_close(&self, r: Option<FailReason>) {
        let i = match r {
            Some(r) => FailReason::ALL.iter().position(|x| *x == r).unwrap_or(0),
            None => FailReason::ALL.len(),
        };
        self.policy_closes[i].inc();
    }
}

/// Most client identities one worker remembers for the expiry gauge; the scrape
/// shows at most this many series too (the most recently seen across workers), so
/// the label set is bounded however many clients a fleet has.
pub const RECENT_CERTS: usize = 128;

/// The client certificates a worker saw most recently: identity → (not-after, when
/// seen). A fixed-size table; the oldest sighting makes room for a new identity.
#[derive(Debug, Default)]
pub struct RecentCerts {
    // (identity, not-after, unix seconds seen, sequence within this worker)
    entries: Vec<(String, i64, u64, u64)>,
    seq: u64,
}

impl RecentCerts {
    /// Note a handshake by `identity` whose certificate ends at `not_after`.
    pub fn seen(&mut self, identity: &str, not_after: i64) {
        self.seq += 1;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == identity) {
            (e.1, e.2, e.3) = (not_after, at, self.seq);
            return;
        }
        let entry = (identity.to_owned(), not_after, at, self.seq);
        if self.entries.len() < RECENT_CERTS {
            self.entries.push(entry);
        } else if let Some(oldest) = self.entries.iter_mut().min_by_key(|e| (e.2, e.3)) {
            *oldest = entry;
        }
    }

    /// (identity, not-after, unix seconds last seen) of every remembered certificate.
    pub fn entries(&self) -> impl Iterator<Item = (&str, i64, u64)> {
        self.entries.iter().map(|e| (e.0.as_str(), e.1, e.2))
    }
}

/// Control-plane state the admin thread shows: reloads, CRLs and the admin endpoint's
/// own traffic. Written by the main thread on reload or CRL refresh and by the admin
/// threads, never by a worker.
#[derive(Debug, Default)]
pub struct Control {
    /// Not-after of the running server certificate, unix seconds.
    pub server_cert_not_after: i64,
    /// Config reloads by result (ok, failed).
    pub reloads: [u64; 2],
    /// Unix seconds of the last successful load (start or reload).
    pub last_reload_success: i64,
    /// CRL re-reads after a change on disk, by result (ok, failed).
    pub crl_reloads: [u64; 2],
    /// JWKS re-reads after a change on disk, by result (ok, failed).
    pub jwks_reloads: [u64; 2],
    /// Checks (at load and every `crl_refresh`) that found a CRL past nextUpdate.
    pub crl_stale: u64,
    /// (file, nextUpdate unix seconds) of every loaded CRL.
    pub crl_next_update: Vec<(String, i64)>,
    /// Admin requests answered, by (endpoint, status); both come from fixed sets in
    /// the admin module, so the series stay few whatever clients send.
    pub admin_requests: std::collections::BTreeMap<(&'static str, u16), u64>,
    /// Admin connections closed unanswered: over the connection limit, and request
    /// head not complete in time.
    pub admin_dropped: [u64; 2],
    /// Multipart uploads removed by the sweep after `multipart_expiry`.
    pub multipart_expired: u64,
    /// s3 backend: the endpoint URLs of the running generation, the `endpoint` label
    /// of each upstream slot.
    pub upstream_endpoints: Vec<String>,
}

/// The slot of a (version, suite, resumed) triple; `suites` is the provider's list.
pub fn session_slot(version13: bool, suite_index: usize, resumed: bool) -> usize {
    (usize::from(version13) * 16 + suite_index.min(15)) * 2 + usize::from(resumed)
}

/// Process-wide view for the admin thread: one stats block per worker and gauges that
/// are not on any hot path.
pub struct Telemetry {
    /// Per-worker blocks, index = worker id.
    pub workers: Vec<Arc<WorkerStats>>,
    /// Cipher suite names by index, as used in [`session_slot`].
    pub suites: Vec<String>,
    /// Reload, certificate and CRL state.
    pub control: Mutex<Control>,
    /// Jobs waiting in the store's blocking pool, asked at scrape time (the engine
    /// installs it; telemetry does not know the pool).
    pub blocking_queued: std::sync::OnceLock<Box<dyn Fn() -> usize + Send + Sync>>,
    /// The store's LIST folder cache, asked at scrape time (installed in store mode).
    pub list_cache: std::sync::OnceLock<Box<dyn Fn() -> ListCacheStats + Send + Sync>>,
}

/// The store's cache of large folders' sorted entries (`backend::store::listcache`), read
/// at scrape time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ListCacheStats {
    /// Folder walks of a LIST served from kept entries.
    pub hits: u64,
    /// Folders read whole, sorted and kept.
    pub fills: u64,
    /// Folders read to be kept and found over the one-folder limit (listed streaming).
    pub oversize: u64,
    /// Folders kept now.
    pub folders: u64,
    /// Bytes the kept folders hold now.
    pub bytes: u64,
    /// The most the kept folders of the process may hold.
    pub budget: u64,
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut l = proto::LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn family(name: &str, help: &str, t: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(t);
    f.set_metric(metrics);
    f
}

fn counter(labels: Vec<proto::LabelPair>, v: f64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v);
    let mut m = proto::Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<proto::LabelPair>, v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_label(labels);
    m.set_gauge(g);
    m
}

impl Telemetry {
    /// A telemetry hub for `workers` workers.
    pub fn new(workers: usize, suites: Vec<String>) -> Self {
        Telemetry {
            workers: (0..workers)
                .map(|_| Arc::new(WorkerStats::default()))
                .collect(),
            suites,
            control: Mutex::new(Control::default()),
            blocking_queued: std::sync::OnceLock::new(),
            list_cache: std::sync::OnceLock::new(),
        }
    }

    fn sum(&self, f: impl Fn(&WorkerStats) -> u64) -> u64 {
        self.workers.iter().map(|w| f(w)).sum()
    }

    fn histogram(&self, bounds: &[f64; 12], h: impl Fn(&WorkerStats) -> &Histo) -> proto::Metric {
        let mut out = proto::Histogram::default();
        let mut cum = 0u64;
        let mut buckets = Vec::new();
        for (i, ub) in bounds.iter().enumerate() {
            cum += self.sum(|w| h(w).buckets[i].get());
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*ub);
            b.set_cumulative_count(cum);
            buckets.push(b);
        }
        out.set_bucket(buckets);
        out.set_sample_count(self.sum(|w| h(w).count.get()));
        out.set_sample_sum(self.sum(|w| h(w).sum_micros.get()) as f64 / 1e6);
        let mut m = proto::Metric::default();
        m.set_histogram(out);
        m
    }

    /// Gather every worker's counters into metric families.
    pub fn gather(&self) -> Vec<MetricFamily> {
        use MetricType::{COUNTER, GAUGE, HISTOGRAM};
        let mut out = Vec::new();

        let mut hs = vec![counter(
            vec![label("result", "ok"), label("reason", "")],
            self.sum(|w| w.handshakes_ok.get()) as f64,
        )];
        for (i, r) in FailReason::ALL.iter().enumerate() {
            hs.push(counter(
                vec![label("result", "failed"), label("reason", r.as_str())],
                self.sum(|w| w.handshakes_failed[i].get()) as f64,
            ));
        }
        out.push(family(
            "lakegate_handshakes_total",
            "TLS handshakes by result and failure reason.",
            COUNTER,
            hs,
        ));

        out.push(family(
            "lakegate_tls_resumptions_refused_total",
            "Session tickets not honoured, by reason (the client is asked for a full handshake).",
            COUNTER,
            ResumeRefusal::LABELS
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    counter(
                        vec![label("reason", r)],
                        self.sum(|w| w.resumptions_refused[i].get()) as f64,
                    )
                })
                .collect(),
        ));
        out.push(family(
            "lakegate_connections_closed_by_policy_total",
            "Open connections ended because the running policy no longer admits them, or for their age.",
            COUNTER,
            FailReason::ALL
                .iter()
                .map(|r| r.as_str())
                .chain(["max_connection_age"])
                .enumerate()
                .map(|(i, r)| {
                    counter(
                        vec![label("reason", r)],
                        self.sum(|w| w.policy_closes[i].get()) as f64,
                    )
                })
                .collect(),
        ));

        out.push(family(
            "lakegate_connections_closed_total",
            "Established connections ended, by why (handshake failures are in lakegate_handshakes_total).",
            COUNTER,
            Close::LABELS
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    counter(
                        vec![label("reason", r)],
                        self.sum(|w| w.closes[i].get()) as f64,
                    )
                })
                .collect(),
        ));

        out.push(family(
            "lakegate_handshake_duration_seconds",
            "Time from accept to a finished handshake.",
            HISTOGRAM,
            vec![self.histogram(&HANDSHAKE_BUCKETS, |w| &w.handshake_duration)],
        ));

        let mut reqs = Vec::new();
        for (mi, m) in METHODS.iter().enumerate() {
            for (si, st) in STATUSES.iter().enumerate() {
                let n = self.sum(|w| w.requests[mi * STATUSES.len() + si].get());
                if n > 0 {
                    let status = if *st == 0 {
                        "other".to_string()
                    } else {
                        st.to_string()
                    };
                    reqs.push(counter(
                        vec![label("method", m), label("status", &status)],
                        n as f64,
                    ));
                }
            }
        }
        out.push(family(
            "lakegate_requests_total",
            "Object API requests by method and status.",
            COUNTER,
            reqs,
        ));
        // Every code is a series from the first scrape on, so that an alert on, say,
        // InsufficientStorage has a zero to rise from.
        out.push(family(
            "lakegate_request_errors_total",
            "Object API requests answered with an S3 error document, by its <Code>.",
            COUNTER,
            Code::ALL
                .iter()
                .map(|c| {
                    counter(
                        vec![label("code", c.as_str())],
                        self.sum(|w| w.request_errors[c.index()].get()) as f64,
                    )
                })
                .collect(),
        ));
        out.push(family(
            "lakegate_store_errors_total",
            "Store operations that failed for object API requests, by what the filesystem said (io, no_space, read_only, no_descriptors and other are the store's failures; the rest are the request's).",
            COUNTER,
            Fault::ALL
                .iter()
                .map(|f| {
                    counter(
                        vec![label("fault", f.as_str())],
                        self.sum(|w| w.store_errors[f.index()].get()) as f64,
                    )
                })
                .collect(),
        ));
        let mut toks = vec![
            counter(
                vec![label("result", "ok"), label("reason", "")],
                self.sum(|w| w.tokens[0].get()) as f64,
            ),
            counter(
                vec![label("result", "absent"), label("reason", "")],
                self.sum(|w| w.tokens[1].get()) as f64,
            ),
        ];
        for (i, r) in TokenReason::ALL.iter().enumerate() {
            toks.push(counter(
                vec![label("result", "failed"), label("reason", r.as_str())],
                self.sum(|w| w.tokens[2 + i].get()) as f64,
            ));
        }
        out.push(family(
            "lakegate_tokens_total",
            "Bearer token decisions on object API requests: ok, absent (not required), or failed by reason.",
            COUNTER,
            toks,
        ));
        out.push(family(
            "lakegate_request_duration_seconds",
            "Object API request time, head received to response sent.",
            HISTOGRAM,
            vec![self.histogram(&REQUEST_BUCKETS, |w| &w.request_duration)],
        ));

        let total = self.sum(|w| w.connections_total.get());
        let closed = self.sum(|w| w.connections_closed.get());
        out.push(family(
            "lakegate_connections_active",
            "Connections currently open.",
            GAUGE,
            vec![gauge(vec![], total.saturating_sub(closed) as f64)],
        ));
        out.push(family(
            "lakegate_connections_total",
            "Connections accepted.",
            COUNTER,
            vec![counter(vec![], total as f64)],
        ));
        out.push(family(
            "lakegate_connections_refused_total",
            "Connections closed at once because max_connections was reached.",
            COUNTER,
            vec![counter(
                vec![],
                self.sum(|w| w.connections_refused.get()) as f64,
            )],
        ));
        out.push(family(
            "lakegate_blocking_pool_rejected_total",
            "Store jobs (hashing, listing, commit, delete) refused with 503 SlowDown because the blocking pool's queue was full.",
            COUNTER,
            vec![counter(
                vec![],
                self.sum(|w| w.blocking_rejected.get()) as f64,
            )],
        ));
        if let Some(queued) = self.blocking_queued.get() {
            out.push(family(
                "lakegate_blocking_pool_queued",
                "Store jobs waiting for a thread of the blocking pool.",
                GAUGE,
                vec![gauge(vec![], queued() as f64)],
            ));
        }
        if let Some(stats) = self.list_cache.get() {
            let s = stats();
            for (name, help, t, v) in [
                ("lakegate_list_cache_hits_total", "LIST folder walks served from a kept sorted folder.", COUNTER, s.hits),
                ("lakegate_list_cache_fills_total", "Folders read whole, sorted and kept for later LIST pages.", COUNTER, s.fills),
                ("lakegate_list_cache_oversize_total", "Folders read to be kept and found over the one-folder limit (a quarter of the budget); listed streaming until they change.", COUNTER, s.oversize),
                ("lakegate_list_cache_folders", "Folders kept now.", GAUGE, s.folders),
                ("lakegate_list_cache_bytes", "Bytes the kept folders hold now.", GAUGE, s.bytes),
                ("lakegate_list_cache_budget_bytes", "The most the kept folders of the process may hold.", GAUGE, s.budget),
            ] {
                let m = if t == COUNTER { counter(vec![], v as f64) } else { gauge(vec![], v as f64) };
                out.push(family(name, help, t, vec![m]));
            }
        }
        out.push(family(
            "lakegate_log_lines_dropped_total",
            "Log lines dropped because the log writer's queue was full (stderr's reader stalled or slower than the lines came); the data path never waits for the log.",
            COUNTER,
            vec![counter(vec![], logs::dropped_lines() as f64)],
        ));
        out.push(family(
            "lakegate_log_lines_skipped_total",
            "Lines about failed handshakes not logged because their worker had logged 100 such in the last second (each failure is still counted in lakegate_handshakes_total).",
            COUNTER,
            vec![counter(vec![], self.sum(|w| w.unauthenticated_lines_skipped.get()) as f64)],
        ));
        out.push(family(
            "lakegate_log_write_errors_total",
            "Writes of log lines to stderr that failed (a closed pipe, a restarted journald); what they held is lost.",
            COUNTER,
            vec![counter(vec![], logs::write_errors() as f64)],
        ));
        out.push(family(
            "lakegate_drain_cut_connections_total",
            "Connections still open at the drain deadline, cut then.",
            COUNTER,
            vec![counter(vec![], self.sum(|w| w.drain_cut.get()) as f64)],
        ));
        out.push(family(
            "lakegate_recv_ring_empty_total",
            "Receives that found their worker's provided buffer ring empty (ENOBUFS); each waited for a buffer to come back and re-armed.",
            COUNTER,
            vec![counter(vec![], self.sum(|w| w.recv_ring_empty.get()) as f64)],
        ));
        out.push(family(
            "lakegate_recv_carried_total",
            "Waits that kept only the partial TLS record their client paused in (a carry of its length) instead of a receive buffer.",
            COUNTER,
            vec![counter(vec![], self.sum(|w| w.recv_carried.get()) as f64)],
        ));
        out.push(family(
            "lakegate_recv_carry_full_total",
            "Waits with a partial TLS record that found their worker's carry budget spent and kept their 65 KiB receive buffer instead.",
            COUNTER,
            vec![counter(vec![], self.sum(|w| w.recv_carry_full.get()) as f64)],
        ));
        out.push(family(
            "lakegate_bytes_received_total",
            "TLS bytes received from clients.",
            COUNTER,
            vec![counter(vec![], self.sum(|w| w.bytes_received.get()) as f64)],
        ));
        out.push(family(
            "lakegate_bytes_sent_total",
            "TLS bytes sent to clients.",
            COUNTER,
            vec![counter(vec![], self.sum(|w| w.bytes_sent.get()) as f64)],
        ));
        out.push(family(
            "lakegate_upstream_errors_total",
            "Upstream connections that failed.",
            COUNTER,
            vec![counter(
                vec![],
                self.sum(|w| w.upstream_errors.get()) as f64,
            )],
        ));

        let endpoints = self
            .control
            .lock()
            .map(|c| c.upstream_endpoints.clone())
            .unwrap_or_default();
        if !endpoints.is_empty() {
            let mut ms = Vec::new();
            let mut hs = Vec::new();
            for (i, ep) in endpoints.iter().enumerate().take(UPSTREAM_SLOTS) {
                for (r, result) in UPSTREAM_RESULTS.iter().enumerate() {
                    ms.push(counter(
                        vec![label("endpoint", ep), label("result", result)],
                        self.sum(|w| w.upstream[i].results[r].get()) as f64,
                    ));
                }
                let mut h = self.histogram(&REQUEST_BUCKETS, |w| &w.upstream[i].latency);
                h.set_label(vec![label("endpoint", ep)]);
                hs.push(h);
            }
            ms.push(counter(
                vec![label("endpoint", "none"), label("result", "unavailable")],
                self.sum(|w| w.upstream_unavailable.get()) as f64,
            ));
            out.push(family(
                "lakegate_upstream_requests_total",
                "Requests to the s3 backend's upstream endpoints, by endpoint and result (endpoint=\"none\": every endpoint down, answered 503).",
                COUNTER,
                ms,
            ));
            out.push(family(
                "lakegate_upstream_request_duration_seconds",
                "Time from sending a request to an s3 upstream endpoint to its response head.",
                HISTOGRAM,
                hs,
            ));
        }

        let mut sessions = Vec::new();
        for v13 in [false, true] {
            for (si, sname) in self.suites.iter().enumerate().take(16) {
                for resumed in [false, true] {
                    let slot = session_slot(v13, si, resumed);
                    let n = self.sum(|w| w.sessions[slot].get());
                    if n > 0 {
                        sessions.push(counter(
                            vec![
                                label("version", if v13 { "TLSv1.3" } else { "TLSv1.2" }),
                                label("cipher_suite", sname),
                                label("resumed", if resumed { "true" } else { "false" }),
                            ],
                            n as f64,
                        ));
                    }
                }
            }
        }
        if !sessions.is_empty() {
            out.push(family(
                "lakegate_tls_sessions_total",
                "Established TLS sessions by version, suite and resumption.",
                COUNTER,
                sessions,
            ));
        }

        let control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        out.push(family(
            "lakegate_server_cert_expiry_timestamp_seconds",
            "Not-after of the server certificate, unix seconds.",
            GAUGE,
            vec![gauge(vec![], control.server_cert_not_after as f64)],
        ));
        let pair = |name: &str, help: &str, v: [u64; 2]| {
            family(
                name,
                help,
                COUNTER,
                vec![
                    counter(vec![label("result", "ok")], v[0] as f64),
                    counter(vec![label("result", "failed")], v[1] as f64),
                ],
            )
        };
        out.push(pair(
            "lakegate_config_reloads_total",
            "Configuration reloads (SIGHUP, POST /reload) by result.",
            control.reloads,
        ));
        out.push(family(
            "lakegate_config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded, unix seconds.",
            GAUGE,
            vec![gauge(vec![], control.last_reload_success as f64)],
        ));
        out.push(pair(
            "lakegate_crl_reloads_total",
            "CRL re-reads after a file changed on disk, by result.",
            control.crl_reloads,
        ));
        out.push(pair(
            "lakegate_jwks_reloads_total",
            "Re-reads of the [tokens] JWKS file after it changed on disk, by result (failed keeps the previous keys).",
            control.jwks_reloads,
        ));
        out.push(family(
            "lakegate_crl_stale_total",
            "Checks that found a CRL past its nextUpdate.",
            COUNTER,
            vec![counter(vec![], control.crl_stale as f64)],
        ));
        out.push(family(
            "lakegate_crl_next_update_timestamp_seconds",
            "nextUpdate of each loaded CRL, unix seconds.",
            GAUGE,
            control
                .crl_next_update
                .iter()
                .map(|(f, t)| gauge(vec![label("file", f)], *t as f64))
                .collect(),
        ));
        out.push(family(
            "lakegate_admin_requests_total",
            "Admin endpoint requests answered, by endpoint and status.",
            COUNTER,
            control
                .admin_requests
                .iter()
                .map(|((endpoint, status), n)| {
                    counter(
                        vec![
                            label("endpoint", endpoint),
                            label("status", &status.to_string()),
                        ],
                        *n as f64,
                    )
                })
                .collect(),
        ));
        out.push(family(
            "lakegate_admin_connections_dropped_total",
            "Admin connections closed unanswered: over the connection limit, or no complete request head in time.",
            COUNTER,
            vec![
                counter(vec![label("reason", "over_limit")], control.admin_dropped[0] as f64),
                counter(vec![label("reason", "head_timeout")], control.admin_dropped[1] as f64),
            ],
        ));
        out.push(family(
            "lakegate_multipart_uploads_expired_total",
            "Multipart uploads removed because no part was stored for longer than backend.multipart_expiry.",
            COUNTER,
            vec![counter(vec![], control.multipart_expired as f64)],
        ));
        drop(control);

        // Seconds left on the most recently seen client certificates, one series per
        // identity, at most RECENT_CERTS of them.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut seen: Vec<(String, i64, u64)> = Vec::new();
        for w in &self.workers {
            let recent = w.recent_certs.lock().unwrap_or_else(|p| p.into_inner());
            for (id, not_after, at) in recent.entries() {
                // Seen on several workers: the latest sighting, and on a tie the later
                // certificate (a renewal) wins.
                match seen.iter_mut().find(|e| e.0 == id) {
                    Some(e) if (e.2, e.1) < (at, not_after) => *e = (id.to_owned(), not_after, at),
                    Some(_) => {}
                    None => seen.push((id.to_owned(), not_after, at)),
                }
            }
        }
        seen.sort_by_key(|e| std::cmp::Reverse(e.2));
        seen.truncate(RECENT_CERTS);
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(family(
            "lakegate_client_cert_expiry_seconds",
            "Seconds until the certificate of a recently seen client identity expires (at most 128 identities).",
            GAUGE,
            seen.iter()
                .map(|(id, na, _)| gauge(vec![label("identity", id)], (na - now) as f64))
                .collect(),
        ));

        let per_worker = |name: &str, help: &str, t, f: &dyn Fn(&WorkerStats) -> u64| {
            let ms = self
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let v = f(w) as f64;
                    let l = vec![label("worker", &i.to_string())];
                    if t == COUNTER {
                        counter(l, v)
                    } else {
                        gauge(l, v)
                    }
                })
                .collect();
            family(name, help, t, ms)
        };
        out.push(per_worker(
            "lakegate_worker_connections_total",
            "Connections accepted per worker.",
            COUNTER,
            &|w| w.connections_total.get(),
        ));
        out.push(per_worker(
            "lakegate_worker_connections_active",
            "Connections open per worker.",
            GAUGE,
            &|w| {
                w.connections_total
                    .get()
                    .saturating_sub(w.connections_closed.get())
            },
        ));
        out.push(per_worker(
            "lakegate_worker_bytes_received_total",
            "TLS bytes received per worker.",
            COUNTER,
            &|w| w.bytes_received.get(),
        ));
        out
    }

    /// The Prometheus text exposition of [`Telemetry::gather`].
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        // The encoder refuses a family with no samples (e.g. no request yet), which
        // would blank the whole scrape: leave those out.
        let families: Vec<_> = self
            .gather()
            .into_iter()
            .filter(|f| !f.get_metric().is_empty())
            .collect();
        if let Err(e) = prometheus::Encoder::encode(&enc, &families, &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_scrape_is_not_empty_and_counts_add_up_across_workers() {
        let t = Telemetry::new(2, vec!["TLS13_AES_128_GCM_SHA256".into()]);
        let idle = t.render();
        assert!(idle.contains("lakegate_connections_total 0"), "{idle}");
        assert!(!idle.contains("lakegate_requests_total{"), "{idle}");
        t.workers[0].requests[request_slot("PUT", 201)].inc();
        t.workers[1].requests[request_slot("PUT", 201)].add(2);
        t.workers[1].handshake_failed(FailReason::Revoked);
        assert!(
            idle.contains("lakegate_request_errors_total{code=\"InsufficientStorage\"} 0"),
            "{idle}"
        );
        t.workers[0].request_errors[Code::InsufficientStorage.index()].inc();
        t.workers[1].request_errors[Code::InsufficientStorage.index()].inc();
        t.workers[1].request_errors[Code::SlowDown.index()].inc();
        t.workers[0].store_errors[Fault::Io.index()].inc();
        t.workers[1].store_errors[Fault::Io.index()].inc();
        let text = t.render();
        assert!(
            text.contains("lakegate_request_errors_total{code=\"InsufficientStorage\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lakegate_request_errors_total{code=\"SlowDown\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lakegate_store_errors_total{fault=\"io\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lakegate_store_errors_total{fault=\"no_space\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("lakegate_requests_total{method=\"PUT\",status=\"201\"} 3"),
            "{text}"
        );
        assert!(text.contains("reason=\"revoked\"} 1"), "{text}");
        // Every close reason is a series from the first scrape on, summed over workers.
        assert!(
            idle.contains("lakegate_connections_closed_total{reason=\"drain_deadline\"} 0"),
            "{idle}"
        );
        t.workers[0].closes[Close::IdleTimeout.index()].inc();
        t.workers[1].closes[Close::IdleTimeout.index()].inc();
        let text = t.render();
        assert!(
            text.contains("lakegate_connections_closed_total{reason=\"idle_timeout\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn client_cert_expiry_keeps_the_most_recent_identities_and_is_bounded() {
        let t = Telemetry::new(2, vec![]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        {
            let mut r0 = t.workers[0].recent_certs.lock().unwrap();
            for i in 0..(RECENT_CERTS + 10) {
                r0.seen(&format!("spiffe://x/{i}"), now + 1000 + i as i64);
            }
            assert_eq!(r0.entries().count(), RECENT_CERTS);
            // The ten oldest made room; the newest is kept.
            assert!(!r0.entries().any(|e| e.0 == "spiffe://x/9"));
            assert!(r0.entries().any(|e| e.0 == "spiffe://x/10"));
        }
        // The same identity on two workers is one series; a renewed certificate shows
        // its new not-after once seen again.
        t.workers[1]
            .recent_certs
            .lock()
            .unwrap()
            .seen("spiffe://x/137", now + 5000);
        let text = t.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("lakegate_client_cert_expiry_seconds{"))
            .count();
        assert_eq!(series, RECENT_CERTS, "{text}");
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("lakegate_client_cert_expiry_seconds{identity=\"spiffe://x/137\"}")
            })
            .unwrap();
        let left: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((4990.0..=5000.0).contains(&left), "{line}");
    }
}
