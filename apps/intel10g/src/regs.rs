//! 82599 REGISTERS, as the driver uses them
//!
//! Offsets and bit fields from the Intel 82599 datasheet, section 8.2.3,
//! under the datasheet's names. Receive queue registers live in two banks
//! (queues 0-63 and 64-127); the `*_q` functions pick the bank. A test
//! checks this table against the model's own, written separately.

#![allow(dead_code)]

// General control and status (8.2.3.1, 8.2.3.2, 8.2.3.5)
pub const CTRL: u32 = 0x00000;
pub const STATUS: u32 = 0x00008;
pub const CTRL_EXT: u32 = 0x00018;
pub const EEC: u32 = 0x10010;
pub const EIMC: u32 = 0x00888;

pub const CTRL_GIO_MASTER_DISABLE: u32 = 1 << 2;
pub const CTRL_LRST: u32 = 1 << 3;
pub const CTRL_RST: u32 = 1 << 26;
pub const CTRL_EXT_NS_DIS: u32 = 1 << 16;
pub const STATUS_GIO_MASTER_ENABLE: u32 = 1 << 19;
pub const EEC_AUTO_RD: u32 = 1 << 9;
pub const EIMC_ALL: u32 = 0x7fff_ffff;

// MAC and link (8.2.3.22)
pub const HLREG0: u32 = 0x04240;
pub const MAXFRS: u32 = 0x04268;
pub const AUTOC: u32 = 0x042A0;
pub const LINKS: u32 = 0x042A4;
pub const AUTOC2: u32 = 0x042A8;

pub const HLREG0_TXCRCEN: u32 = 1 << 0;
pub const HLREG0_RXCRCSTRP: u32 = 1 << 1;
pub const HLREG0_JUMBOEN: u32 = 1 << 2;
pub const HLREG0_TXPADEN: u32 = 1 << 10;
pub const HLREG0_LPBK: u32 = 1 << 15;
pub const MAXFRS_MFS_SHIFT: u32 = 16;
pub const AUTOC_RESTART_AN: u32 = 1 << 12;
pub const AUTOC_LMS_MASK: u32 = 7 << 13;
pub const AUTOC_LMS_10G_SERIAL: u32 = 3 << 13;
pub const AUTOC2_10G_PMA_PMD_SERIAL_MASK: u32 = 3 << 16;
pub const AUTOC2_10G_SFI: u32 = 2 << 16;
pub const LINKS_LINK_UP: u32 = 1 << 30;
pub const LINKS_SPEED_MASK: u32 = 3 << 28;
pub const LINKS_SPEED_10G: u32 = 3 << 28;
pub const LINKS_SPEED_1G: u32 = 2 << 28;

// Receive (8.2.3.7, 8.2.3.8)
pub const fn rx_bank(q: u32, reg: u32) -> u32 {
    if q < 64 { 0x01000 + 0x40 * q + reg } else { 0x0D000 + 0x40 * (q - 64) + reg }
}
pub const fn rdbal(q: u32) -> u32 {
    rx_bank(q, 0x00)
}
pub const fn rdbah(q: u32) -> u32 {
    rx_bank(q, 0x04)
}
pub const fn rdlen(q: u32) -> u32 {
    rx_bank(q, 0x08)
}
pub const fn dca_rxctrl(q: u32) -> u32 {
    rx_bank(q, 0x0C)
}
pub const fn rdh(q: u32) -> u32 {
    rx_bank(q, 0x10)
}
pub const fn srrctl(q: u32) -> u32 {
    rx_bank(q, 0x14)
}
pub const fn rdt(q: u32) -> u32 {
    rx_bank(q, 0x18)
}
pub const fn rxdctl(q: u32) -> u32 {
    rx_bank(q, 0x28)
}
pub const RDRXCTL: u32 = 0x02F00;
pub const PFQDE: u32 = 0x02F04;
pub const RXCTRL: u32 = 0x03000;
pub const fn fcrth(i: u32) -> u32 {
    0x03260 + 4 * i
}
pub const fn rxpbsize(i: u32) -> u32 {
    0x03C00 + 4 * i
}
pub const RXCSUM: u32 = 0x05000;
pub const RXCSUM_PCSD: u32 = 1 << 13;
pub const RFCTL: u32 = 0x05008;
pub const FCTRL: u32 = 0x05080;
pub const VLNCTRL: u32 = 0x05088;
pub const fn mta(i: u32) -> u32 {
    0x05200 + 4 * i
}
pub const fn vfta(i: u32) -> u32 {
    0x0A000 + 4 * i
}
pub const fn ral(i: u32) -> u32 {
    0x0A200 + 8 * i
}
pub const fn rah(i: u32) -> u32 {
    0x0A204 + 8 * i
}
pub const fn mpsar(i: u32) -> u32 {
    0x0A600 + 4 * i
}
pub const fn psrtype(pool: u32) -> u32 {
    0x0EA00 + 4 * pool
}
pub const fn reta(i: u32) -> u32 {
    0x0EB00 + 4 * i
}
pub const fn rssrk(i: u32) -> u32 {
    0x0EB80 + 4 * i
}
pub const MRQC: u32 = 0x0EC80;
pub const fn rqsmr(i: u32) -> u32 {
    0x02300 + 4 * i
}

