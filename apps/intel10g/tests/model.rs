//! The driver against the software 82599: each selftest on its own.

use snabb_apps_intel10g::selftest::{self, Target};

fn run(name: &str, f: impl FnOnce() -> anyhow::Result<()>) {
    env_logger_init();
    if let Err(e) = f() {
        panic!("{name}: {e:#}");
    }
}

fn env_logger_init() {}

#[test]
fn init_and_reset() {
    run("init and reset", selftest::init_and_reset);
}

#[test]
fn model_checks_fire_on_driver_mistakes() {
    run("model checks", selftest::model_checks);
}

#[test]
fn dma_faults_only_on_the_wrong_path() {
    run("DMA faults", selftest::dma_faults);
}

#[test]
fn zero_copy_receive_into_a_lenders_buffer() {
    run("zero-copy receive", selftest::zero_copy_rx);
}

#[test]
fn a_partial_checksum_goes_on_the_wire_finished() {
    run("partial checksum on transmit", selftest::partial_csum_tx);
}

#[test]
fn bad_configs_are_refused_before_the_device_is_touched() {
    run("bad configs", || selftest::bad_configs(&Target::Model));
}

#[test]
fn single_queue_loopback_conserves_packets() {
    run("loopback", || selftest::loopback(&Target::Model));
}

#[test]
fn vmdq_eight_pools() {
    run("VMDq", || selftest::vmdq(&Target::Model));
}

#[test]
fn rss_four_queues() {
    run("RSS", || selftest::rss(&Target::Model));
}

#[test]
fn vmdq_filters_change_in_place() {
    run("refilter", || selftest::refilter(&Target::Model));
}
