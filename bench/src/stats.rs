//! The result of one run as it is printed and read back: latency histograms and their summary,
//! counters, per-workload figures and what each target process cost.
//!
//! Owns the JSON shape (one object per run) and the merge of results from worker processes
//! (counters add, histograms merge through their V2 serialization). Never measures anything.

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::BenchError;

pub type Hist = Histogram<u64>;

/// Latencies are recorded in nanoseconds, 1 ns to 10 minutes, 3 significant digits.
pub fn new_hist() -> Hist {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// Records `ns`, clamped into the histogram's range so that no sample is ever lost.
pub fn record(h: &mut Hist, ns: u64) {
    let v = ns.clamp(1, h.high());
    h.saturating_record(v);
}

pub fn encode(h: &Hist) -> Result<String, BenchError> {
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(h, &mut bytes).map_err(|e| BenchError::Histogram(format!("{e:?}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub fn decode(s: &str) -> Result<Hist, BenchError> {
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| BenchError::Histogram(e.to_string()))?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| BenchError::Histogram(format!("{e:?}")))
}

/// Percentiles of a histogram in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(h: &Hist) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Self {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        })
    }
}

/// What was asked for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Params {
    pub targets: Vec<String>,
    pub conns: usize,
    /// Total requests (or connections, or nothing for bulk) per second; 0 = flat out.
    pub rate: f64,
    pub duration_s: f64,
    pub threads: usize,
    pub procs: usize,
    pub sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HoldStats {
    pub conns: u64,
    /// Connections whose TCP handshake completed.
    pub connected: u64,
    /// Connections that answered the probe request sent right after connecting.
    pub served: u64,
    /// Held connections that failed or were closed by the peer after having been served.
    pub dropped: u64,
    /// From the first connect to the last connection settled (served or failed).
    pub ramp_s: f64,
    pub slab_before_kib: u64,
    pub slab_held_kib: u64,
    /// Growth of /proc/meminfo Slab per served connection, bytes.
    pub slab_per_conn_b: Option<f64>,
    /// Growth of the socket-related slab caches alone (see `procstat::SOCKET_CACHES`) per
    /// served connection, bytes: less disturbed by unrelated kernel activity than Slab.
    #[serde(default)]
    pub socket_slab_per_conn_b: Option<f64>,
    /// Target RSS before the ramp and with every connection held, KiB (first target pid).
    pub rss_before_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    pub rss_per_conn_b: Option<f64>,
    pub threads_held: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BulkStats {
    pub streams: usize,
    /// `up` (client to server) or `down`.
    pub direction: String,
    pub bytes: u64,
    pub gbit_s: f64,
}

/// The cost of one target process tree over the measured window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetStats {
    pub pid: u32,
    pub cpu_s: f64,
    /// CPU seconds per million completed requests (connections for `conn`); per GB for bulk.
    pub cpu_s_per_unit: Option<f64>,
    pub unit: String,
    pub threads_peak: u64,
    pub io_workers_peak: u64,
    pub processes: u64,
    pub rss_kib: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub mode: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub params: Params,
    /// Length of the measured window.
    pub elapsed_s: f64,
    /// Completed requests (connections for `conn`) inside the measured window.
    pub ok: u64,
    pub errors: u64,
    #[serde(default)]
    pub error_kinds: BTreeMap<String, u64>,
    /// Requests scheduled inside the window but neither answered nor failed when the run ended.
    pub unfinished: u64,
    /// `ok / elapsed_s`.
    pub rate: f64,
    pub latency: Option<Latency>,
    /// How late open-loop requests left compared with their schedule (the generator's own lag).
    pub send_lag: Option<Latency>,
    pub hold: Option<HoldStats>,
    pub bulk: Option<BulkStats>,
    #[serde(default)]
    pub targets: Vec<TargetStats>,
    /// Serialized histograms, present only in worker-process output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_hist: Option<String>,
}