pub const SRRCTL_BSIZEPACKET_MASK: u32 = 0x1f;
pub const SRRCTL_DESCTYPE_ADV_ONEBUF: u32 = 1 << 25;
pub const SRRCTL_DROP_EN: u32 = 1 << 28;
pub const RXDCTL_ENABLE: u32 = 1 << 25;
pub const RXDCTL_VME: u32 = 1 << 30;
pub const DCA_RXCTRL_BIT12: u32 = 1 << 12;
pub const RDRXCTL_CRCSTRIP: u32 = 1 << 1;
pub const RDRXCTL_DMAIDONE: u32 = 1 << 3;
pub const RDRXCTL_RSCFRSTSIZE_MASK: u32 = 0x1f << 17;
pub const RDRXCTL_RSCACKC: u32 = 1 << 25;
pub const RDRXCTL_FCOE_WRFIX: u32 = 1 << 26;
pub const RXCTRL_RXEN: u32 = 1 << 0;
pub const RFCTL_RSC_DIS: u32 = 1 << 5;
pub const FCTRL_MPE: u32 = 1 << 8;
pub const FCTRL_UPE: u32 = 1 << 9;
pub const FCTRL_BAM: u32 = 1 << 10;
pub const VLNCTRL_VET_8100: u32 = 0x8100;
pub const VLNCTRL_VFE: u32 = 1 << 30;
pub const RAH_AV: u32 = 1 << 31;
pub const MRQC_MRQE_RSS: u32 = 0x1;
pub const MRQC_MRQE_VMDQ_RSS_32: u32 = 0xA;
pub const MRQC_MRQE_VMDQ_RSS_64: u32 = 0xB;
pub const MRQC_RSS_FIELDS: u32 = (1 << 16) | (1 << 17) | (1 << 20) | (1 << 21) | (1 << 22) | (1 << 23);
pub const PSRTYPE_RQPL_SHIFT: u32 = 29;
pub const PFQDE_WRITE: u32 = 1 << 16;
pub const PFQDE_QUEUE_SHIFT: u32 = 8;

// Transmit (8.2.3.9)
pub const fn tdbal(q: u32) -> u32 {
    0x06000 + 0x40 * q
}
pub const fn tdbah(q: u32) -> u32 {
    0x06004 + 0x40 * q
}
pub const fn tdlen(q: u32) -> u32 {
    0x06008 + 0x40 * q
}
pub const fn tdh(q: u32) -> u32 {
    0x06010 + 0x40 * q
}
pub const fn tdt(q: u32) -> u32 {
    0x06018 + 0x40 * q
}
pub const fn txdctl(q: u32) -> u32 {
    0x06028 + 0x40 * q
}
pub const DMATXCTL: u32 = 0x04A80;
pub const DTXMXSZRQ: u32 = 0x08100;
pub const MTQC: u32 = 0x08120;
pub const fn txpbsize(i: u32) -> u32 {
    0x0CC00 + 4 * i
}
pub const fn txpbthresh(i: u32) -> u32 {
    0x04950 + 4 * i
}
pub const fn tqsm(i: u32) -> u32 {
    0x08600 + 4 * i
}

