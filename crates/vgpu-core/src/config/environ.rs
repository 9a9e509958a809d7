//! The process environment: only our variables are converted to text, and a value that is not
//! UTF-8 gets the same line as any bad value.

use super::{CORE_POLICY, Config, ConfigError, NODE_FILE, SHARED_CACHE, VISIBLE_DEVICES};

impl Config {
    pub fn from_env() -> (Config, Vec<ConfigError>) {
        Config::from_os_vars(std::env::vars_os())
    }

    /// As [`from_vars`](Self::from_vars), from the raw environment. A value that is not UTF-8 is
    /// read with U+FFFD in place of its bad bytes, so it is refused with the same line as any
    /// other bad value (no parser accepts U+FFFD); a path or device list is not guessed at.
    pub fn from_os_vars(
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> (Config, Vec<ConfigError>) {
        use std::os::unix::ffi::OsStrExt;
        let mut owned: Vec<(String, String)> = Vec::new();
        let mut errors = Vec::new();
        // Filter on the raw bytes first: only our few variables are converted (and copied).
        for (k, v) in vars {
            let kb = k.as_bytes();
            if !(kb.starts_with(b"CUDA_")
                || kb.starts_with(b"LIBCUDA_")
                || kb.starts_with(b"LIBVGPU_")
                || kb == CORE_POLICY.as_bytes())
            {
                continue;
            }
            let Ok(name) = k.into_string() else { continue };
            match v.into_string() {
                Ok(value) => owned.push((name, value)),
                Err(raw) => {
                    let lossy = raw.to_string_lossy().into_owned();
                    if [SHARED_CACHE, NODE_FILE, VISIBLE_DEVICES].contains(&name.as_str()) {
                        errors.push(ConfigError {
                            variable: name,
                            value: lossy,
                            problem: "not valid UTF-8".into(),
                            accepted: "UTF-8 text",
                            consequence: "this variable is ignored",
                        });
                    } else {
                        owned.push((name, lossy));
                    }
                }
            }
        }
        let (config, more) = Config::from_vars(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        errors.extend(more);
        (config, errors)
    }
}
