// A VLAN access port in tc BPF, for test namespaces on kernels without
// 802.1Q devices: frames leaving the interface get VLAN_ID's tag; frames
// arriving keep going only with that tag, which is taken off (the rest are
// dropped). Built by selftest/vmdq-vswitch.sh with
//   clang -O2 -target bpf -DVLAN_ID=10 -c vlan-tag.bpf.c -o vlan10.o
// and attached with `tc filter add dev IF egress|ingress bpf da obj ... sec tc/...`.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#ifndef VLAN_ID
#error "build with -DVLAN_ID=N"
#endif

SEC("tc/egress")
int tag(struct __sk_buff *skb)
{
    return bpf_skb_vlan_push(skb, __builtin_bswap16(ETH_P_8021Q), VLAN_ID) ? TC_ACT_SHOT : TC_ACT_OK;
}

SEC("tc/ingress")
int untag(struct __sk_buff *skb)
{
    __u16 vid;
    if (skb->vlan_present) {
        // The tag came out of the frame into the skb (VLAN acceleration).
        vid = skb->vlan_tci & 0x0fff;
    } else {
        // Still in the frame: the ethertype at 12, the TCI at 14.
        __u16 tpid, tci;
        if (bpf_skb_load_bytes(skb, 12, &tpid, 2) || tpid != __builtin_bswap16(ETH_P_8021Q))
            return TC_ACT_SHOT;
        if (bpf_skb_load_bytes(skb, 14, &tci, 2))
            return TC_ACT_SHOT;
        vid = __builtin_bswap16(tci) & 0x0fff;
    }
    if (vid != VLAN_ID)
        return TC_ACT_SHOT;
    return bpf_skb_vlan_pop(skb) ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