pub const TXDCTL_PTHRESH_SHIFT: u32 = 0;
pub const TXDCTL_HTHRESH_SHIFT: u32 = 8;
pub const TXDCTL_WTHRESH_SHIFT: u32 = 16;
pub const TXDCTL_ENABLE: u32 = 1 << 25;
pub const DMATXCTL_TE: u32 = 1 << 0;
pub const MTQC_VT_ENA: u32 = 1 << 1;
pub const MTQC_64_POOLS: u32 = 1 << 2;
pub const MTQC_32_POOLS: u32 = 2 << 2;

// DCB transmit arbiter (8.2.3.10)
pub const RTTDCS: u32 = 0x04900;
pub const RTTDQSEL: u32 = 0x04904;
pub const RTTDT1C: u32 = 0x04908;
pub const RTTDCS_ARBDIS: u32 = 1 << 6;

// Virtualisation (8.2.3.27)
pub const PFVTCTL: u32 = 0x051B0;
pub const fn pfvfre(i: u32) -> u32 {
    0x051E0 + 4 * i
}
pub const fn pfvfte(i: u32) -> u32 {
    0x08110 + 4 * i
}
pub const fn pfvmtxsw(i: u32) -> u32 {
    0x05180 + 4 * i
}
pub const PFDTXGSWC: u32 = 0x08220;
pub const fn pfvmvir(pool: u32) -> u32 {
    0x08000 + 4 * pool
}
pub const fn pfvml2flt(pool: u32) -> u32 {
    0x0F000 + 4 * pool
}
pub const fn pfvlvf(i: u32) -> u32 {
    0x0F100 + 4 * i
}
pub const fn pfvlvfb(i: u32) -> u32 {
    0x0F200 + 4 * i
}
pub const fn pfuta(i: u32) -> u32 {
    0x0F400 + 4 * i
}

pub const PFVTCTL_VT_ENA: u32 = 1 << 0;
pub const PFVTCTL_DIS_DEF_POOL: u32 = 1 << 29;
pub const PFVTCTL_RPL_EN: u32 = 1 << 30;
pub const PFDTXGSWC_LBE: u32 = 1 << 0;
pub const PFVML2FLT_AUPE: u32 = 1 << 24;
pub const PFVML2FLT_BAM: u32 = 1 << 27;
pub const PFVML2FLT_MPE: u32 = 1 << 28;
pub const PFVLVF_VI_EN: u32 = 1 << 31;
pub const PFVMVIR_VLANA_DEFAULT: u32 = 1 << 30;

// Statistics (8.2.3.23), cleared when read
pub const CRCERRS: u32 = 0x04000;
pub const ILLERRC: u32 = 0x04004;
pub const ERRBC: u32 = 0x04008;
pub const RLEC: u32 = 0x04040;
pub const fn mpc(i: u32) -> u32 {
    0x03FA0 + 4 * i
}
pub const fn rnbc(i: u32) -> u32 {
    0x03FC0 + 4 * i
}
pub const GPRC: u32 = 0x04074;
pub const BPRC: u32 = 0x04078;
pub const MPRC: u32 = 0x0407C;
pub const GPTC: u32 = 0x04080;
pub const GORCL: u32 = 0x04088;
pub const GORCH: u32 = 0x0408C;
pub const GOTCL: u32 = 0x04090;
pub const GOTCH: u32 = 0x04094;
pub const RUC: u32 = 0x040A4;
pub const RFC: u32 = 0x040A8;
pub const ROC: u32 = 0x040AC;
pub const RJC: u32 = 0x040B0;
pub const TPR: u32 = 0x040D0;
pub const TPT: u32 = 0x040D4;
pub const MPTC: u32 = 0x040F0;
pub const BPTC: u32 = 0x040F4;
pub const fn qprc(i: u32) -> u32 {
    0x01030 + 0x40 * i
}
pub const fn qbrc_l(i: u32) -> u32 {
    0x01034 + 0x40 * i
}
pub const fn qbrc_h(i: u32) -> u32 {
    0x01038 + 0x40 * i
}
pub const fn qprdc(i: u32) -> u32 {
    0x01430 + 0x40 * i
}
pub const fn qptc(i: u32) -> u32 {
    0x08680 + 4 * i
}
pub const fn qbtc_l(i: u32) -> u32 {
    0x08700 + 8 * i
}
pub const fn qbtc_h(i: u32) -> u32 {
    0x08704 + 8 * i
}

