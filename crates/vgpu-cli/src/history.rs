//! The exporter's short memory (`/api/history`): a background thread reads the regions every
//! sample interval and keeps, per region and device, the last ten minutes of memory use and of
//! the share of GPU time the container achieved. The regions only hold counters since creation,
//! so a rate needs two readings; that is why the exporter, unlike the rest of `vgpu`, has state.
//!
//! Memory is bounded: a fixed number of points per series (the window over the interval), a
//! fixed number of series, and a series whose region is gone is dropped once it has aged out.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::metrics::Located;

/// How far back the history reaches.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Series kept at most (region × device); a node has far fewer, this only bounds a pathological
/// scan directory.
pub const MAX_SERIES: usize = 512;
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// The share of wall time `wall_ns` that a counter of nanoseconds advanced by, in percent.
/// `None` when there is no interval or the counter went backwards (the region was recreated).
pub fn percent_of(before_ns: u64, after_ns: u64, wall_ns: u64) -> Option<f64> {
    if wall_ns == 0 || after_ns < before_ns {
        return None;
    }
    Some(round3((after_ns - before_ns) as f64 * 100.0 / wall_ns as f64))
}

/// Three decimals are more than a chart shows and keep the JSON short.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A reading of one device's counters, with the monotonic time it was taken at.
#[derive(Clone, Copy)]
struct Reading {
    at_ns: u64,
    gpu_time_ns: u64,
    throttled_ns: u64,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Point {
    /// Unix time of the reading, seconds.
    pub t: f64,
    pub used: u64,
    pub context: u64,
    pub dead_used: u64,
    /// The limit in force at the reading (percent; `None` = unlimited), so the chart can show a
    /// limit changed live.
    pub sm_limit: Option<u64>,
    /// GPU time charged over the interval since the previous reading / wall time, percent.
    /// `None` for a series' first reading.
    pub achieved_pct: Option<f64>,
    /// Time spent throttled over the interval / wall time, percent, summed over the waiting
    /// threads (so above 100 when several threads wait at once).
    pub throttled_pct: Option<f64>,
}

#[derive(Serialize)]
pub struct Series {
    pub path: String,
    pub container: String,
    pub pod_uid: String,
    pub device: usize,
    pub uuid: String,
    pub points: VecDeque<Point>,
    #[serde(skip)]
    last: Reading,
}

#[derive(Serialize)]
pub struct History {
    pub schema_version: u32,
    pub interval_s: f64,
    pub window_s: u64,
    /// The last reading had devices left out because `MAX_SERIES` was reached.
    pub truncated: bool,
    #[serde(serialize_with = "values")]
    series: BTreeMap<(String, usize), Series>,
    #[serde(skip)]
    capacity: usize,
}

fn values<S: serde::Serializer>(m: &BTreeMap<(String, usize), Series>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.values())
}

impl History {
    pub fn new(interval: Duration) -> History {
        let capacity = WINDOW.as_nanos().div_ceil(interval.as_nanos().max(1)) as usize + 1;
        History {
            schema_version: crate::snapshot::SCHEMA_VERSION,
            interval_s: interval.as_secs_f64(),
            window_s: WINDOW.as_secs(),
            truncated: false,
            series: BTreeMap::new(),
            capacity,
        }
    }

