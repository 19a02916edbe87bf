//! THE REGISTER MAP
//!
//! Every register the model knows, with its place in BAR0, its access type
//! and its value after reset, named as the 82599 datasheet names them
//! (section 8.2.3). The table is written independently of the driver's
//! constants so that a test can compare the two transcriptions.
//!
//!   decode(offset) -> Option<(Reg, index)>   which register a BAR offset is
//!   lookup(name)   -> Option<&RegDef>        a register by name
//!
//! Access types: `Rw` read/write, `Ro` read-only (a write is a driver bug),
//! `Rc` cleared when read (statistics), `Wo` write-only (reads return 0).

use std::sync::OnceLock;

/// Bytes of BAR0 the model decodes (the 82599's memory BAR is 128 KiB).
pub const BAR_SIZE: u32 = 0x20000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Rw,
    Ro,
    Rc,
    Wo,
}

/// Where the elements of a register array sit: `count` registers from
/// `base`, `stride` bytes apart, starting at element `first`.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub base: u32,
    pub stride: u32,
    pub count: u32,
    pub first: u32,
}

#[derive(Debug)]
pub struct RegDef {
    pub name: &'static str,
    pub reg: Reg,
    pub spans: &'static [Span],
    pub access: Access,
    pub reset: u32,
}

impl RegDef {
    /// Elements in the whole array.
    pub fn count(&self) -> u32 {
        self.spans.iter().map(|s| s.count).sum()
    }
    /// BAR offset of element `i`.
    pub fn offset(&self, i: u32) -> Option<u32> {
        self.spans.iter().find(|s| i >= s.first && i < s.first + s.count).map(|s| s.base + (i - s.first) * s.stride)
    }
}

const fn one(base: u32) -> Span {
    Span { base, stride: 0, count: 1, first: 0 }
}
const fn arr(base: u32, stride: u32, count: u32) -> Span {
    Span { base, stride, count, first: 0 }
}
const fn arr_from(base: u32, stride: u32, count: u32, first: u32) -> Span {
    Span { base, stride, count, first }
}

macro_rules! registers {
    ($( $name:ident $access:ident $reset:literal [$($span:expr),+]; )*) => {
        /// A register (or register array) of the model, by datasheet name.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Reg { $($name),* }

        /// Every register the model knows.
        pub static TABLE: &[RegDef] = &[
            $(RegDef {
                name: stringify!($name),
                reg: Reg::$name,
                spans: &[$($span),+],
                access: Access::$access,
                reset: $reset,
            }),*
        ];
    };
}