// Descriptors (7.1.6, 7.2.3)
pub const RXD_STAT_DD: u32 = 1 << 0;
pub const RXD_STAT_EOP: u32 = 1 << 1;
pub const RXD_STAT_VP: u32 = 1 << 3;
pub const RXD_STAT_UDPCS: u32 = 1 << 4;
pub const RXD_STAT_L4CS: u32 = 1 << 5;
pub const RXD_STAT_IPCS: u32 = 1 << 6;
/// Errors that make a frame bad: CRC, length, symbol, oversize, undersize
/// (Linux's IXGBE_RXDADV_ERR_FRAME_ERR_MASK). Checksum errors (L4E, IPE)
/// leave the frame to be delivered, unverified.
pub const RXD_ERR_FRAME: u32 = 0x3b00_0000;
pub const RXD_ERR_L4E: u32 = 1 << 30;
pub const RXD_ERR_IPE: u32 = 1 << 31;
/// The write-back's packet type (dword 0, bits 16:4): UDP.
pub const RXD_PKTTYPE_UDP: u32 = 1 << 9;
pub const TXD_DTYP_DATA: u32 = 3 << 20;
pub const TXD_DCMD_EOP: u32 = 1 << 24;
pub const TXD_DCMD_IFCS: u32 = 1 << 25;
pub const TXD_DCMD_RS: u32 = 1 << 27;
pub const TXD_DCMD_DEXT: u32 = 1 << 29;
pub const TXD_PAYLEN_SHIFT: u32 = 14;
pub const TXD_STAT_DD: u32 = 1 << 0;