    /// Adds one reading of every device of `regions`, taken at `unix_ms` (wall clock, for the
    /// chart) and `at_ns` (monotonic, for the rates: the wall clock may jump).
    pub fn record(&mut self, regions: &[Located], unix_ms: u64, at_ns: u64) {
        self.truncated = false;
        for r in regions {
            for d in &r.status.devices {
                let key = (r.status.path.clone(), d.index);
                let now = Reading { at_ns, gpu_time_ns: d.gpu_time_ns, throttled_ns: d.throttled_ns };
                if !self.series.contains_key(&key) && self.series.len() >= MAX_SERIES {
                    self.truncated = true;
                    continue;
                }
                let series = self.series.entry(key).or_insert_with(|| Series {
                    path: r.status.path.clone(),
                    container: r.container.clone(),
                    pod_uid: r.pod_uid.clone(),
                    device: d.index,
                    uuid: d.uuid.clone(),
                    points: VecDeque::new(),
                    last: Reading { at_ns: 0, ..now },
                });
                let wall = if series.points.is_empty() { 0 } else { at_ns.saturating_sub(series.last.at_ns) };
                series.uuid.clone_from(&d.uuid);
                series.points.push_back(Point {
                    t: unix_ms as f64 / 1000.0,
                    used: d.used,
                    context: d.context,
                    dead_used: d.dead_used,
                    sm_limit: d.sm_limit,
                    achieved_pct: percent_of(series.last.gpu_time_ns, now.gpu_time_ns, wall),
                    throttled_pct: percent_of(series.last.throttled_ns, now.throttled_ns, wall),
                });
                while series.points.len() > self.capacity {
                    series.points.pop_front();
                }
                series.last = now;
            }
        }
        let window = WINDOW.as_nanos() as u64;
        self.series.retain(|_, s| at_ns.saturating_sub(s.last.at_ns) <= window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Device, Status, Version};

    const S: u64 = 1_000_000_000;

    fn status(path: &str, devices: &[(u64, u64, u64)]) -> Status {
        Status {
            schema_version: 1,
            path: path.into(),
            version: Version { major: 1, minor: 2, extension: 1 },
            device_num: devices.len() as u64,
            proc_num: 1,
            alive_processes: 1,
            dead_slots: 0,
            priority: 1,
            utilization_switch: 1,
            last_kernel_time: 0,
            devices: devices
                .iter()
                .enumerate()
                .map(|(index, &(used, gpu_time_ns, throttled_ns))| Device {
                    index,
                    uuid: format!("GPU-{index}"),
                    memory_limit: Some(2 << 30),
                    sm_limit: Some(30),
                    used,
                    context: 300 << 20,
                    driver_overhead: 0,
                    dead_used: 0,
                    cap_denials: 0,
                    driver_denials: 0,
                    spilled: 0,
                    spill_limit: None,
                    spill_denials: 0,
                    gpu_time_ns,
                    throttled_ns,
                })
                .collect(),
            processes: Vec::new(),
        }
    }

    fn record(h: &mut History, statuses: &[Status], at_s: f64) {
        let located: Vec<Located> = statuses.iter().map(|s| Located::new(s, None)).collect();
        h.record(&located, (1_700_000_000.0 + at_s) as u64 * 1000, (at_s * S as f64) as u64);
    }

    #[test]
    fn share_is_the_counter_delta_over_the_wall_delta() {
        assert_eq!(percent_of(0, 600_000_000, 2 * S), Some(30.0));
        assert_eq!(percent_of(5 * S, 5 * S, 2 * S), Some(0.0));
        assert_eq!(percent_of(S, S + 582_000_000, 2 * S), Some(29.1));
        assert_eq!(percent_of(0, 1, 3), Some(33.333));
        assert_eq!(percent_of(0, S, 0), None, "no interval, no rate");
        assert_eq!(percent_of(5 * S, S, 2 * S), None, "a recreated region starts its counters again");
        // Two waiting threads are throttled twice the wall time.
        assert_eq!(percent_of(0, 4 * S, 2 * S), Some(200.0));
    }

    #[test]
    fn points_carry_rates_since_the_previous_reading() {
        let mut h = History::new(Duration::from_secs(2));
        record(&mut h, &[status("/r/a.cache", &[(GIB, 10 * S, 0)])], 0.0);
        record(&mut h, &[status("/r/a.cache", &[(GIB, 10 * S + 600_000_000, S)])], 2.0);
        record(&mut h, &[status("/r/a.cache", &[(2 * GIB, 10 * S + 1_200_000_000, S)])], 4.0);
        let s: Vec<&Series> = h.series.values().collect();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].container.as_str(), s[0].device, s[0].uuid.as_str()), ("a.cache", 0, "GPU-0"));
        let p = &s[0].points;
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].t, p[0].achieved_pct, p[0].throttled_pct), (1_700_000_000.0, None, None));
        assert_eq!((p[1].achieved_pct, p[1].throttled_pct), (Some(30.0), Some(50.0)));
        assert_eq!((p[2].achieved_pct, p[2].throttled_pct, p[2].used), (Some(30.0), Some(0.0), 2 * GIB));
        assert_eq!((p[2].t, p[2].context, p[2].sm_limit), (1_700_000_004.0, 300 << 20, Some(30)));
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_ring_keeps_the_window_and_drops_regions_that_aged_out() {
        let mut h = History::new(Duration::from_secs(2));
        assert_eq!(h.capacity, 301);
        for i in 0..400 {
            let mut regions = vec![status("/r/a.cache", &[(0, i * S, 0)])];
            if i < 10 {
                regions.push(status("/r/gone.cache", &[(0, 0, 0)]));
            }
            record(&mut h, &regions, i as f64 * 2.0);
        }
        let s: Vec<&Series> = h.series.values().collect();
        assert_eq!(s.len(), 1, "gone.cache was last seen more than ten minutes ago");
        assert_eq!(s[0].points.len(), 301);
        assert_eq!(s[0].points[0].t, 1_700_000_000.0 + 99.0 * 2.0);
        assert_eq!(s[0].points[300].achieved_pct, Some(50.0));
    }

    #[test]
    fn series_are_capped() {
        let mut h = History::new(Duration::from_secs(2));
        let many: Vec<Status> =
            (0..MAX_SERIES / 2 + 1).map(|i| status(&format!("/r/{i:04}.cache"), &[(0, 0, 0), (0, 0, 0)])).collect();
        record(&mut h, &many, 0.0);
        assert_eq!(h.series.len(), MAX_SERIES);
        assert!(h.truncated);
        let json: serde_json::Value = serde_json::to_value(&h).unwrap();
        assert_eq!(json["series"].as_array().unwrap().len(), MAX_SERIES);
        assert_eq!((json["interval_s"].as_f64(), json["window_s"].as_u64()), (Some(2.0), Some(600)));
    }
}