// Queue registers: queues 0-63 at 0x01000 + 0x40*n, queues 64-127 at
// 0x0D000 + 0x40*(n-64) (8.2.3.8). Transmit queues: 0x06000 + 0x40*n.
registers! {
    // General control (8.2.3.1, 8.2.3.2, 8.2.3.5)
    CTRL        Rw 0x0000_0000 [one(0x00000)];
    STATUS      Ro 0x0000_0000 [one(0x00008)];
    CTRL_EXT    Rw 0x0000_0000 [one(0x00018)];
    EEC         Rw 0x0000_1110 [one(0x10010)];
    EICR        Rc 0x0000_0000 [one(0x00800)];
    EIMS        Rw 0x0000_0000 [one(0x00880)];
    EIMC        Wo 0x0000_0000 [one(0x00888)];
    EIAC        Rw 0x0000_0000 [one(0x00810)];
    // MAC and link (8.2.3.22)
    HLREG0      Rw 0x0001_040B [one(0x04240)];
    MAXFRS      Rw 0x05EE_0000 [one(0x04268)];
    MFLCN       Rw 0x0000_0000 [one(0x04294)];
    AUTOC       Rw 0x0000_6000 [one(0x042A0)];
    LINKS       Ro 0x0000_0000 [one(0x042A4)];
    AUTOC2      Rw 0x0002_0000 [one(0x042A8)];
    // Receive DMA and filtering (8.2.3.7, 8.2.3.8)
    RDBAL       Rw 0x0000_0000 [arr(0x01000, 0x40, 64), arr_from(0x0D000, 0x40, 64, 64)];
    RDBAH       Rw 0x0000_0000 [arr(0x01004, 0x40, 64), arr_from(0x0D004, 0x40, 64, 64)];
    RDLEN       Rw 0x0000_0000 [arr(0x01008, 0x40, 64), arr_from(0x0D008, 0x40, 64, 64)];
    DCA_RXCTRL  Rw 0x0000_1000 [arr(0x0100C, 0x40, 64), arr_from(0x0D00C, 0x40, 64, 64)];
    RDH         Rw 0x0000_0000 [arr(0x01010, 0x40, 64), arr_from(0x0D010, 0x40, 64, 64)];
    SRRCTL      Rw 0x0000_0402 [arr(0x01014, 0x40, 64), arr_from(0x0D014, 0x40, 64, 64)];
    RDT         Rw 0x0000_0000 [arr(0x01018, 0x40, 64), arr_from(0x0D018, 0x40, 64, 64)];
    RXDCTL      Rw 0x0000_0000 [arr(0x01028, 0x40, 64), arr_from(0x0D028, 0x40, 64, 64)];
    RSCCTL      Rw 0x0000_0000 [arr(0x0102C, 0x40, 64), arr_from(0x0D02C, 0x40, 64, 64)];
    RDRXCTL     Rw 0x0010_0000 [one(0x02F00)];
    PFQDE       Rw 0x0000_0000 [one(0x02F04)];
    RXCTRL      Rw 0x0000_0000 [one(0x03000)];
    FCRTL       Rw 0x0000_0000 [arr(0x03220, 4, 8)];
    FCRTH       Rw 0x0000_0000 [arr(0x03260, 4, 8)];
    RXPBSIZE    Rw 0x0000_0000 [arr(0x03C00, 4, 8)];
    FCCFG       Rw 0x0000_0000 [one(0x03D00)];
    RXCSUM      Rw 0x0000_0000 [one(0x05000)];
    RFCTL       Rw 0x0000_0000 [one(0x05008)];
    FCTRL       Rw 0x0000_0000 [one(0x05080)];
    VLNCTRL     Rw 0x0000_8100 [one(0x05088)];
    MCSTCTRL    Rw 0x0000_0000 [one(0x05090)];
    MTA         Rw 0x0000_0000 [arr(0x05200, 4, 128)];
    VFTA        Rw 0x0000_0000 [arr(0x0A000, 4, 128)];
    RAL         Rw 0x0000_0000 [arr(0x0A200, 8, 128)];
    RAH         Rw 0x0000_0000 [arr(0x0A204, 8, 128)];
    MPSAR       Rw 0x0000_0000 [arr(0x0A600, 4, 256)];
    PSRTYPE     Rw 0x0000_0000 [arr(0x0EA00, 4, 64)];
    RETA        Rw 0x0000_0000 [arr(0x0EB00, 4, 32)];
    RSSRK       Rw 0x0000_0000 [arr(0x0EB80, 4, 10)];
    MRQC        Rw 0x0000_0000 [one(0x0EC80)];
    RQSMR       Rw 0x0000_0000 [arr(0x02300, 4, 32)];
    // Transmit (8.2.3.9)
    TDBAL       Rw 0x0000_0000 [arr(0x06000, 0x40, 128)];
    TDBAH       Rw 0x0000_0000 [arr(0x06004, 0x40, 128)];
    TDLEN       Rw 0x0000_0000 [arr(0x06008, 0x40, 128)];
    DCA_TXCTRL  Rw 0x0000_2200 [arr(0x0600C, 0x40, 128)];
    TDH         Rw 0x0000_0000 [arr(0x06010, 0x40, 128)];
    TDT         Rw 0x0000_0000 [arr(0x06018, 0x40, 128)];
    TXDCTL      Rw 0x0000_0000 [arr(0x06028, 0x40, 128)];
    TDWBAL      Rw 0x0000_0000 [arr(0x06038, 0x40, 128)];
    TDWBAH      Rw 0x0000_0000 [arr(0x0603C, 0x40, 128)];
    DMATXCTL    Rw 0x8100_0000 [one(0x04A80)];
    DTXMXSZRQ   Rw 0x0000_0010 [one(0x08100)];
    MTQC        Rw 0x0000_0000 [one(0x08120)];
    TXPBSIZE    Rw 0x0000_0000 [arr(0x0CC00, 4, 8)];
    TXPBTHRESH  Rw 0x0000_0000 [arr(0x04950, 4, 8)];
    TQSM        Rw 0x0000_0000 [arr(0x08600, 4, 32)];
    // DCB arbiters touched by the VMDq set-up (8.2.3.10)
    RTTDCS      Rw 0x0000_0000 [one(0x04900)];
    RTTDQSEL    Rw 0x0000_0000 [one(0x04904)];
    RTTDT1C     Rw 0x0000_0000 [one(0x04908)];
    RTTDT2C     Rw 0x0000_0000 [arr(0x04910, 4, 8)];
    RTRUP2TC    Rw 0x0000_0000 [one(0x03020)];
    RTTUP2TC    Rw 0x0000_0000 [one(0x0C800)];
    // Virtualisation (8.2.3.27)
    PFVTCTL     Rw 0x0000_0000 [one(0x051B0)];
    PFVFRE      Rw 0x0000_0000 [arr(0x051E0, 4, 2)];
    PFVFTE      Rw 0x0000_0000 [arr(0x08110, 4, 2)];
    PFVMTXSW    Rw 0x0000_0000 [arr(0x05180, 4, 2)];
    PFDTXGSWC   Rw 0x0000_0000 [one(0x08220)];
    PFVFSPOOF   Rw 0x0000_0000 [arr(0x08200, 4, 8)];
    PFVMVIR     Rw 0x0000_0000 [arr(0x08000, 4, 64)];
    PFVML2FLT   Rw 0x0000_0000 [arr(0x0F000, 4, 64)];
    PFVLVF      Rw 0x0000_0000 [arr(0x0F100, 4, 64)];
    PFVLVFB     Rw 0x0000_0000 [arr(0x0F200, 4, 128)];
    PFUTA       Rw 0x0000_0000 [arr(0x0F400, 4, 128)];
    // Statistics (8.2.3.23), all cleared on read
    CRCERRS     Rc 0 [one(0x04000)];
    ILLERRC     Rc 0 [one(0x04004)];
    ERRBC       Rc 0 [one(0x04008)];
    MLFC        Rc 0 [one(0x04034)];
    MRFC        Rc 0 [one(0x04038)];
    RLEC        Rc 0 [one(0x04040)];
    MPC         Rc 0 [arr(0x03FA0, 4, 8)];
    RNBC        Rc 0 [arr(0x03FC0, 4, 8)];
    GPRC        Rc 0 [one(0x04074)];
    BPRC        Rc 0 [one(0x04078)];
    MPRC        Rc 0 [one(0x0407C)];
    GPTC        Rc 0 [one(0x04080)];
    GORCL       Rc 0 [one(0x04088)];
    GORCH       Rc 0 [one(0x0408C)];
    GOTCL       Rc 0 [one(0x04090)];
    GOTCH       Rc 0 [one(0x04094)];
    RUC         Rc 0 [one(0x040A4)];
    RFC         Rc 0 [one(0x040A8)];
    ROC         Rc 0 [one(0x040AC)];
    RJC         Rc 0 [one(0x040B0)];
    TORL        Rc 0 [one(0x040C0)];
    TORH        Rc 0 [one(0x040C4)];
    TPR         Rc 0 [one(0x040D0)];
    TPT         Rc 0 [one(0x040D4)];
    MPTC        Rc 0 [one(0x040F0)];
    BPTC        Rc 0 [one(0x040F4)];
    QPRC        Rc 0 [arr(0x01030, 0x40, 16)];
    QBRC_L      Rc 0 [arr(0x01034, 0x40, 16)];
    QBRC_H      Rc 0 [arr(0x01038, 0x40, 16)];
    QPRDC       Rc 0 [arr(0x01430, 0x40, 16)];
    QPTC        Rc 0 [arr(0x08680, 4, 16)];
    QBTC_L      Rc 0 [arr(0x08700, 8, 16)];
    QBTC_H      Rc 0 [arr(0x08704, 8, 16)];
}

