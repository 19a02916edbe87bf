//! VirtioUser against snabb-rs's own VhostUser, in one process.

use snabb_apps_virtio_user::selftest;

#[test]
fn the_selftest() {
    selftest::selftest().unwrap();
}
