//! Environment configuration, read once when the state is first touched.

use std::path::PathBuf;

pub const MAX_DEVICES: usize = 16;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[derive(Clone, Debug)]
pub struct Config {
    pub devices: usize,
    /// Bytes per device, one entry per device.
    pub memory: Vec<u64>,
    pub context_overhead: u64,
    /// UUID strings (`GPU-…`), one per device.
    pub uuids: Vec<String>,
    pub log: Option<PathBuf>,
    /// The physical devices CUDA sees, in CUDA ordinal order (`CUDA_VISIBLE_DEVICES`). NVML
    /// ignores it and lists every device, as the real one does.
    pub visible: Vec<usize>,
    /// `FAKEGPU_KERNEL_US`: GPU time of a kernel whose name does not say (see `kernel`).
    pub kernel_us: u64,
    /// `FAKEGPU_TIMELINE`: the file holding the device clocks shared between processes;
    /// `None`: this process has the devices to itself.
    pub timeline: Option<String>,
    /// `FAKEGPU_QUEUE_DEPTH`: launches a stream may have pending before the next one blocks,
    /// as a real driver's command queue fills (default 1024).
    pub queue_depth: usize,
    /// `FAKEGPU_LAUNCH_LATENCY_US`: time from a submission (a launch, an event record) to the
    /// earliest moment the device starts it, as a real GPU's command processor takes.
    pub launch_latency_ns: u64,
}

pub const DEFAULT_KERNEL_US: u64 = 10;
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;
/// Submission-to-start latency on an idle H200 is a few microseconds.
pub const DEFAULT_LAUNCH_LATENCY_US: u64 = 4;

impl Config {
    pub fn from_env() -> Config {
        let get = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut cfg = Config::from_values(
            get("FAKEGPU_DEVICES").as_deref(),
            get("FAKEGPU_MEMORY").as_deref(),
            get("FAKEGPU_CONTEXT_OVERHEAD").as_deref(),
            get("FAKEGPU_UUIDS").as_deref(),
            get("FAKEGPU_LOG").map(PathBuf::from),
            // Not through `get`: set but empty means "no devices", not "unset".
            std::env::var_os("CUDA_VISIBLE_DEVICES").map(|v| v.to_string_lossy().into_owned()).as_deref(),
        );
        cfg.set_timeline(
            get("FAKEGPU_KERNEL_US").as_deref(),
            get("FAKEGPU_TIMELINE"),
            get("FAKEGPU_QUEUE_DEPTH").as_deref(),
        );
        if let Some(text) = get("FAKEGPU_LAUNCH_LATENCY_US") {
            match text.trim().parse::<u64>() {
                Ok(us) => cfg.launch_latency_ns = us * 1000,
                Err(_) => warn("FAKEGPU_LAUNCH_LATENCY_US", &text),
            }
        }
        cfg
    }

    /// The simulated-execution settings (kept out of `from_values`, whose callers predate
    /// them). A bad number keeps the current value, with a note on stderr.
    pub fn set_timeline(&mut self, kernel_us: Option<&str>, path: Option<String>, depth: Option<&str>) {
        if let Some(text) = kernel_us {
            match text.trim().parse() {
                Ok(v) => self.kernel_us = v,
                Err(_) => warn("FAKEGPU_KERNEL_US", text),
            }
        }
        if let Some(text) = depth {
            match text.trim().parse() {
                Ok(v) if v > 0 => self.queue_depth = v,
                _ => warn("FAKEGPU_QUEUE_DEPTH", text),
            }
        }
        self.timeline = path;
    }

