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

#[test]
fn lent_buffers_of_every_size() {
    run("lent buffers of every size", selftest::zero_copy::lend_sizes);
}

#[test]
fn checksum_verdicts_reach_the_packets() {
    run("checksum verdicts", selftest::zero_copy::lend_checksums);
}

#[test]
fn supplied_buffers_the_queue_cannot_take_go_home() {
    run("refused supply", selftest::zero_copy::lend_refusals);
}

#[test]
fn revocation_under_traffic_gives_every_buffer_back() {
    run("revocation under traffic", selftest::zero_copy::lend_revocation);
}

#[test]
fn host_lend_switches_under_traffic_conserve_frames() {
    run("Host <-> Lend under traffic", selftest::zero_copy::lend_mode_switch);
}

#[test]
fn split_packets_reach_the_wire_intact() {
    run("split packets on transmit", selftest::zero_copy::split_tx);
}

#[test]
fn a_lone_lent_packet_comes_home_promptly() {
    run("prompt reclaim", selftest::zero_copy::prompt_reclaim);
}
