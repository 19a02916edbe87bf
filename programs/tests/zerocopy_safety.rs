//! Zero copy and a guest that goes away or changes its memory while an
//! 82599 (model) pool holds its buffers. In a test binary of its own: it
//! counts the model's translation-table entries, and other tests in the
//! same process would add packet memory meanwhile.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use snabb_apps_intel10g::{Intel10g, RxMode};
use snabb_apps_vhost_user::frontend::{Frontend, FrontendOptions, spawn_frontend, temp_socket};
use snabb_core::{Args, Config, Engine};

fn frame(n: usize, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + n * 13 + 1) as u8).collect();
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0x01, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..16].copy_from_slice(&(n as u16).to_be_bytes());
    f
}

/// A pool and a port for the safety tests below, the model's wire a pcap
/// generator fed by hand (`model.inject`).
fn pool_and_port(tag: &str) -> Result<(Engine, std::sync::Arc<snabb_model_82599::Model82599>, std::path::PathBuf)> {
    let path = temp_socket(tag);
    let port = format!("model:zc{tag}-{}", std::process::id());
    let mut r = snabb_apps_intel10g::registry();
    snabb_apps_vhost_user::register(&mut r);
    let mut c = Config::new();
    c.app_args(
        "p",
        "Intel10g",
        Args::from_ron(&format!(
            "(pci: \"{port}\", wire: Pcap(), mode: Vmdq(pools: 64), macs: [\"02:00:00:00:01:01\"])"
        ))?,
    )
    .app_args("vm", "VhostUser", Args::from_ron(&format!("(socket: {:?})", path.display().to_string()))?)
    .link("p.output -> vm.input")
    .link("vm.supply -> p.supply")
    .link("vm.output -> p.input");
    let mut e = Engine::new(r);
    e.configure(&c)?;
    let model = e.app_mut::<Intel10g>("p").context("p")?.model().context("model")?;
    Ok((e, model, path))
}

fn lending(e: &mut Engine) -> bool {
    e.app_mut::<Intel10g>("p").and_then(|p| p.rx_mode()).is_some_and(|m| m.0 == RxMode::Lend)
}

/// A guest that goes away while the pool holds its buffers, and then a new
/// memory table and GET_VRING_BASE from the next one while frames flow:
/// the chip never writes outside memory it was given (the model's DMA
/// fault log stays empty), every lent buffer comes back, and the guest's
/// memory leaves the model's translation table only after that.
#[test]
fn a_guest_that_goes_away_or_changes_its_memory_leaves_no_stray_dma() -> Result<()> {
    let (mut e, model, path) = pool_and_port("gone")?;
    // What the model's table holds besides guest memory: our own chunks
    // (more come as the freelist grows) and rings.
    let baseline = model.iommu().len() - snabb_core::memory::chunks().len();
    let before = snabb_core::packet::stats();
    // 1. A guest receives a while, then vanishes without a word.
    let p1 = path.clone();
    let guest = spawn_frontend(move |_| -> Result<usize> {
        let mut fe = Frontend::connect(&p1, FrontendOptions::default(), Duration::from_secs(30))?;
        fe.setup()?;
        fe.post_rx(0, 200, 2060);
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(20);
        while got.len() < 300 && Instant::now() < end {
            fe.queues[0].reap(&mut got);
            if fe.queues[0].num_free() > 32 {
                fe.post_rx(0, 32, 2060);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(got.len()) // the frontend (socket, memory) is dropped here
    });
    let mut n = 0usize;
    let got = guest.finish_with(
        || {
            e.run_for(Duration::from_millis(1));
            if lending(&mut e) {
                for _ in 0..8 {
                    model.inject(frame(n, 1000));
                    n += 1;
                }
            }
        },
        Duration::from_secs(40),
    )??;
    ensure!(got >= 300, "the guest received {got}");
    // Frames keep coming at its pool for a while after.
    for _ in 0..300 {
        model.inject(frame(n, 1000));
        n += 1;
        e.run_for(Duration::from_millis(1));
    }
    ensure!(!lending(&mut e), "the pool went back to host buffers");
    ensure!(model.faults().is_empty(), "DMA faults: {:?}", model.faults());
    let now = snabb_core::packet::stats();
    ensure!(
        now.foreign_wrapped - before.foreign_wrapped == now.foreign_returned - before.foreign_returned,
        "lent buffers still out: {} wrapped, {} back",
        now.foreign_wrapped - before.foreign_wrapped,
        now.foreign_returned - before.foreign_returned
    );
    ensure!(
        model.iommu().len() == baseline + snabb_core::memory::chunks().len(),
        "the guest's memory is out of the model's table once its buffers are back"
    );

    // 2. The next guest sends a new memory table and stops its receive
    // ring (GET_VRING_BASE) while frames land in its buffers.
    let p2 = path.clone();
    let guest = spawn_frontend(move |_| -> Result<(usize, u16)> {
        let mut fe = Frontend::connect(&p2, FrontendOptions::default(), Duration::from_secs(30))?;
        fe.setup()?;
        fe.post_rx(0, 200, 2060);
        let mut got = Vec::new();
        let mut receive = |fe: &mut Frontend, want: usize| {
            let end = Instant::now() + Duration::from_secs(20);
            while got.len() < want && Instant::now() < end {
                fe.queues[0].reap(&mut got);
                if fe.queues[0].num_free() > 32 {
                    fe.post_rx(0, 32, 2060);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            got.len()
        };
        receive(&mut fe, 200);
        fe.set_mem_table()?;
        let after_table = receive(&mut fe, 400);
        let base = fe.get_vring_base(0)?;
        Ok((after_table, base))
    });
    let got = guest.finish_with(
        || {
            e.run_for(Duration::from_millis(1));
            if lending(&mut e) {
                for _ in 0..8 {
                    model.inject(frame(n, 1000));
                    n += 1;
                }
            }
        },
        Duration::from_secs(60),
    )??;
    ensure!(got.0 >= 400, "frames kept coming after the new memory table: {}", got.0);
    for _ in 0..50 {
        e.run_for(Duration::from_millis(1));
    }
    let vm = e.app_counters("vm");
    ensure!(vm["quiesces"] >= 2 && vm["quiesce_timeouts"] == 0, "{vm:?}");
    ensure!(model.faults().is_empty(), "DMA faults: {:?}", model.faults());
    ensure!(model.violations().is_empty(), "violations: {:?}", model.violations());
    let now = snabb_core::packet::stats();
    ensure!(now.foreign_wrapped - before.foreign_wrapped == now.foreign_returned - before.foreign_returned);
    ensure!(model.iommu().len() == baseline + snabb_core::memory::chunks().len());
    Ok(())
}
