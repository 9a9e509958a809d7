//! Which physical GPU each CUDA ordinal is, so a cap written for ordinal `i` lands on the right
//! device in every API. HAMi-core parses `CUDA_VISIBLE_DEVICES` with `atoi`, so every UUID entry
//! becomes device 0; here entries are matched by index or by UUID (prefix, as CUDA allows) against
//! the devices NVML enumerates. When CUDA itself is initialised the hooks ask it directly instead.

/// One entry of `CUDA_VISIBLE_DEVICES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VisibleEntry {
    Index(usize),
    Uuid(String),
    /// MIG instances and anything else we cannot map to a whole GPU.
    Unsupported(String),
}

/// Parses the list the way CUDA does: entries up to the first invalid one; an empty list hides
/// every device.
pub fn parse_visible_devices(value: &str) -> Vec<VisibleEntry> {
    let mut out = Vec::new();
    for raw in value.split(',') {
        let entry = raw.trim();
        if let Ok(i) = entry.parse::<usize>() {
            out.push(VisibleEntry::Index(i));
        } else if entry.len() > 4 && entry.as_bytes()[..4].eq_ignore_ascii_case(b"GPU-") {
            out.push(VisibleEntry::Uuid(entry.to_ascii_lowercase()));
        } else if entry.starts_with("MIG-") {
            out.push(VisibleEntry::Unsupported(entry.to_string()));
        } else {
            break;
        }
    }
    out
}

/// The first entry of the list that names nothing (CUDA ignores it and every entry after it);
/// `None` when every entry is an index, a `GPU-` UUID or a `MIG-` name. An empty list is valid.
pub fn first_invalid_entry(value: &str) -> Option<&str> {
    if value.trim().is_empty() {
        return None;
    }
    let valid = parse_visible_devices(value).len();
    value.split(',').nth(valid).map(str::trim)
}

/// For each CUDA ordinal, the UUID of the physical device (`None` for a MIG instance, which
/// has no whole-GPU cap). `physical` lists the UUIDs NVML enumerates, by NVML index. Like CUDA,
/// the list ends at the first entry that names no device: an index out of range, an unknown or
/// ambiguous UUID, or a device already listed.
pub fn ordinal_uuids(visible: Option<&str>, physical: &[String]) -> Vec<Option<String>> {
    let Some(value) = visible else {
        return physical.iter().cloned().map(Some).collect();
    };
    let mut out: Vec<Option<String>> = Vec::new();
    for entry in parse_visible_devices(value) {
        let uuid = match entry {
            VisibleEntry::Index(i) => physical.get(i).cloned(),
            VisibleEntry::Uuid(prefix) => {
                let mut matches = physical.iter().filter(|u| u.to_ascii_lowercase().starts_with(&prefix));
                match (matches.next(), matches.next()) {
                    (Some(u), None) => Some(u.clone()),
                    _ => None,
                }
            }
            VisibleEntry::Unsupported(_) => {
                out.push(None);
                continue;
            }
        };
        match uuid {
            Some(u) if !out.contains(&Some(u.clone())) => out.push(Some(u)),
            _ => break,
        }
    }
    out
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, the form NVML and `nvidia-smi -L` print.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    // ASCII only: one byte per char, one allocation of exactly 40 bytes.
    format_uuid_bytes(bytes).iter().map(|&c| c as char).collect()
}

/// Length of `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub const UUID_STRING_LEN: usize = 40;

/// [`format_uuid`] into a stack buffer (ASCII), without allocating.
pub fn format_uuid_bytes(bytes: &[u8; 16]) -> [u8; UUID_STRING_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; UUID_STRING_LEN];
    out[..4].copy_from_slice(b"GPU-");
    let mut o = 4;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            o += 1; // the dash already there
        }
        out[o] = HEX[(b >> 4) as usize];
        out[o + 1] = HEX[(b & 0xf) as usize];
        o += 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phys() -> Vec<String> {
        vec![
            "GPU-aaaa1111-0000-4000-8000-000000000000".into(),
            "GPU-bbbb2222-0000-4000-8000-000000000001".into(),
            "GPU-cccc3333-0000-4000-8000-000000000002".into(),
        ]
    }

    #[test]
    fn unset_is_identity() {
        let m = ordinal_uuids(None, &phys());
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].as_deref(), Some(phys()[2].as_str()));
    }

    #[test]
    fn reordered_integers() {
        let m = ordinal_uuids(Some("2,0"), &phys());
        assert_eq!(m, vec![Some(phys()[2].clone()), Some(phys()[0].clone())]);
    }

    #[test]
    fn uuid_forms_full_prefix_and_mixed_case() {
        let m = ordinal_uuids(Some("GPU-bbbb2222-0000-4000-8000-000000000001,gpu-CCCC,0"), &phys());
        assert_eq!(m, vec![Some(phys()[1].clone()), Some(phys()[2].clone()), Some(phys()[0].clone())]);
    }

    #[test]
    fn the_list_ends_at_an_entry_that_names_no_device() {
        // "GPU-" alone is not a valid entry: the list stops there, like CUDA.
        assert!(ordinal_uuids(Some("GPU-,0"), &phys()).is_empty());
        assert_eq!(ordinal_uuids(Some("1,7,0"), &phys()), vec![Some(phys()[1].clone())]);
        assert!(ordinal_uuids(Some("7,0"), &phys()).is_empty());
        assert_eq!(ordinal_uuids(Some("1,GPU-ffff,0"), &phys()), vec![Some(phys()[1].clone())]);
        let ambiguous = vec!["GPU-aa-1".to_string(), "GPU-aa-2".to_string()];
        assert!(ordinal_uuids(Some("GPU-aa"), &ambiguous).is_empty());
        assert_eq!(ordinal_uuids(Some("1,1,0"), &phys()), vec![Some(phys()[1].clone())], "a repeat ends it");
        // A MIG instance is a device CUDA sees, but not a whole GPU we can cap.
        assert_eq!(ordinal_uuids(Some("MIG-abc,0"), &phys()), vec![None, Some(phys()[0].clone())]);
    }

    #[test]
    fn list_stops_at_first_invalid_entry() {
        assert_eq!(parse_visible_devices("1,x,0"), vec![VisibleEntry::Index(1)]);
        assert_eq!(parse_visible_devices(""), vec![]);
    }

    #[test]
    fn non_ascii_entries_end_the_list_without_panicking() {
        for v in ["GPUé1", "GPé", "é", "0,GPUé1", "GPU-é", "ééééé,1"] {
            let _ = ordinal_uuids(Some(v), &phys());
        }
        assert_eq!(parse_visible_devices("GPUé1"), vec![]);
        assert_eq!(parse_visible_devices("0,GPUé1,1"), vec![VisibleEntry::Index(0)]);
        assert_eq!(parse_visible_devices("GPU-é"), vec![VisibleEntry::Uuid("gpu-é".into())]);
        assert_eq!(first_invalid_entry("GPUé1"), Some("GPUé1"));
        assert_eq!(first_invalid_entry("0, x ,1"), Some("x"));
        assert_eq!(first_invalid_entry("0,GPU-ab,MIG-x"), None);
        assert_eq!(first_invalid_entry(""), None);
    }

    #[test]
    fn uuid_format() {
        let b: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(format_uuid(&b), "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f");
        let b = [0xfa, 0x4e, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 0xff];
        assert_eq!(format_uuid(&b), "GPU-fa4e0000-0000-4000-8000-0000000000ff");
        assert_eq!(&format_uuid_bytes(&b)[..], format_uuid(&b).as_bytes());
    }
}
