//! CPU time per packet of each side's data path, in one thread (run by
//! hand: `cargo test --release -p snabb-apps-virtio-user --test cost -- --ignored --nocapture`).
//! Thread CPU time, so another busy process on the machine changes it less
//! than a rate; still only a guide, not a figure of record.

use snabb_apps_vhost_user::app::VhostUserArgs;
use snabb_apps_vhost_user::frontend::temp_socket;
use snabb_apps_virtio_user::VirtioUserArgs;
use snabb_apps_virtio_user::selftest::Pair;
use snabb_core::Packet;

fn cpu_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: fills a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[test]
#[ignore]
fn cost_per_packet() {
    for size in [64usize, 1500] {
        let sock = temp_socket("cost");
        let mut a = VirtioUserArgs::new(&sock);
        a.huge_pages = true;
        let mut p = Pair::new(a, VhostUserArgs::new(&sock)).unwrap();
        p.up().unwrap();
        let frame = vec![0x5au8; size];
        let (mut t_vm_tx, mut t_sw_rx, mut t_sw_tx, mut t_vm_rx, mut n) = (0, 0, 0, 0, 0u64);
        let batch = 128;
        for _ in 0..20000 {
            for _ in 0..batch {
                p.vm.input.transmit(Packet::from_bytes(&frame));
                p.sw.as_ref().unwrap().input.transmit(Packet::from_bytes(&frame));
            }
            let t0 = cpu_ns();
            p.vm.push();
            let t1 = cpu_ns();
            p.sw.as_mut().unwrap().pull();
            let t2 = cpu_ns();
            p.sw.as_mut().unwrap().push();
            let t3 = cpu_ns();
            p.vm.pull();
            let t4 = cpu_ns();
            t_vm_tx += t1 - t0;
            t_sw_rx += t2 - t1;
            t_sw_tx += t3 - t2;
            t_vm_rx += t4 - t3;
            n += batch as u64;
            p.sw.as_ref().unwrap().output.discard();
            p.vm.output.discard();
        }
        assert_eq!(p.vm("tx_packets"), n);
        assert_eq!(p.vm("rx_packets"), n);
        let per = |t: u64| t as f64 / n as f64;
        println!(
            "{size:5} B: VirtioUser send {:.1} ns, VhostUser from guest {:.1} ns, VhostUser to guest {:.1} ns, VirtioUser receive {:.1} ns",
            per(t_vm_tx),
            per(t_sw_rx),
            per(t_sw_tx),
            per(t_vm_rx)
        );
    }
}
