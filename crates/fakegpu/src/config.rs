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
}

impl Config {
    pub fn from_env() -> Config {
        let get = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Config::from_values(
            get("FAKEGPU_DEVICES").as_deref(),
            get("FAKEGPU_MEMORY").as_deref(),
            get("FAKEGPU_CONTEXT_OVERHEAD").as_deref(),
            get("FAKEGPU_UUIDS").as_deref(),
            get("FAKEGPU_LOG").map(PathBuf::from),
        )
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
        let memory = (0..devices)
            .map(|i| per_device.get(i).copied().unwrap_or(last))
            .collect();
        let context_overhead = match overhead {
            None => 300 * MIB,
            Some(v) => parse_size(v).unwrap_or_else(|| {
                warn("FAKEGPU_CONTEXT_OVERHEAD", v);
                300 * MIB
            }),
        };
        let given: Vec<String> = uuids
            .map(|u| {
                u.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
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
            .collect();
        Config {
            devices,
            memory,
            context_overhead,
            uuids,
            log,
        }
    }
}

fn warn(var: &str, value: &str) {
    eprintln!("fakegpu: ignoring bad {var}={value:?}, using the default");
}

/// `123`, `4k`, `512m`, `80g`, `1t` (binary units, optional trailing `b`/`ib`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s
        .strip_suffix("ib")
        .or_else(|| s.strip_suffix('b'))
        .unwrap_or(&s);
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

pub fn default_uuid(index: usize) -> String {
    format!("GPU-fa4e0000-0000-4000-8000-{index:012x}")
}

/// The 16 bytes a UUID string spells: its 32 hex digits, after any `GPU-`/`MIG-` prefix.
pub fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let body = s
        .strip_prefix("GPU-")
        .or_else(|| s.strip_prefix("MIG-"))
        .unwrap_or(s);
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
        let c = Config::from_values(Some("3"), Some("8g,4g"), None, None, None);
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
        );
        assert_eq!(d.devices, 2);
        assert_eq!(d.uuids[0], default_uuid(0));
        assert_eq!(d.uuids[1], "GPU-11111111-2222-3333-4444-555555555555");
        assert_eq!(d.context_overhead, 0);
    }
}