/// The register and element at a BAR offset.
pub fn decode(offset: u32) -> Option<(Reg, u32)> {
    if offset >= BAR_SIZE || !offset.is_multiple_of(4) {
        return None;
    }
    let e = decoder()[(offset / 4) as usize];
    (e != u32::MAX).then(|| (TABLE[(e >> 16) as usize].reg, e & 0xffff))
}

/// A register's definition by datasheet name.
pub fn lookup(name: &str) -> Option<&'static RegDef> {
    TABLE.iter().find(|d| d.name == name)
}

/// A register's definition.
pub fn def(r: Reg) -> &'static RegDef {
    &TABLE[r as usize]
}

/// One entry per 32-bit word of the BAR: table position << 16 | element,
/// or `u32::MAX` where no register lives.
fn decoder() -> &'static [u32] {
    static DECODER: OnceLock<Box<[u32]>> = OnceLock::new();
    DECODER.get_or_init(|| {
        let mut d = vec![u32::MAX; (BAR_SIZE / 4) as usize].into_boxed_slice();
        for (t, def) in TABLE.iter().enumerate() {
            for s in def.spans {
                for i in 0..s.count {
                    let off = s.base + i * s.stride;
                    let slot = &mut d[(off / 4) as usize];
                    assert_eq!(*slot, u32::MAX, "{} overlaps another register at {off:#x}", def.name);
                    *slot = (t as u32) << 16 | (s.first + i);
                }
            }
        }
        d
    })
}

