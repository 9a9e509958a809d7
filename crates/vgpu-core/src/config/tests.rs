use super::*;

const GIB: u64 = 1 << 30;

fn parse(vars: &[(&str, &str)]) -> (Config, Vec<ConfigError>) {
    Config::from_vars(vars.iter().copied())
}

#[test]
fn general_limit_applies_to_every_device_and_per_device_overrides() {
    let (c, e) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT", "4g"), ("CUDA_DEVICE_MEMORY_LIMIT_1", "1024m")]);
    assert!(e.is_empty());
    assert_eq!(c.memory_limit[0], Some(4 * GIB));
    assert_eq!(c.memory_limit[1], Some(GIB));
    assert_eq!(c.memory_limit[15], Some(4 * GIB));
}

#[test]
fn per_device_zero_uncaps_one_device() {
    let (c, _) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT", "4g"), ("CUDA_DEVICE_MEMORY_LIMIT_2", "0")]);
    assert_eq!(c.memory_limit[2], None);
    assert_eq!(c.memory_limit[1], Some(4 * GIB));
}

#[test]
fn bad_value_is_reported_with_variable_value_and_forms_and_not_applied() {
    let (c, e) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT_0", "2 gigs")]);
    assert_eq!(c.memory_limit[0], None);
    assert_eq!(e.len(), 1);
    let line = e[0].to_string();
    assert!(line.contains("CUDA_DEVICE_MEMORY_LIMIT_0"), "{line}");
    assert!(line.contains("\"2 gigs\""), "{line}");
    assert!(line.contains("4GiB"), "{line}");
    assert!(line.contains("NOT applied"), "{line}");
}

#[test]
fn bad_general_limit_leaves_valid_per_device_limit() {
    let (c, e) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT", "lots"), ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g")]);
    assert_eq!(e.len(), 1);
    assert_eq!(c.memory_limit[0], Some(GIB));
    assert_eq!(c.memory_limit[1], None);
}

#[test]
fn bad_index_suffix_is_reported() {
    for name in ["CUDA_DEVICE_MEMORY_LIMIT_16", "CUDA_DEVICE_MEMORY_LIMIT_x", "CUDA_DEVICE_SM_LIMIT_01"] {
        let (_, e) = parse(&[(name, "1g")]);
        assert_eq!(e.len(), 1, "{name}");
        assert!(e[0].to_string().contains("device index"));
    }
}

#[test]
fn sm_limits() {
    let (c, e) =
        parse(&[("CUDA_DEVICE_SM_LIMIT", "30"), ("CUDA_DEVICE_SM_LIMIT_1", "100"), ("CUDA_DEVICE_SM_LIMIT_2", "50%")]);
    assert!(e.is_empty());
    assert_eq!(c.sm_limit[0], Some(30));
    assert_eq!(c.sm_limit[1], None);
    assert_eq!(c.sm_limit[2], Some(50));
    let (c, e) = parse(&[("CUDA_DEVICE_SM_LIMIT", "130")]);
    assert_eq!(c.sm_limit[0], None);
    assert!(e[0].to_string().contains("0-100"));
}

#[test]
fn log_levels_and_paths() {
    let (c, e) = parse(&[("LIBCUDA_LOG_LEVEL", "4"), ("CUDA_DEVICE_MEMORY_SHARED_CACHE", "/x/y")]);
    assert!(e.is_empty());
    assert_eq!(c.log_level, LogLevel::Debug);
    assert_eq!(c.shared_cache, "/x/y");
    let (c, e) = parse(&[("LIBCUDA_LOG_LEVEL", "loud")]);
    assert_eq!(c.log_level, LogLevel::Warn);
    assert_eq!(e.len(), 1);
}

#[test]
fn burst_switch() {
    assert!(!parse(&[]).0.sm_burst);
    assert!(parse(&[("LIBVGPU_SM_BURST", "1")]).0.sm_burst);
    assert!(parse(&[("LIBVGPU_SM_BURST", " On ")]).0.sm_burst);
    assert!(!parse(&[("LIBVGPU_SM_BURST", "off")]).0.sm_burst);
    let (c, errors) = parse(&[("LIBVGPU_SM_BURST", "maybe")]);
    assert!(!c.sm_burst);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("LIBVGPU_SM_BURST=\"maybe\""), "{}", errors[0]);
}

