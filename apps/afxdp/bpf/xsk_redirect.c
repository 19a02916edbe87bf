// SPDX-License-Identifier: Apache-2.0
//
// The XDP program of snabb-rs's AfXdp app: every frame received on queue q
// of the interface goes to the AF_XDP socket at index q of `snabb_xsks`;
// a queue with no socket there passes its frames to the kernel as usual
// (bpf_redirect_map's flags give the action taken when the lookup fails,
// Linux 5.3 and later).
//
// Two copies of one function: `snabb_xsk_frags` declares that it handles
// frames in several buffers (Linux 5.18), which veth and most drivers need
// before they accept an XDP program on an interface whose MTU exceeds a
// page; `snabb_xsk` is for older kernels. The app loads the first one the
// kernel takes. Their names are how the app recognises a program of its
// own left attached by a process that died (see attach.rs).
//
// Built by apps/afxdp/build.rs with `clang -target bpf`.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, 64);   // set to the interface's queue count at load time
    __type(key, __u32);
    __type(value, __u32);
} snabb_xsks SEC(".maps");

SEC("xdp.frags")
int snabb_xsk_frags(struct xdp_md *ctx)
{
    return bpf_redirect_map(&snabb_xsks, ctx->rx_queue_index, XDP_PASS);
}

SEC("xdp")
int snabb_xsk(struct xdp_md *ctx)
{
    return bpf_redirect_map(&snabb_xsks, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Apache-2.0";
