//! What a load run measured: per-thread tallies (merged once at the end, so the hot path
//! takes no locks), latency histograms in microseconds, and the final report as a human
//! table and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Most distinct error messages kept as examples (the counts are always complete).
const SAMPLES: usize = 10;

/// A latency histogram in microseconds, 1 µs .. 1 h, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds")
}

/// What one load thread counted.
pub struct Tally {
    /// Successful operations.
    pub ops: u64,
    /// HTTP responses received during the measured ops (any status).
    pub requests: u64,
    /// Requests made to prepare (the object a download reads), not in `ops`.
    pub setup_requests: u64,
    /// Handshakes completed, full.
    pub full: u64,
    /// Handshakes completed, resumed from a ticket.
    pub resumed: u64,
    /// TLS bytes written to sockets.
    pub wire_sent: u64,
    /// TLS bytes read from sockets.
    pub wire_recv: u64,
    /// Application bytes sent (request bodies, stream bytes).
    pub payload_sent: u64,
    /// Application bytes received (response bodies, stream bytes).
    pub payload_recv: u64,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// A few distinct failure messages.
    pub samples: Vec<String>,
    /// Handshake latency (TCP connect start to TLS done), µs.
    pub handshake: Histogram<u64>,
    /// Request start to first response byte, µs.
    pub ttfb: Histogram<u64>,
    /// Request start to the end of the response, µs.
    pub request: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            ops: 0,
            requests: 0,
            setup_requests: 0,
            full: 0,
            resumed: 0,
            wire_sent: 0,
            wire_recv: 0,
            payload_sent: 0,
            payload_recv: 0,
            status: BTreeMap::new(),
            errors: BTreeMap::new(),
            samples: Vec::new(),
            handshake: histogram(),
            ttfb: histogram(),
            request: histogram(),
        }
    }
}

/// Record a duration in µs (at least 1, the histogram's floor).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

impl Tally {
    /// Count one failure under `key`, keeping its message if it is a new one.
    pub fn error(&mut self, key: &str, message: String) {
        *self.errors.entry(key.to_string()).or_default() += 1;
        if self.samples.len() < SAMPLES && !self.samples.contains(&message) {
            self.samples.push(message);
        }
    }