/// A register array: datasheet name, elements, offset of element `i`.
pub type RegArray = (&'static str, u32, fn(u32) -> u32);

/// Every register array the driver touches (for the cross-check with the
/// model).
pub const TABLE: &[RegArray] = &[
    ("CTRL", 1, |_| CTRL),
    ("STATUS", 1, |_| STATUS),
    ("CTRL_EXT", 1, |_| CTRL_EXT),
    ("EEC", 1, |_| EEC),
    ("EIMC", 1, |_| EIMC),
    ("HLREG0", 1, |_| HLREG0),
    ("MAXFRS", 1, |_| MAXFRS),
    ("AUTOC", 1, |_| AUTOC),
    ("LINKS", 1, |_| LINKS),
    ("AUTOC2", 1, |_| AUTOC2),
    ("RDBAL", 128, rdbal),
    ("RDBAH", 128, rdbah),
    ("RDLEN", 128, rdlen),
    ("DCA_RXCTRL", 128, dca_rxctrl),
    ("RDH", 128, rdh),
    ("SRRCTL", 128, srrctl),
    ("RDT", 128, rdt),
    ("RXDCTL", 128, rxdctl),
    ("RDRXCTL", 1, |_| RDRXCTL),
    ("PFQDE", 1, |_| PFQDE),
    ("RXCTRL", 1, |_| RXCTRL),
    ("FCRTH", 8, fcrth),
    ("RXPBSIZE", 8, rxpbsize),
    ("RXCSUM", 1, |_| RXCSUM),
    ("RFCTL", 1, |_| RFCTL),
    ("FCTRL", 1, |_| FCTRL),
    ("VLNCTRL", 1, |_| VLNCTRL),
    ("MTA", 128, mta),
    ("VFTA", 128, vfta),
    ("RAL", 128, ral),
    ("RAH", 128, rah),
    ("MPSAR", 256, mpsar),
    ("PSRTYPE", 64, psrtype),
    ("RETA", 32, reta),
    ("RSSRK", 10, rssrk),
    ("MRQC", 1, |_| MRQC),
    ("RQSMR", 32, rqsmr),
    ("TDBAL", 128, tdbal),
    ("TDBAH", 128, tdbah),
    ("TDLEN", 128, tdlen),
    ("TDH", 128, tdh),
    ("TDT", 128, tdt),
    ("TXDCTL", 128, txdctl),
    ("DMATXCTL", 1, |_| DMATXCTL),
    ("DTXMXSZRQ", 1, |_| DTXMXSZRQ),
    ("MTQC", 1, |_| MTQC),
    ("TXPBSIZE", 8, txpbsize),
    ("TXPBTHRESH", 8, txpbthresh),
    ("TQSM", 32, tqsm),
    ("RTTDCS", 1, |_| RTTDCS),
    ("RTTDQSEL", 1, |_| RTTDQSEL),
    ("RTTDT1C", 1, |_| RTTDT1C),
    ("PFVTCTL", 1, |_| PFVTCTL),
    ("PFVFRE", 2, pfvfre),
    ("PFVFTE", 2, pfvfte),
    ("PFVMTXSW", 2, pfvmtxsw),
    ("PFDTXGSWC", 1, |_| PFDTXGSWC),
    ("PFVMVIR", 64, pfvmvir),
    ("PFVML2FLT", 64, pfvml2flt),
    ("PFVLVF", 64, pfvlvf),
    ("PFVLVFB", 128, pfvlvfb),
    ("PFUTA", 128, pfuta),
    ("CRCERRS", 1, |_| CRCERRS),
    ("ILLERRC", 1, |_| ILLERRC),
    ("ERRBC", 1, |_| ERRBC),
    ("RLEC", 1, |_| RLEC),
    ("MPC", 8, mpc),
    ("RNBC", 8, rnbc),
    ("GPRC", 1, |_| GPRC),
    ("BPRC", 1, |_| BPRC),
    ("MPRC", 1, |_| MPRC),
    ("GPTC", 1, |_| GPTC),
    ("GORCL", 1, |_| GORCL),
    ("GORCH", 1, |_| GORCH),
    ("GOTCL", 1, |_| GOTCL),
    ("GOTCH", 1, |_| GOTCH),
    ("RUC", 1, |_| RUC),
    ("RFC", 1, |_| RFC),
    ("ROC", 1, |_| ROC),
    ("RJC", 1, |_| RJC),
    ("TPR", 1, |_| TPR),
    ("TPT", 1, |_| TPT),
    ("MPTC", 1, |_| MPTC),
    ("BPTC", 1, |_| BPTC),
    ("QPRC", 16, qprc),
    ("QBRC_L", 16, qbrc_l),
    ("QBRC_H", 16, qbrc_h),
    ("QPRDC", 16, qprdc),
    ("QPTC", 16, qptc),
    ("QBTC_L", 16, qbtc_l),
    ("QBTC_H", 16, qbtc_h),
];

#[cfg(test)]
mod tests {
    use snabb_model_82599::regs as model;

    /// Two transcriptions of the datasheet, made separately, must agree.
    #[test]
    fn offsets_agree_with_the_model() {
        for &(name, count, f) in super::TABLE {
            let def = model::lookup(name).unwrap_or_else(|| panic!("the model has no {name}"));
            assert_eq!(def.count(), count, "{name}: element count");
            for i in 0..count {
                assert_eq!(model::decode(f(i)), Some((def.reg, i)), "{name}[{i}] at {:#x}", f(i));
            }
        }
    }
}