    /// Bad values fall back to the defaults with a note on stderr rather than failing: a
    /// library has no good way to refuse to load, and a test that mistypes a value should
    /// see why its numbers look like the defaults.
    pub fn from_values(
        devices: Option<&str>,
        memory: Option<&str>,
        overhead: Option<&str>,
        uuids: Option<&str>,
        log: Option<PathBuf>,
        visible: Option<&str>,
    ) -> Config {
        let devices = match devices {
            None => 2,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if n <= MAX_DEVICES => n,
                Ok(_) => {
                    eprintln!("fakegpu: FAKEGPU_DEVICES={text:?} above {MAX_DEVICES}, clamped");
                    MAX_DEVICES
                }
                Err(_) => {
                    warn("FAKEGPU_DEVICES", text);
                    2
                }
            },
        };
        let mut per_device: Vec<u64> = Vec::new();
        if let Some(list) = memory {
            for item in list.split(',') {
                match parse_size(item) {
                    Some(v) => per_device.push(v),
                    None => {
                        warn("FAKEGPU_MEMORY", list);
                        per_device.clear();
                        break;
                    }
                }
            }
        }
        // A shorter list repeats its last value, so "80g" alone applies to every device.
        let last = per_device.last().copied().unwrap_or(16 * GIB);
        let memory = (0..devices).map(|i| per_device.get(i).copied().unwrap_or(last)).collect();
        let context_overhead = match overhead {
            None => 300 * MIB,
            Some(v) => parse_size(v).unwrap_or_else(|| {
                warn("FAKEGPU_CONTEXT_OVERHEAD", v);
                300 * MIB
            }),
        };
        let given: Vec<String> = uuids
            .map(|u| u.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let uuids = (0..devices)
            .map(|i| match given.get(i) {
                Some(u) if uuid_bytes(u).is_some() => u.clone(),
                Some(u) => {
                    warn("FAKEGPU_UUIDS", u);
                    default_uuid(i)
                }
                None => default_uuid(i),
            })
            .collect::<Vec<_>>();
        Config {
            devices,
            memory,
            context_overhead,
            visible: parse_visible(visible, &uuids),
            uuids,
            log,
            kernel_us: DEFAULT_KERNEL_US,
            timeline: None,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            launch_latency_ns: DEFAULT_LAUNCH_LATENCY_US * 1000,
        }
    }
}

fn warn(var: &str, value: &str) {
    eprintln!("fakegpu: ignoring bad {var}={value:?}, using the default");
}

/// `123`, `4k`, `512m`, `80g`, `1t` (binary units, optional trailing `b`/`ib`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix("ib").or_else(|| s.strip_suffix('b')).unwrap_or(&s);
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' => (&s[..s.len() - 1], 10),
        b'm' => (&s[..s.len() - 1], 20),
        b'g' => (&s[..s.len() - 1], 30),
        b't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// The physical devices a `CUDA_VISIBLE_DEVICES` value selects, in the order CUDA numbers
/// them; `uuids` holds every physical device's UUID string. Unset means all devices in
/// physical order. Otherwise each comma-separated entry is a physical index or `GPU-` and a
/// unique, case-insensitive prefix of a UUID, and like the driver the list silently ends at
/// the first entry that names no device (out of range, unknown or ambiguous UUID, a `MIG-`
/// entry, which the fake has no instances for, garbage, a repeat): `-1` or an empty value
/// hiding every device are idioms, not mistakes, so unlike `FAKEGPU_*` nothing is printed.
/// Blanks around an entry are ignored.
pub fn parse_visible(text: Option<&str>, uuids: &[String]) -> Vec<usize> {
    let Some(text) = text else {
        return (0..uuids.len()).collect();
    };
    let mut out = Vec::new();
    for entry in text.split(',') {
        match visible_entry(entry.trim(), uuids) {
            Some(dev) if !out.contains(&dev) => out.push(dev),
            _ => break,
        }
    }
    out
}

fn visible_entry(entry: &str, uuids: &[String]) -> Option<usize> {
    // Digits only: `+1` or `1a` are garbage to the driver, not device 1.
    if !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()) {
        return entry.parse().ok().filter(|&i: &usize| i < uuids.len());
    }
    let entry = entry.to_ascii_lowercase();
    let want = entry.strip_prefix("gpu-").filter(|w| !w.is_empty())?;
    let mut hits = uuids.iter().enumerate().filter(|(_, u)| {
        let u = u.to_ascii_lowercase();
        u.strip_prefix("gpu-").unwrap_or(&u).starts_with(want)
    });
    let (first, _) = hits.next()?;
    hits.next().is_none().then_some(first)
}

pub fn default_uuid(index: usize) -> String {
    format!("GPU-fa4e0000-0000-4000-8000-{index:012x}")
}

