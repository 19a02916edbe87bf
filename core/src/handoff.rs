//! HANDING STATE OVER TO AN APP'S SUCCESSOR ON ANOTHER WORKER
//!
//! An app that moves to another worker is made anew there, and the old
//! instance is stopped (see `worker`). Some state should outlive the old
//! instance rather than start over: a `VhostUser` port's connection (else
//! the guest would have to connect again, losing what was in flight), an
//! 82599 pool's running rings (else the frames the chip wrote and the
//! buffers posted would be dropped). The old instance lets go of what ties
//! that state to its thread while the move waits (`App::prepare_move`),
//! parks it here when it stops, and its successor takes it over. What no
//! successor takes within PARK_TIMEOUT (its worker failed to start it) is
//! handed to the `expired` function given, on a thread of its own, which
//! winds it down.
//!
//!   park(key, value, expired)   keep `value` for the app that takes `key`
//!   waiting() -> bool           anything parked (one atomic load: for every tick)
//!   take(key) -> Option         what is parked under `key` (of the type asked), if any
//!   key(parts) -> String        a key from the app's name and what it serves
//!
//! A key names the app and what it serves (a socket, a pool of a port),
//! so that only the same app on the same resource takes the state over.

use std::any::Any;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How long a parked connection waits for its successor.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(5);

struct Parked {
    id: u64,
    key: String,
    value: Box<dyn Any + Send>,
}

static PARKED: Mutex<Vec<Parked>> = Mutex::new(Vec::new());
static COUNT: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A key made of `parts` (the app's name first).
pub fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

/// Keep `value` under `key` for PARK_TIMEOUT; then, untaken, it goes to
/// `expired` (on a thread of its own). A value already parked under the
/// key is replaced, and goes to its own `expired` in time.
pub fn park<T: Send + 'static>(key: String, value: T, expired: impl FnOnce(T) + Send + 'static) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    {
        let mut p = PARKED.lock().unwrap_or_else(|e| e.into_inner());
        p.push(Parked { id, key, value: Box::new(value) });
        COUNT.store(p.len(), Ordering::Release);
    }
    let reaper = move || {
        std::thread::sleep(PARK_TIMEOUT);
        if let Some(v) = remove(|p| p.id == id)
            && let Ok(v) = v.downcast::<T>()
        {
            expired(*v);
        }
    };
    if let Err(e) = std::thread::Builder::new().name("vhost-handoff".into()).spawn(reaper) {
        // No thread to wind it down in time: it waits for a successor (or
        // for the process to end).
        log::warn!("handoff: no thread to expire what was parked: {e}");
    }
}

/// Whether anything is parked.
#[inline]
pub fn waiting() -> bool {
    COUNT.load(Ordering::Acquire) > 0
}

/// Take the `T` parked under `key` (the oldest, if the key was parked twice).
pub fn take<T: 'static>(key: &str) -> Option<T> {
    remove(|p| p.key == key && p.value.is::<T>()).and_then(|v| v.downcast::<T>().ok()).map(|v| *v)
}

fn remove(f: impl Fn(&Parked) -> bool) -> Option<Box<dyn Any + Send>> {
    let mut p = PARKED.lock().unwrap_or_else(|e| e.into_inner());
    let i = p.iter().position(f)?;
    let v = p.remove(i).value;
    COUNT.store(p.len(), Ordering::Release);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_value_is_taken_once_by_its_key_only() {
        let k = key(&["hand-a", "/tmp/x.sock", "server"]);
        park(k.clone(), 7u32, |_| {});
        assert!(waiting());
        assert_eq!(take::<u32>(&key(&["hand-b", "/tmp/x.sock", "server"])), None);
        assert_eq!(take::<u32>(&key(&["hand-a", "/tmp/x.sock", "client"])), None);
        assert_eq!(take::<u64>(&k), None, "a value of another type is left alone");
        assert_eq!(take::<u32>(&k), Some(7));
        assert_eq!(take::<u32>(&k), None);
    }

    #[test]
    fn an_untaken_value_expires() {
        let k = key(&["hand-c", "/tmp/y.sock"]);
        let gone = Arc::new(AtomicBool::new(false));
        let g = gone.clone();
        park(k.clone(), 1u8, move |v| g.store(v == 1, Ordering::SeqCst));
        let end = std::time::Instant::now() + PARK_TIMEOUT + Duration::from_secs(5);
        while !gone.load(Ordering::SeqCst) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(gone.load(Ordering::SeqCst), "expired");
        assert_eq!(take::<u8>(&k), None);
    }
}