// Bits the model acts on, by register (datasheet names).
pub mod bits {
    pub const CTRL_GIO_MASTER_DISABLE: u32 = 1 << 2;
    pub const CTRL_LRST: u32 = 1 << 3;
    pub const CTRL_RST: u32 = 1 << 26;
    pub const CTRL_EXT_NS_DIS: u32 = 1 << 16;
    pub const STATUS_LAN_ID_SHIFT: u32 = 2;
    pub const STATUS_LINK_UP: u32 = 1 << 7;
    pub const STATUS_GIO_MASTER_ENABLE: u32 = 1 << 19;
    pub const EEC_AUTO_RD: u32 = 1 << 9;
    pub const RDRXCTL_CRCSTRIP: u32 = 1 << 1;
    pub const RDRXCTL_DMAIDONE: u32 = 1 << 3;
    pub const HLREG0_TXCRCEN: u32 = 1 << 0;
    pub const HLREG0_RXCRCSTRP: u32 = 1 << 1;
    pub const HLREG0_JUMBOEN: u32 = 1 << 2;
    pub const HLREG0_TXPADEN: u32 = 1 << 10;
    pub const HLREG0_LPBK: u32 = 1 << 15;
    pub const AUTOC_RESTART_AN: u32 = 1 << 12;
    pub const AUTOC_LMS_SHIFT: u32 = 13;
    pub const AUTOC_LMS_MASK: u32 = 7 << 13;
    pub const AUTOC_LMS_10G_SERIAL: u32 = 3;
    pub const AUTOC2_10G_PMA_PMD_SERIAL_SHIFT: u32 = 16;
    pub const AUTOC2_10G_PMA_PMD_SERIAL_MASK: u32 = 3 << 16;
    pub const AUTOC2_10G_SFI: u32 = 2;
    pub const LINKS_LINK_UP: u32 = 1 << 30;
    pub const LINKS_SPEED_10G: u32 = 3 << 28;
    pub const RXCTRL_RXEN: u32 = 1 << 0;
    pub const FCTRL_SBP: u32 = 1 << 1;
    pub const FCTRL_MPE: u32 = 1 << 8;
    pub const FCTRL_UPE: u32 = 1 << 9;
    pub const FCTRL_BAM: u32 = 1 << 10;
    pub const VLNCTRL_VET_MASK: u32 = 0xffff;
    pub const VLNCTRL_VFE: u32 = 1 << 30;
    pub const SRRCTL_BSIZEPACKET_MASK: u32 = 0x1f;
    pub const SRRCTL_DESCTYPE_SHIFT: u32 = 25;
    pub const SRRCTL_DESCTYPE_MASK: u32 = 7 << 25;
    pub const SRRCTL_DESCTYPE_ADV_ONEBUF: u32 = 1;
    pub const SRRCTL_DROP_EN: u32 = 1 << 28;
    pub const RXCSUM_IPPCSE: u32 = 1 << 12;
    pub const RXCSUM_PCSD: u32 = 1 << 13;
    pub const RXDCTL_ENABLE: u32 = 1 << 25;
    pub const RXDCTL_VME: u32 = 1 << 30;
    pub const TXDCTL_WTHRESH_SHIFT: u32 = 16;
    pub const TXDCTL_WTHRESH_MASK: u32 = 0x7f << 16;
    pub const TXDCTL_ENABLE: u32 = 1 << 25;
    pub const TXDCTL_SWFLSH: u32 = 1 << 26;
    pub const TDWBAL_HEAD_WB_EN: u32 = 1 << 0;
    pub const DMATXCTL_TE: u32 = 1 << 0;
    pub const DCA_RXCTRL_BIT12: u32 = 1 << 12;
    pub const RAH_AV: u32 = 1 << 31;
    pub const MRQC_MRQE_MASK: u32 = 0xf;
    pub const MRQE_NONE: u32 = 0x0;
    pub const MRQE_RSS: u32 = 0x1;
    pub const MRQE_VMDQ: u32 = 0x8;
    pub const MRQE_VMDQ_RSS_32: u32 = 0xA;
    pub const MRQE_VMDQ_RSS_64: u32 = 0xB;
    pub const MRQC_RSS_TCP_IPV4: u32 = 1 << 16;
    pub const MRQC_RSS_IPV4: u32 = 1 << 17;
    pub const MRQC_RSS_IPV6: u32 = 1 << 20;
    pub const MRQC_RSS_TCP_IPV6: u32 = 1 << 21;
    pub const MRQC_RSS_UDP_IPV4: u32 = 1 << 22;
    pub const MRQC_RSS_UDP_IPV6: u32 = 1 << 23;
    pub const MTQC_RT_ENA: u32 = 1 << 0;
    pub const MTQC_VT_ENA: u32 = 1 << 1;
    pub const MTQC_NUM_TC_OR_Q_SHIFT: u32 = 2;
    pub const MTQC_NUM_TC_OR_Q_MASK: u32 = 3 << 2;
    pub const RTTDCS_ARBDIS: u32 = 1 << 6;
    pub const PFVTCTL_VT_ENA: u32 = 1 << 0;
    pub const PFVTCTL_DEF_PL_SHIFT: u32 = 7;
    pub const PFVTCTL_DEF_PL_MASK: u32 = 0x3f << 7;
    pub const PFVTCTL_DIS_DEF_POOL: u32 = 1 << 29;
    pub const PFVTCTL_RPL_EN: u32 = 1 << 30;
    pub const PFDTXGSWC_LBE: u32 = 1 << 0;
    pub const PFVML2FLT_AUPE: u32 = 1 << 24;
    pub const PFVML2FLT_ROMPE: u32 = 1 << 25;
    pub const PFVML2FLT_ROPE: u32 = 1 << 26;
    pub const PFVML2FLT_BAM: u32 = 1 << 27;
    pub const PFVML2FLT_MPE: u32 = 1 << 28;
    pub const PFVLVF_VLAN_ID_MASK: u32 = 0xfff;
    pub const PFVLVF_VI_EN: u32 = 1 << 31;
    pub const PFVMVIR_VLANA_SHIFT: u32 = 30;
    pub const PFVMVIR_VLANA_DEFAULT: u32 = 1;
    pub const PSRTYPE_RQPL_SHIFT: u32 = 29;
    pub const PFQDE_QDE: u32 = 1 << 0;
    pub const PFQDE_QUEUE_SHIFT: u32 = 8;
    pub const PFQDE_QUEUE_MASK: u32 = 0x7f << 8;
    pub const PFQDE_WRITE: u32 = 1 << 16;
    pub const PFQDE_READ: u32 = 1 << 17;