    /// Add another thread's tally into this one.
    pub fn merge(&mut self, o: &Tally) {
        self.ops += o.ops;
        self.requests += o.requests;
        self.setup_requests += o.setup_requests;
        self.full += o.full;
        self.resumed += o.resumed;
        self.wire_sent += o.wire_sent;
        self.wire_recv += o.wire_recv;
        self.payload_sent += o.payload_sent;
        self.payload_recv += o.payload_recv;
        for (k, v) in &o.status {
            *self.status.entry(*k).or_default() += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for s in &o.samples {
            if self.samples.len() < SAMPLES && !self.samples.contains(s) {
                self.samples.push(s.clone());
            }
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.handshake.add(&o.handshake);
        let _ = self.ttfb.add(&o.ttfb);
        let _ = self.request.add(&o.request);
    }

    /// All failures counted.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Percentiles of one histogram, in µs.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// Summarize `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                count: 0,
                mean: 0.0,
                p50: 0,
                p90: 0,
                p99: 0,
                p99_9: 0,
                max: 0,
            };
        }
        Percentiles {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Throughput figures for one direction.
#[derive(Serialize, Debug)]
pub struct Rate {
    /// Payload MB/s (10^6 bytes).
    pub payload_mb_s: f64,
    /// Payload Gbit/s (10^9 bits).
    pub payload_gbit_s: f64,
    /// Wire (TLS) Gbit/s.
    pub wire_gbit_s: f64,
}

/// Handshakes completed by kind.
#[derive(Serialize, Debug)]
pub struct Handshakes {
    /// Full handshakes (certificate exchange).
    pub full: u64,
    /// Resumed from a session ticket.
    pub resumed: u64,
}

/// The three latency families.
#[derive(Serialize, Debug)]
pub struct Latencies {
    /// TCP connect start to TLS handshake complete.
    pub handshake: Percentiles,
    /// Request start to first response byte.
    pub ttfb: Percentiles,
    /// Request start to end of response.
    pub request: Percentiles,
}

/// CPU this client process used, to check it was not the bottleneck.
#[derive(Serialize, Debug)]
pub struct Cpu {
    /// User CPU seconds.
    pub user_s: f64,
    /// System CPU seconds.
    pub sys_s: f64,
    /// User + system.
    pub total_s: f64,
    /// total_s / wall time, in % of one core.
    pub percent_of_one_core: f64,
    /// Cores the load threads were pinned to (empty: not pinned).
    pub cores: Vec<usize>,
    /// CPU seconds per GiB of payload moved (both directions), if any moved.
    pub s_per_gib: Option<f64>,
    /// CPU µs per completed handshake, if any.
    pub us_per_handshake: Option<f64>,
}

/// The final report (also the `--json` document).
#[derive(Serialize, Debug)]
pub struct Report {
    /// handshake | upload | download | mixed.
    pub mode: String,
    /// store | forward.
    pub backend: String,
    /// host:port.
    pub target: String,
    /// Connection slots (threads).
    pub connections: usize,
    /// Wall time of the measured run, seconds.
    pub duration_s: f64,
    /// Successful operations.
    pub ops: u64,
    /// ops / duration.
    pub ops_per_s: f64,
    /// HTTP responses received in measured ops, any status.
    pub requests: u64,
    /// Responses by status code.
    pub status: BTreeMap<String, u64>,
    /// Preparation requests (download's object), not counted in `requests`.
    pub setup_requests: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// TLS bytes written to the socket (payload + records + handshakes + HTTP heads).
    pub wire_bytes_sent: u64,
    /// TLS bytes read from the socket.
    pub wire_bytes_received: u64,
    /// Upload rate.
    pub sent: Rate,
    /// Download rate.
    pub received: Rate,
    /// Handshakes completed.
    pub handshakes: Handshakes,
    /// Failures by kind; never left out.
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub errors_total: u64,
    /// A few distinct failure messages.
    pub error_samples: Vec<String>,
    /// Percentiles in microseconds.
    pub latency_us: Latencies,
    /// This client's CPU use.
    pub client_cpu: Cpu,
}

/// The run's context that is not in the tally.
pub struct Context {
    /// Mode name.
    pub mode: String,
    /// Backend name.
    pub backend: String,
    /// host:port.
    pub target: String,
    /// Connection slots.
    pub connections: usize,
    /// Pinned cores.
    pub cores: Vec<usize>,
    /// Measured wall time.
    pub elapsed: Duration,
    /// (user, system) CPU seconds used during the run.
    pub cpu: (f64, f64),
}

fn rate(payload: u64, wire: u64, secs: f64) -> Rate {
    let r = |b: u64| if secs > 0.0 { b as f64 / secs } else { 0.0 };
    Rate {
        payload_mb_s: round3(r(payload) / 1e6),
        payload_gbit_s: round3(r(payload) * 8.0 / 1e9),
        wire_gbit_s: round3(r(wire) * 8.0 / 1e9),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Report {
    /// Build the report from the merged tally.
    pub fn build(t: &Tally, c: Context) -> Report {
        let secs = c.elapsed.as_secs_f64();
        let total_cpu = c.cpu.0 + c.cpu.1;
        let gib = (t.payload_sent + t.payload_recv) as f64 / (1u64 << 30) as f64;
        let hs = t.full + t.resumed;
        Report {
            mode: c.mode,
            backend: c.backend,
            target: c.target,
            connections: c.connections,
            duration_s: round3(secs),
            ops: t.ops,
            ops_per_s: if secs > 0.0 {
                round3(t.ops as f64 / secs)
            } else {
                0.0
            },
            requests: t.requests,
            status: t.status.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            setup_requests: t.setup_requests,
            bytes_sent: t.payload_sent,
            bytes_received: t.payload_recv,
            wire_bytes_sent: t.wire_sent,
            wire_bytes_received: t.wire_recv,
            sent: rate(t.payload_sent, t.wire_sent, secs),
            received: rate(t.payload_recv, t.wire_recv, secs),
            handshakes: Handshakes {
                full: t.full,
                resumed: t.resumed,
            },
            errors: t.errors.clone(),
            errors_total: t.errors_total(),
            error_samples: t.samples.clone(),
            latency_us: Latencies {
                handshake: Percentiles::of(&t.handshake),
                ttfb: Percentiles::of(&t.ttfb),
                request: Percentiles::of(&t.request),
            },
            client_cpu: Cpu {
                user_s: round3(c.cpu.0),
                sys_s: round3(c.cpu.1),
                total_s: round3(total_cpu),
                percent_of_one_core: if secs > 0.0 {
                    (total_cpu / secs * 1000.0).round() / 10.0
                } else {
                    0.0
                },
                cores: c.cores,
                s_per_gib: (gib > 0.0).then(|| round3(total_cpu / gib)),
                us_per_handshake: (hs > 0).then(|| (total_cpu * 1e6 / hs as f64).round()),
            },
        }
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let cores = if self.client_cpu.cores.is_empty() {
            "not pinned".to_string()
        } else {
            format!("cores {:?}", self.client_cpu.cores)
        };
        let _ = writeln!(
            s,
            "lakegate load: {} ({}) against {}, {} connection(s), {}",
            self.mode, self.backend, self.target, self.connections, cores
        );
        let _ = writeln!(s, "  duration      {:.3} s", self.duration_s);
        let _ = writeln!(s, "  ops           {} ({:.1}/s)", self.ops, self.ops_per_s);
        if self.requests > 0 || self.setup_requests > 0 {
            let by: Vec<String> = self
                .status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(
                s,
                "  requests      {} [{}] (+{} setup)",
                self.requests,
                by.join(", "),
                self.setup_requests
            );
        }
        let _ = writeln!(
            s,
            "  sent          {} payload, {} wire ({:.1} MB/s, {:.3} Gbit/s payload)",
            human_bytes(self.bytes_sent),
            human_bytes(self.wire_bytes_sent),
            self.sent.payload_mb_s,
            self.sent.payload_gbit_s
        );
        let _ = writeln!(
            s,
            "  received      {} payload, {} wire ({:.1} MB/s, {:.3} Gbit/s payload)",
            human_bytes(self.bytes_received),
            human_bytes(self.wire_bytes_received),
            self.received.payload_mb_s,
            self.received.payload_gbit_s
        );
        let _ = writeln!(
            s,
            "  handshakes    {} full, {} resumed",
            self.handshakes.full, self.handshakes.resumed
        );
        let _ = writeln!(s, "  errors        {}", self.errors_total);
        for (k, v) in &self.errors {
            let _ = writeln!(s, "    {k:<28} {v}");
        }
        for m in &self.error_samples {
            let _ = writeln!(s, "    e.g. {m}");
        }
        let _ = writeln!(
            s,
            "  latency (µs)  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in [
            ("handshake", &self.latency_us.handshake),
            ("ttfb", &self.latency_us.ttfb),
            ("request", &self.latency_us.request),
        ] {
            let _ = writeln!(
                s,
                "    {name:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                p.count, p.p50, p.p90, p.p99, p.p99_9, p.max
            );
        }
        let c = &self.client_cpu;
        let mut extra = String::new();
        if let Some(g) = c.s_per_gib {
            let _ = write!(extra, ", {g:.3} CPU-s/GiB");
        }
        if let Some(h) = c.us_per_handshake {
            let _ = write!(extra, ", {h:.0} CPU-µs/handshake");
        }
        let _ = writeln!(
            s,
            "  client CPU    {:.3} s (user {:.3}, sys {:.3}) = {:.1}% of one core{extra}",
            c.total_s, c.user_s, c.sys_s, c.percent_of_one_core
        );
        s
    }
}

/// Bytes with a binary unit.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut i = 0;
    while x >= 1024.0 && i < U.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{x:.2} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally_with(lat_us: &[u64]) -> Tally {
        let mut t = Tally::default();
        for &v in lat_us {
            record(&mut t.request, Duration::from_micros(v));
        }
        t
    }

    #[test]
    fn percentiles_of_known_distribution() {
        // 1..=1000 µs, one each: p50 = 500, p90 = 900, p99 = 990, p99.9 = 999.
        let v: Vec<u64> = (1..=1000).collect();
        let p = Percentiles::of(&tally_with(&v).request);
        assert_eq!(p.count, 1000);
        assert_eq!(
            (p.p50, p.p90, p.p99, p.p99_9, p.max),
            (500, 900, 990, 999, 1000)
        );
        assert!((p.mean - 500.5).abs() < 0.1, "{}", p.mean);
    }

    #[test]
    fn empty_histogram_is_all_zero() {
        let p = Percentiles::of(&histogram());
        assert_eq!(p.count, 0);
        assert_eq!(p.max, 0);
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = tally_with(&[100, 200]);
        a.ops = 2;
        a.requests = 2;
        a.full = 1;
        a.payload_sent = 10;
        a.wire_sent = 30;
        *a.status.entry(201).or_default() += 2;
        a.error("io_reset", "connection reset by peer".into());
        let mut b = tally_with(&[300, 400_000]);
        b.ops = 3;
        b.requests = 4;
        b.resumed = 2;
        b.payload_sent = 5;
        b.wire_sent = 7;
        *b.status.entry(201).or_default() += 3;
        *b.status.entry(500).or_default() += 1;
        b.error("io_reset", "connection reset by peer".into());
        b.error("timeout", "timed out".into());
        a.merge(&b);
        assert_eq!((a.ops, a.requests, a.full, a.resumed), (5, 6, 1, 2));
        assert_eq!((a.payload_sent, a.wire_sent), (15, 37));
        assert_eq!(a.status[&201], 5);
        assert_eq!(a.status[&500], 1);
        assert_eq!(a.errors["io_reset"], 2);
        assert_eq!(a.errors["timeout"], 1);
        assert_eq!(a.errors_total(), 3);
        // Messages are deduplicated, counts are not.
        assert_eq!(a.samples.len(), 2);
        let p = Percentiles::of(&a.request);
        assert_eq!(p.count, 4);
        assert_eq!(p.p50, 200);
        // 3 significant digits: the max is within 0.1% of 400 ms.
        assert!(p.max.abs_diff(400_000) <= 400, "{}", p.max);
    }

    #[test]
    fn samples_are_capped_but_counts_are_not() {
        let mut t = Tally::default();
        for i in 0..100 {
            t.error("connect", format!("connect: refused #{i}"));
        }
        assert_eq!(t.errors["connect"], 100);
        assert_eq!(t.samples.len(), SAMPLES);
    }

    #[test]
    fn report_rates_and_cpu() {
        let t = Tally {
            ops: 10,
            payload_sent: 1 << 30,
            wire_sent: (1 << 30) + (1 << 20),
            full: 4,
            ..Default::default()
        };
        let r = Report::build(
            &t,
            Context {
                mode: "upload".into(),
                backend: "store".into(),
                target: "127.0.0.1:1".into(),
                connections: 2,
                cores: vec![1],
                elapsed: Duration::from_secs(2),
                cpu: (0.5, 0.5),
            },
        );
        assert_eq!(r.ops_per_s, 5.0);
        // 2^30 B in 2 s = 536.871 MB/s = 4.295 Gbit/s.
        assert_eq!(r.sent.payload_mb_s, 536.871);
        assert_eq!(r.sent.payload_gbit_s, 4.295);
        assert_eq!(r.client_cpu.total_s, 1.0);
        assert_eq!(r.client_cpu.percent_of_one_core, 50.0);
        assert_eq!(r.client_cpu.s_per_gib, Some(1.0));
        assert_eq!(r.client_cpu.us_per_handshake, Some(250_000.0));
        let table = r.table();
        assert!(table.contains("upload (store)"), "{table}");
        assert!(table.contains("1.00 GiB payload"), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["latency_us"]["request"]["p99_9"], 0);
        assert_eq!(json["handshakes"]["full"], 4);
    }
}
