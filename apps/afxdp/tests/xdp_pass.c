// An XDP program that is not snabb-rs's, for tests/veth.rs: it passes
// every frame to the kernel.
#include <linux/bpf.h>

__attribute__((section("xdp"), used)) int other_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

char LICENSE[] __attribute__((section("license"), used)) = "Apache-2.0";
