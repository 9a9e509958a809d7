//! Human output: readable at a glance, sizes in binary units ("1.5 GiB"), "unlimited" for no cap.
//! Scripts should use `--json`; this text may change.

use crate::snapshot::{Device, Process, Scan, Status, Usage};

/// Bytes in the largest binary unit that keeps the number ≥ 1, with at most two decimals.
/// Binary units because caps are written that way (`4g` = 4 GiB) and must read back the same.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut value, mut unit) = (bytes as f64, 0);
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {}", UNITS[unit])
}

/// Nanoseconds as a human duration: "0.25 s", "12.5 s", "3 min 20 s", "2 h 5 min".
pub fn duration(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    if secs < 60 {
        let text = format!("{:.2}", ns as f64 / 1e9);
        return format!("{} s", text.trim_end_matches('0').trim_end_matches('.'));
    }
    if secs < 3600 {
        return format!("{} min {} s", secs / 60, secs % 60);
    }
    format!("{} h {} min", secs / 3600, secs % 3600 / 60)
}

pub fn cap(limit: Option<u64>) -> String {
    limit.map_or("unlimited".into(), size)
}

pub fn percent(sm: Option<u64>) -> String {
    sm.map_or("unlimited".into(), |p| format!("{p}%"))
}

/// Left-aligned columns, two spaces apart, no trailing blanks.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn strings<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

pub fn status(s: &Status) -> String {
    let mut out = format!(
        "region {} (HAMi v{}.{}, libvgpu extension v{})\n",
        s.path, s.version.major, s.version.minor, s.version.extension
    );
    out += &format!("processes: {} alive, {} dead (proc_num {})\n", s.alive_processes, s.dead_slots, s.proc_num);
    out.push('\n');
    out += &devices(&s.devices);
    out += &device_notes(&s.devices);
    out.push('\n');
    out += &processes(&s.processes);
    out
}

/// The device table, or a line saying there is none yet.
fn devices(devices: &[Device]) -> String {
    if devices.is_empty() {
        return "no devices recorded yet (no process has initialised CUDA)\n".into();
    }
    let mut rows =
        vec![strings(["DEV", "UUID", "MEMORY CAP", "USED", "CONTEXTS", "DRIVER", "SM LIMIT", "CAP DENIALS"])];
    for d in devices {
        rows.push(vec![
            d.index.to_string(),
            if d.uuid.is_empty() { "-".into() } else { d.uuid.clone() },
            cap(d.memory_limit),
            size(d.used),
            size(d.context),
            size(d.driver_overhead),
            percent(d.sm_limit),
            d.cap_denials.to_string(),
        ]);
    }
    table(&rows)
}

/// Lines under the device table, each only where it says something: limiter time, spilling,
/// memory held by dead processes, a charge above the cap.
fn device_notes(devices: &[Device]) -> String {
    let mut out = String::new();
    // Only where the limiter ran: an unlimited device measures nothing, and a line of zeros would
    // read as "idle".
    for d in devices.iter().filter(|d| d.gpu_time_ns > 0 || d.throttled_ns > 0) {
        out += &format!(
            "device {}: {} of GPU time under the SM limit, {} throttled\n",
            d.index,
            duration(d.gpu_time_ns),
            duration(d.throttled_ns)
        );
    }
    // Only where oversubscription (CUDA_OVERSUBSCRIBE) was used: spilled bytes are host memory,
    // not part of USED.
    for d in devices.iter().filter(|d| d.spilled > 0 || d.spill_limit.is_some() || d.spill_denials > 0) {
        out += &format!(
            "device {}: {} spilled to host memory past the cap (spill limit {}, {} refused at it)\n",
            d.index,
            size(d.spilled),
            d.spill_limit.map_or("-".into(), size),
            d.spill_denials
        );
    }
    for d in devices.iter().filter(|d| d.dead_used > 0) {
        out += &format!(
            "note: device {}: {} held by dead processes still counts against the cap (run `vgpu reap`)\n",
            d.index,
            size(d.dead_used)
        );
    }
    for d in devices {
        let charged = d.used.saturating_add(d.dead_used);
        if let Some(cap) = d.memory_limit.filter(|&cap| charged > cap) {
            out += &format!(
                "note: device {}: {} charged is above the cap {}; new allocations fail until it drops\n",
                d.index,
                size(charged),
                size(cap)
            );
        }
    }
    out
}

/// The process table, or "no processes".
fn processes(processes: &[Process]) -> String {
    if processes.is_empty() {
        return "no processes\n".into();
    }
    let mut rows = vec![strings(["SLOT", "PID", "HOSTPID", "STATE", "USAGE"])];
    for p in processes {
        let usage: Vec<String> = p.usage.iter().map(usage).collect();
        rows.push(vec![
            p.slot.to_string(),
            p.pid.to_string(),
            p.hostpid.map_or("-".into(), |h| h.to_string()),
            p.state.to_string(),
            if usage.is_empty() { "-".into() } else { usage.join(", ") },
        ]);
    }
    table(&rows)
}

/// One device's usage by one process: "dev 0: 1.5 GiB (contexts 300 MiB, driver 2 MiB)".
fn usage(u: &Usage) -> String {
    let mut parts = Vec::new();
    if u.context > 0 {
        parts.push(format!("contexts {}", size(u.context)));
    }
    if u.driver_overhead > 0 {
        parts.push(format!("driver {}", size(u.driver_overhead)));
    }
    if u.spilled > 0 {
        parts.push(format!("spilled to host {}", size(u.spilled)));
    }
    let apart = if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) };
    format!("dev {}: {}{apart}", u.device, size(u.total))
}

pub fn scan(s: &Scan) -> String {
    let mut out = format!("scanned {}: {} region(s), {} skipped\n", s.dir, s.regions.len(), s.skipped.len());
    for r in &s.regions {
        out += "\n";
        out += &status(r);
    }
    if !s.skipped.is_empty() {
        // One line: what was passed over, by kind (`--json` lists each file with its reason).
        let mut kinds: Vec<(&str, usize)> = Vec::new();
        for k in &s.skipped {
            match kinds.iter_mut().find(|(kind, _)| *kind == k.kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((k.kind, 1)),
            }
        }
        let parts: Vec<String> = kinds.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
        out += &format!("\nskipped {}: {} (--json lists each file and why)\n", s.skipped.len(), parts.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_back_as_written() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(size(4 << 30), "4 GiB");
        assert_eq!(size(300 << 20), "300 MiB");
        assert_eq!(size(u64::MAX), "16777216 TiB");
        assert_eq!(cap(None), "unlimited");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(250_000_000), "0.25 s");
        assert_eq!(duration(12_500_000_000), "12.5 s");
        assert_eq!(duration(59_999_000_000), "60 s");
        assert_eq!(duration(200_000_000_000), "3 min 20 s");
        assert_eq!(duration(7_500_000_000_000), "2 h 5 min");
    }

    #[test]
    fn tables_align() {
        let t = table(&[strings(["A", "LONG"]), strings(["wide", "x"])]);
        assert_eq!(t, "A     LONG\nwide  x\n");
    }
}