/// The 16 bytes a UUID string spells: its 32 hex digits, after any `GPU-`/`MIG-` prefix.
pub fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let body = s.strip_prefix("GPU-").or_else(|| s.strip_prefix("MIG-")).unwrap_or(s);
    let hex: Vec<u8> = body.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("80g"), Some(80 * GIB));
        assert_eq!(parse_size("512M"), Some(512 * MIB));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2GiB"), Some(2 * GIB));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn defaults_and_lists() {
        let c = Config::from_values(Some("3"), Some("8g,4g"), None, None, None, None);
        assert_eq!(c.memory, vec![8 * GIB, 4 * GIB, 4 * GIB]);
        assert_eq!(c.context_overhead, 300 * MIB);
        assert_eq!(c.uuids[2], "GPU-fa4e0000-0000-4000-8000-000000000002");
        let b = uuid_bytes(&c.uuids[1]).unwrap();
        assert_eq!(b[0], 0xfa);
        assert_eq!(b[15], 1);
        let d = Config::from_values(
            None,
            None,
            Some("0"),
            Some("GPU-x,GPU-11111111-2222-3333-4444-555555555555"),
            None,
            Some("1"),
        );
        assert_eq!(d.devices, 2);
        assert_eq!(d.uuids[0], default_uuid(0));
        assert_eq!(d.uuids[1], "GPU-11111111-2222-3333-4444-555555555555");
        assert_eq!(d.context_overhead, 0);
        assert_eq!(d.visible, vec![1]);
        assert_eq!(c.visible, vec![0, 1, 2], "unset: every device");
    }

    fn uuids() -> Vec<String> {
        vec![
            "GPU-aaaa1111-0000-4000-8000-000000000000".into(),
            "GPU-AAAA2222-0000-4000-8000-000000000000".into(),
            "GPU-bbbb0000-0000-4000-8000-000000000000".into(),
        ]
    }

    fn visible(text: &str) -> Vec<usize> {
        parse_visible(Some(text), &uuids())
    }

    #[test]
    fn visible_indices() {
        assert_eq!(parse_visible(None, &uuids()), vec![0, 1, 2]);
        assert_eq!(visible("0,1,2"), vec![0, 1, 2]);
        assert_eq!(visible("1,0"), vec![1, 0]);
        assert_eq!(visible(" 2 , 0"), vec![2, 0]);
        assert_eq!(visible("2"), vec![2]);
    }

    #[test]
    fn visible_uuids() {
        assert_eq!(visible("GPU-bbbb0000-0000-4000-8000-000000000000,0"), vec![2, 0]);
        assert_eq!(visible("GPU-aaaa2,gpu-B"), vec![1, 2], "prefixes, any case");
        assert_eq!(visible("GPU-aaaa"), Vec::<usize>::new(), "ambiguous");
        assert_eq!(visible("1,GPU-aaaa,0"), vec![1], "ambiguous ends the list");
        assert_eq!(visible("GPU-c"), Vec::<usize>::new(), "unknown");
        assert_eq!(visible("GPU-,0"), Vec::<usize>::new(), "an empty prefix names nothing");
        assert_eq!(visible("aaaa1111"), Vec::<usize>::new(), "no GPU- prefix");
    }

    #[test]
    fn visible_stops_at_the_first_bad_entry() {
        assert_eq!(visible("1,3,0"), vec![1], "out of range");
        assert_eq!(visible("0,x,1"), vec![0]);
        assert_eq!(visible("0,-1"), vec![0]);
        assert_eq!(visible("-1"), Vec::<usize>::new());
        assert_eq!(visible("2,1a"), vec![2]);
        assert_eq!(visible("0,1,"), vec![0, 1], "trailing comma");
        assert_eq!(visible("0,MIG-aaaa1111,1"), vec![0], "no MIG instances");
        assert_eq!(visible("1,0,1,2"), vec![1, 0], "duplicate index");
        assert_eq!(visible("2,GPU-bbbb,0"), vec![2], "duplicate via UUID");
    }

    #[test]
    fn timeline_settings() {
        let mut c = Config::from_values(None, None, None, None, None, None);
        assert_eq!((c.kernel_us, c.queue_depth, c.timeline.clone()), (10, 1024, None));
        c.set_timeline(Some("250"), Some("/dev/shm/t".into()), Some("8"));
        assert_eq!((c.kernel_us, c.queue_depth), (250, 8));
        assert_eq!(c.timeline.as_deref(), Some("/dev/shm/t"));
        c.set_timeline(Some("x"), None, Some("0"));
        assert_eq!((c.kernel_us, c.queue_depth, c.timeline), (250, 8, None), "bad values keep the old");
    }

    #[test]
    fn visible_empty_means_none() {
        assert_eq!(visible(""), Vec::<usize>::new());
        assert_eq!(visible("  "), Vec::<usize>::new());
        assert_eq!(parse_visible(Some("0"), &[]), Vec::<usize>::new());
    }
}
