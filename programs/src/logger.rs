//! Logs to stderr with timestamps and per-module levels (`env_logger`),
//! set by `SNABB_RS_LOG`: a level (`off`, `error`, `warn`, `info`, `debug`,
//! `trace`; default `info`), and `module=level` directives after it, comma
//! separated: `SNABB_RS_LOG=warn,snabb_apps_vhost_user=debug`. A value that
//! is not one of those is an error, not silently `info`.

use log::LevelFilter;

/// Check a `SNABB_RS_LOG` value: every directive a level or `module=level`.
pub fn check_spec(spec: &str) -> Result<(), String> {
    let level = |s: &str| s.parse::<LevelFilter>().map_err(|_| s.to_string());
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bad = |why: String| {
            Err(format!(
                "SNABB_RS_LOG={spec}: `{d}`: {why} (expected a level: off, error, warn, info, debug, trace; \
                 or module=level, e.g. snabb_apps_vhost_user=debug)"
            ))
        };
        match d.split_once('=') {
            Some((module, l)) => {
                let module_ok = !module.is_empty()
                    && module
                        .split("::")
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                if !module_ok {
                    return bad(format!("`{module}` is not a module path"));
                }
                if let Err(l) = level(l) {
                    return bad(format!("`{l}` is not a level"));
                }
            }
            None => {
                if level(d).is_err() {
                    return bad("not a level".into());
                }
            }
        }
    }
    Ok(())
}

/// Set up logging from `SNABB_RS_LOG`.
pub fn init() -> Result<(), String> {
    let spec = match std::env::var("SNABB_RS_LOG") {
        Ok(s) if !s.trim().is_empty() => s,
        Ok(_) | Err(std::env::VarError::NotPresent) => "info".to_string(),
        Err(std::env::VarError::NotUnicode(_)) => return Err("SNABB_RS_LOG: not UTF-8".into()),
    };
    check_spec(&spec)?;
    env_logger::Builder::new()
        .parse_filters(&spec)
        .format_timestamp_micros()
        .target(env_logger::Target::Stderr)
        .try_init()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::check_spec;

    #[test]
    fn levels_and_modules() {
        for ok in ["info", "DEBUG", "off", "warn,snabb_apps_vhost_user=debug", "snabb_core::engine=trace", " info , "] {
            check_spec(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["verbose", "inf", "info,snabb_core=loud", "=debug", "a b=info", "info/foo"] {
            let e = check_spec(bad).unwrap_err();
            assert!(e.contains("expected a level"), "{bad}: {e}");
        }
    }
}
