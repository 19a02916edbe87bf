//! Zero copy at a VhostUser port when the device reaches memory only by
//! physical address (an 82599 without an IOMMU). In a test binary of its
//! own: the device's DMA domain is registered process-wide, and would take
//! lending away from the other tests' guests.

use anyhow::{Result, ensure};
use snabb_apps_vhost_user::frontend::FrontendOptions;

mod standin;
use standin::*;

/// A device that reaches memory only by physical address (an 82599
/// without an IOMMU): guest memory in ordinary pages is copied for,
/// counted and said once; guest memory in huge pages is lent, by physical
/// address.
#[test]
fn without_an_iommu_only_huge_page_guest_memory_is_lent() -> Result<()> {
    use snabb_core::memory::{self, DmaDomain, ForeignSegment};
    use std::sync::{Arc, Mutex};
    struct PhysicalOnly(Mutex<Vec<ForeignSegment>>);
    impl DmaDomain for PhysicalOnly {
        fn name(&self) -> String {
            "no IOMMU".into()
        }
        fn map_foreign(&self, seg: &ForeignSegment) -> Result<(), String> {
            if !seg.physical {
                return Err("no IOMMU: physical addresses only".into());
            }
            self.0.lock().unwrap().push(*seg);
            MAPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        fn unmap_foreign(&self, seg: &ForeignSegment) {
            self.0.lock().unwrap().retain(|s| s != seg);
        }
    }
    static MAPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dom = Arc::new(PhysicalOnly(Mutex::new(Vec::new())));
    let d: Arc<dyn DmaDomain> = dom.clone();
    memory::add_domain(&d);
    let frames: Vec<Vec<u8>> = (0..100).map(|n| frame(n, 1000)).collect();

    let plan = NicPlan { host_when_idle: true, ..Default::default() };
    let (rig, nic, g) = run_rx(mrg(true), 2060, &frames, plan, |_, _, _| ())?;
    ensure!(g.got.len() == 100, "frames arrive by copy");
    ensure!(!nic.lending && c(&rig, "zc_unreachable") > 0 && c(&rig, "tx_zc_packets") == 0);

    let huge = memory::chunks().iter().any(|c| c.backing == memory::Backing::Huge);
    if !huge {
        eprintln!("skipped the huge-page half: no huge pages (or no CAP_SYS_ADMIN for pagemap)");
        return Ok(());
    }
    let opts = FrontendOptions { huge_pages: true, ..mrg(true) };
    let (rig, nic, g) = run_rx(opts, 2060, &frames, NicPlan::default(), |_, _, _| ())?;
    let got: Vec<Vec<u8>> = g.got.iter().map(|(_, f)| f.clone()).collect();
    ensure!(got == frames && nic.lending, "lent and exact");
    ensure!(c(&rig, "tx_zc_packets") == 100 && c(&rig, "zc_unreachable") == 0);
    ensure!(
        MAPPED.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the guest's huge pages were mapped by physical address"
    );
    drop(rig);
    drop(nic);
    ensure!(dom.0.lock().unwrap().is_empty(), "the guest's pages left the domain with the guest");
    drop(d);
    Ok(())
}