    // Advanced receive descriptor, write-back format (7.1.6.2).
    pub const RXD_STAT_DD: u32 = 1 << 0;
    pub const RXD_STAT_EOP: u32 = 1 << 1;
    pub const RXD_STAT_VP: u32 = 1 << 3;
    pub const RXD_STAT_UDPCS: u32 = 1 << 4;
    pub const RXD_STAT_L4CS: u32 = 1 << 5;
    pub const RXD_STAT_IPCS: u32 = 1 << 6;
    pub const RXD_STAT_LB: u32 = 1 << 18;
    pub const RXD_ERR_RXE: u32 = 1 << 29;
    pub const RXD_ERR_L4E: u32 = 1 << 30;
    pub const RXD_ERR_IPE: u32 = 1 << 31;
    // Its packet type field (dword 0, bits 16:4).
    pub const RXD_PKTTYPE_IPV4: u32 = 1 << 4;
    pub const RXD_PKTTYPE_IPV6: u32 = 1 << 6;
    pub const RXD_PKTTYPE_TCP: u32 = 1 << 8;
    pub const RXD_PKTTYPE_UDP: u32 = 1 << 9;
    // Advanced transmit data descriptor (7.2.3.2.4).
    pub const TXD_DTALEN_MASK: u32 = 0xffff;
    pub const TXD_DTYP_SHIFT: u32 = 20;
    pub const TXD_DTYP_MASK: u32 = 0xf << 20;
    pub const TXD_DTYP_CONTEXT: u32 = 2;
    pub const TXD_DTYP_DATA: u32 = 3;
    pub const TXD_DCMD_EOP: u32 = 1 << 24;
    pub const TXD_DCMD_IFCS: u32 = 1 << 25;
    pub const TXD_DCMD_RS: u32 = 1 << 27;
    pub const TXD_DCMD_DEXT: u32 = 1 << 29;
    pub const TXD_DCMD_VLE: u32 = 1 << 30;
    pub const TXD_DCMD_TSE: u32 = 1 << 31;
    pub const TXD_PAYLEN_SHIFT: u32 = 14;
    pub const TXD_STAT_DD: u32 = 1 << 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_decodes_both_queue_banks() {
        assert_eq!(decode(0x01018), Some((Reg::RDT, 0)));
        assert_eq!(decode(0x01018 + 0x40 * 63), Some((Reg::RDT, 63)));
        assert_eq!(decode(0x0D018), Some((Reg::RDT, 64)));
        assert_eq!(decode(0x0D018 + 0x40 * 63), Some((Reg::RDT, 127)));
        assert_eq!(decode(0x06018 + 0x40 * 127), Some((Reg::TDT, 127)));
        assert_eq!(decode(0x0A204 + 8 * 5), Some((Reg::RAH, 5)));
        assert_eq!(decode(0x0EC80), Some((Reg::MRQC, 0)));
        assert_eq!(decode(0x00004), None);
        assert_eq!(decode(0x01019), None);
        assert_eq!(decode(BAR_SIZE), None);
        assert_eq!(def(Reg::RDT).offset(64), Some(0x0D018));
        assert_eq!(lookup("PFVML2FLT").unwrap().offset(3), Some(0x0F00C));
        for d in TABLE {
            assert_eq!(TABLE[d.reg as usize].name, d.name);
        }
    }
}