#[test]
fn oversubscribe_switch_and_spill_limit() {
    let (c, e) = parse(&[]);
    assert!(!c.oversubscribe && e.is_empty());
    assert_eq!(c.spill_limit(Some(1 << 30)), None, "off by default");
    for on in ["true", "1", "TRUE", " True "] {
        assert!(parse(&[("CUDA_OVERSUBSCRIBE", on)]).0.oversubscribe, "{on}");
    }
    for off in ["false", "0", "False", ""] {
        let (c, e) = parse(&[("CUDA_OVERSUBSCRIBE", off)]);
        assert!(!c.oversubscribe && e.is_empty(), "{off}");
    }
    let (c, e) = parse(&[("CUDA_OVERSUBSCRIBE", "yes please")]);
    assert!(!c.oversubscribe);
    assert_eq!(e.len(), 1);
    let line = e[0].to_string();
    assert!(line.contains("CUDA_OVERSUBSCRIBE=\"yes please\"") && line.contains("OFF"), "{line}");

    let (c, _) = parse(&[("CUDA_OVERSUBSCRIBE", "true")]);
    assert_eq!(c.spill_limit(Some(4 << 30)), Some(8 << 30), "default: twice the cap");
    assert_eq!(c.spill_limit(None), None, "an uncapped device never spills");
    let (c, _) = parse(&[("CUDA_OVERSUBSCRIBE", "1"), ("LIBVGPU_SPILL_LIMIT", "16g")]);
    assert_eq!(c.spill_limit(Some(4 << 30)), Some(16 << 30));
    let (c, _) = parse(&[("CUDA_OVERSUBSCRIBE", "1"), ("LIBVGPU_SPILL_LIMIT", "0")]);
    assert_eq!(c.spill_limit(Some(4 << 30)), None, "0: no spilling");
    let (c, e) = parse(&[("CUDA_OVERSUBSCRIBE", "1"), ("LIBVGPU_SPILL_LIMIT", "lots")]);
    assert_eq!((c.spill_limit(Some(1 << 30)), e.len()), (Some(2 << 30), 1));
}

#[test]
fn node_file_default_path_and_off() {
    assert_eq!(parse(&[]).0.node_file.as_deref(), Some(DEFAULT_NODE_FILE));
    assert_eq!(parse(&[("LIBVGPU_NODE_FILE", "/run/vgpu/node")]).0.node_file.as_deref(), Some("/run/vgpu/node"));
    assert_eq!(parse(&[("LIBVGPU_NODE_FILE", "off")]).0.node_file, None);
    assert_eq!(parse(&[]).0.reconcile_ms, Some(100));
    assert_eq!(parse(&[("LIBVGPU_RECONCILE_MS", "0")]).0.reconcile_ms, Some(0));
    assert_eq!(parse(&[("LIBVGPU_RECONCILE_MS", "OFF")]).0.reconcile_ms, None);
    let (c, e) = parse(&[("LIBVGPU_RECONCILE_MS", "1s")]);
    assert_eq!((c.reconcile_ms, e.len()), (Some(100), 1));
    assert_eq!(parse(&[("LIBVGPU_NODE_FILE", "")]).0.node_file, None);
}

#[test]
fn region_mode_and_priority() {
    let (c, e) = parse(&[("LIBVGPU_REGION_MODE", "0666"), ("CUDA_TASK_PRIORITY", "0")]);
    assert!(e.is_empty());
    assert_eq!((c.region_mode, c.priority), (0o666, 0));
    let (c, e) = parse(&[("LIBVGPU_REGION_MODE", "0o640")]);
    assert!(e.is_empty());
    assert_eq!(c.region_mode, 0o640);
    for bad in ["999", "rw-", "", "01777"] {
        let (c, e) = parse(&[("LIBVGPU_REGION_MODE", bad)]);
        assert_eq!(c.region_mode, 0o600, "{bad}");
        assert_eq!(e.len(), 1, "{bad}");
    }
    let (c, e) = parse(&[("CUDA_TASK_PRIORITY", "high")]);
    assert_eq!((c.priority, e.len()), (1, 1));
}

