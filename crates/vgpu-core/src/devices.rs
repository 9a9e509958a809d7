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
        } else if entry.len() > 4 && entry[..4].eq_ignore_ascii_case("GPU-") {
            out.push(VisibleEntry::Uuid(entry.to_ascii_lowercase()));
        } else if entry.starts_with("MIG-") {
            out.push(VisibleEntry::Unsupported(entry.to_string()));
        } else {
            break;
        }
    }
    out
}

/// For each CUDA ordinal, the UUID of the physical device (`None` when it cannot be mapped).
/// `physical` lists the UUIDs NVML enumerates, by NVML index.
pub fn ordinal_uuids(visible: Option<&str>, physical: &[String]) -> Vec<Option<String>> {
    let Some(value) = visible else {
        return physical.iter().cloned().map(Some).collect();
    };
    parse_visible_devices(value)
        .into_iter()
        .map(|entry| match entry {
            VisibleEntry::Index(i) => physical.get(i).cloned(),
            VisibleEntry::Uuid(prefix) => {
                let mut matches = physical
                    .iter()
                    .filter(|u| u.to_ascii_lowercase().starts_with(&prefix));
                match (matches.next(), matches.next()) {
                    (Some(u), None) => Some(u.clone()),
                    _ => None,
                }
            }
            VisibleEntry::Unsupported(_) => None,
        })
        .collect()
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, the form NVML and `nvidia-smi -L` print.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
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
        let m = ordinal_uuids(
            Some("GPU-bbbb2222-0000-4000-8000-000000000001,gpu-CCCC,1"),
            &phys(),
        );
        assert_eq!(
            m,
            vec![
                Some(phys()[1].clone()),
                Some(phys()[2].clone()),
                Some(phys()[1].clone())
            ]
        );
    }

    #[test]
    fn ambiguous_prefix_or_unknown_maps_to_none() {
        let m = ordinal_uuids(Some("GPU-,7,MIG-abc"), &phys());
        // "GPU-" alone is not a valid entry: the list stops there, like CUDA.
        assert!(m.is_empty());
        let m = ordinal_uuids(Some("7,MIG-abc,0"), &phys());
        assert_eq!(m, vec![None, None, Some(phys()[0].clone())]);
    }

    #[test]
    fn list_stops_at_first_invalid_entry() {
        assert_eq!(parse_visible_devices("1,x,0"), vec![VisibleEntry::Index(1)]);
        assert_eq!(parse_visible_devices(""), vec![]);
    }

    #[test]
    fn uuid_format() {
        let b: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(format_uuid(&b), "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f");
    }
}
