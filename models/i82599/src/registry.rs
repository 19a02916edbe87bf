//! MODEL PORTS BY NAME
//!
//! A process can hold several model ports; apps find them by name, so that
//! a config can say `pci: "model:0"` for one and `pci: "model:1"` for the
//! other, with `wire: Cable("model:1")` on the first to cable them back to
//! back. A port lives as long as someone holds it (a driver, or the port at
//! the other end of a cable that brought it into being); the registry only
//! remembers it.
//!
//!   open("model:0", Some(&WireSpec::Cable("model:1".into())))
//!       makes model:0 (and model:1 if it is not there yet) and cables them
//!   open("model:1", None)   the existing port, whatever its wire
//!   open("model:1", Some(&other))   refused when model:1 is cabled differently

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::port::{Model82599, ModelConfig};
use crate::wire::WireSpec;

static PORTS: Mutex<BTreeMap<String, Weak<Model82599>>> = Mutex::new(BTreeMap::new());
static SERIAL: AtomicU32 = AtomicU32::new(1);

/// The prefix that names a model port where a PCI address would go.
pub const PREFIX: &str = "model:";

/// A port's name without the `model:` prefix.
pub fn short_name(name: &str) -> &str {
    name.strip_prefix(PREFIX).unwrap_or(name)
}

fn fresh_config(lan_id: u8) -> ModelConfig {
    let n = SERIAL.fetch_add(1, Ordering::Relaxed);
    ModelConfig { mac: [0x02, 0x82, 0x59, 0x90, (n >> 8) as u8, n as u8], lan_id, ..ModelConfig::default() }
}

fn normalise(spec: &WireSpec) -> WireSpec {
    match spec {
        WireSpec::Cable(peer) => WireSpec::Cable(short_name(peer).to_string()),
        other => other.clone(),
    }
}

/// The port called `name`, made (and wired as `wire` says) if it does not
/// exist. An existing port must already be wired that way, if `wire` is given.
pub fn open(name: &str, wire: Option<&WireSpec>) -> Result<Arc<Model82599>, String> {
    let name = short_name(name);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        return Err(format!("model port name `{name}`: use letters, digits, `_`, `-` or `.`"));
    }
    let wire = wire.map(normalise);
    let mut ports = PORTS.lock().unwrap();
    ports.retain(|_, w| w.strong_count() > 0);
    if let Some(p) = ports.get(name).and_then(Weak::upgrade) {
        if let Some(w) = &wire {
            let have = p.wire_spec();
            if have != *w {
                return Err(format!("{PREFIX}{name} is already wired as {have:?}, not {w:?}"));
            }
        }
        return Ok(p);
    }
    let port = Model82599::new(name, fresh_config(0));
    match &wire {
        None | Some(WireSpec::Unplugged) => {}
        Some(WireSpec::Cable(peer)) => {
            if peer == name {
                return Err(format!("{PREFIX}{name} cannot be cabled to itself"));
            }
            match ports.get(peer.as_str()).and_then(Weak::upgrade) {
                Some(other) => match other.wire_spec() {
                    WireSpec::Unplugged => Model82599::cable(&port, &other, false),
                    WireSpec::Cable(p) if p == name => Model82599::cable(&port, &other, false),
                    w => return Err(format!("{PREFIX}{peer} is already wired as {w:?}")),
                },
                None => {
                    let other = Model82599::new(peer, fresh_config(1));
                    ports.insert(peer.clone(), Arc::downgrade(&other));
                    Model82599::cable(&port, &other, true);
                }
            }
        }
        Some(w) => port.attach(w).map_err(|e| format!("{PREFIX}{name}: {e}"))?,
    }
    ports.insert(name.to_string(), Arc::downgrade(&port));
    Ok(port)
}

/// The port called `name`, if it exists.
pub fn get(name: &str) -> Option<Arc<Model82599>> {
    PORTS.lock().unwrap().get(short_name(name)).and_then(Weak::upgrade)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cable_makes_and_keeps_the_peer() {
        let a = open("model:reg-a", Some(&WireSpec::Cable("model:reg-b".into()))).unwrap();
        let b = get("reg-b").expect("peer made");
        assert_eq!(b.wire_spec(), WireSpec::Cable("reg-a".into()));
        assert!(open("reg-b", Some(&WireSpec::Cable("reg-a".into()))).is_ok(), "consistent");
        assert!(open("reg-b", Some(&WireSpec::Unplugged)).is_err(), "inconsistent");
        assert!(open("reg-b", None).is_ok());
        drop(b);
        assert!(get("reg-b").is_some(), "kept alive by its maker");
        drop(a);
        assert!(get("reg-a").is_none());
        assert!(get("reg-b").is_none());
        assert!(open("model:", None).is_err());
        assert!(open("x y", None).is_err());
        assert!(open("self", Some(&WireSpec::Cable("model:self".into()))).is_err());
    }
}