#[test]
fn empty_values_mean_unset() {
    let (c, e) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT", ""), ("CUDA_DEVICE_SM_LIMIT", " ")]);
    assert!(e.is_empty());
    assert_eq!(c, Config::default());
}

#[test]
fn values_that_are_not_utf8_get_the_bad_value_line() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    for name in [
        "CUDA_DEVICE_MEMORY_LIMIT",
        "CUDA_DEVICE_MEMORY_LIMIT_0",
        "CUDA_DEVICE_SM_LIMIT",
        "CUDA_DEVICE_SM_LIMIT_1",
        "LIBCUDA_LOG_LEVEL",
        "LIBVGPU_REGION_MODE",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE",
    ] {
        let vars = vec![(OsString::from(name), OsString::from_vec(b"1g\xa0".to_vec()))];
        let (c, e) = Config::from_os_vars(vars);
        assert_eq!(e.len(), 1, "{name}: {e:?}");
        let line = e[0].to_string();
        assert!(line.starts_with(&format!("{name}=")) && line.contains("invalid"), "{line}");
        assert_eq!(c.memory_limit, [None; MAX_DEVICES], "{name}");
        assert_eq!(c.shared_cache, DEFAULT_SHARED_CACHE);
    }
}

#[test]
fn caps_that_round_to_nothing_or_are_tiny_are_refused() {
    for v in ["0.0001k", "0.0000000001g", "2", "2048"] {
        let (c, e) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT", v)]);
        assert_eq!(c.memory_limit[0], None, "{v}");
        assert_eq!(e.len(), 1, "{v}");
        assert!(e[0].to_string().contains(&format!("{v:?}")), "{}", e[0]);
    }
    assert_eq!(parse(&[("CUDA_DEVICE_MEMORY_LIMIT", "0")]).1, vec![]);
}

#[test]
fn an_invalid_visible_devices_entry_is_reported_and_views_keep_their_caps() {
    let (c, e) = parse(&[("CUDA_VISIBLE_DEVICES", "GPUé1"), ("CUDA_DEVICE_MEMORY_LIMIT", "1g")]);
    assert_eq!(e.len(), 1);
    assert!(e[0].to_string().contains("\"GPUé1\""), "{}", e[0]);
    assert_eq!((c.visible_devices, c.memory_limit[0]), (None, Some(GIB)));
    assert_eq!(parse(&[("CUDA_VISIBLE_DEVICES", "1,0")]).0.visible_devices.as_deref(), Some("1,0"));
}

#[test]
fn trusted_uids() {
    assert_eq!(parse(&[]).0.trusted, TrustedOwners::default());
    let (c, e) = parse(&[("LIBVGPU_TRUSTED_UIDS", "1000, 1001")]);
    assert!(e.is_empty());
    assert_eq!(c.trusted.uids, vec![1000, 1001]);
    assert!(c.trusted.allows(1001, 5) && c.trusted.allows(0, 5) && c.trusted.allows(5, 5));
    assert!(!c.trusted.allows(1002, 5));
    assert!(parse(&[("LIBVGPU_TRUSTED_UIDS", "*")]).0.trusted.allows(65534, 5));
    let (c, e) = parse(&[("LIBVGPU_TRUSTED_UIDS", "nobody")]);
    assert_eq!((c.trusted, e.len()), (TrustedOwners::default(), 1));
}

#[test]
fn unrelated_variables_are_ignored() {
    let (c, e) = parse(&[("CUDA_DEVICE_ORDER", "PCI_BUS_ID"), ("CUDA_DEVICE_MEMORY_LIMITX", "1")]);
    assert!(e.is_empty());
    assert_eq!(c, Config::default());
}