/// Counters and histograms of one engine thread or one worker process, before summary.
#[derive(Debug, Clone)]
pub struct Tally {
    pub hist: Hist,
    pub lag: Hist,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub unfinished: u64,
    pub connected: u64,
    pub served: u64,
    pub dropped: u64,
    pub ramp_ns: u64,
    pub bytes: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            hist: new_hist(),
            lag: new_hist(),
            ok: 0,
            errors: BTreeMap::new(),
            unfinished: 0,
            connected: 0,
            served: 0,
            dropped: 0,
            ramp_ns: 0,
            bytes: 0,
        }
    }
}

impl Tally {
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_insert(0) += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds `other` into `self`; the ramp of the whole is the slowest part's ramp.
    pub fn merge(&mut self, other: &Tally) -> Result<(), BenchError> {
        self.hist.add(&other.hist).map_err(|e| BenchError::Histogram(format!("{e:?}")))?;
        self.lag.add(&other.lag).map_err(|e| BenchError::Histogram(format!("{e:?}")))?;
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        self.unfinished += other.unfinished;
        self.connected += other.connected;
        self.served += other.served;
        self.dropped += other.dropped;
        self.ramp_ns = self.ramp_ns.max(other.ramp_ns);
        self.bytes += other.bytes;
        Ok(())
    }
}

/// What a worker process prints as its last line: its tally in transportable form.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerTally {
    pub hist: String,
    pub lag: String,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub unfinished: u64,
    pub connected: u64,
    pub served: u64,
    pub dropped: u64,
    pub ramp_ns: u64,
}

impl WorkerTally {
    pub fn from_tally(t: &Tally) -> Result<Self, BenchError> {
        Ok(Self {
            hist: encode(&t.hist)?,
            lag: encode(&t.lag)?,
            ok: t.ok,
            errors: t.errors.clone(),
            unfinished: t.unfinished,
            connected: t.connected,
            served: t.served,
            dropped: t.dropped,
            ramp_ns: t.ramp_ns,
        })
    }

    pub fn into_tally(self) -> Result<Tally, BenchError> {
        Ok(Tally {
            hist: decode(&self.hist)?,
            lag: decode(&self.lag)?,
            ok: self.ok,
            errors: self.errors,
            unfinished: self.unfinished,
            connected: self.connected,
            served: self.served,
            dropped: self.dropped,
            ramp_ns: self.ramp_ns,
            bytes: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_survives_serialization() {
        let mut h = new_hist();
        for v in [1_000, 20_000, 20_000, 3_000_000, 700_000_000_000] {
            record(&mut h, v);
        }
        let back = decode(&encode(&h).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }

    #[test]
    fn merged_tallies_add_counts_and_keep_the_slowest_ramp() {
        let mut a = Tally::default();
        record(&mut a.hist, 10_000);
        a.ok = 1;
        a.ramp_ns = 5;
        a.error("timeout");
        let mut b = Tally::default();
        record(&mut b.hist, 90_000);
        b.ok = 1;
        b.ramp_ns = 9;
        b.error("timeout");
        b.error("connect");
        let b = WorkerTally::from_tally(&b).and_then(WorkerTally::into_tally).unwrap_or_else(|e| panic!("{e}"));
        a.merge(&b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.ok, a.ramp_ns, a.error_count()), (2, 9, 3));
        assert_eq!(a.errors.get("timeout"), Some(&2));
        assert!(a.hist.max() >= 90_000);
    }

    #[test]
    fn latency_summary_is_in_microseconds() {
        let mut h = new_hist();
        for _ in 0..100 {
            record(&mut h, 50_000);
        }
        let l = Latency::of(&h).unwrap_or_default();
        assert!((l.p50_us - 50.0).abs() < 0.1 && (l.max_us - 50.0).abs() < 0.1);
        assert!(Latency::of(&new_hist()).is_none());
    }
}
