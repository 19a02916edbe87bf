/*
 * dpdk-pktpipe: DPDK doing what `snabb-rs bench interlink` does, as a
 * like-for-like peer for it: 60-byte packets allocated and filled on one
 * lcore, handed over an SP/SC rte_ring in bursts of 32, freed on the other
 * (so the mbufs find their way back through the mempool's per-lcore caches
 * and common ring, as our packets go home through the return rings).
 * ring_perf_autotest moves bare pointers that neither side touches; this
 * moves packets.
 *
 *   dpdk-pktpipe <EAL args, two lcores: producer first> -- [PACKETS]
 *   prints: PKTPIPE packets=N ticks_per_packet=T
 *
 * Built by scripts/bench-interlink.sh with `pkg-config libdpdk`.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_ring.h>

#define BURST 32
#define SIZE 60

static struct rte_mempool *pool;
static struct rte_ring *ring;
static uint64_t packets = 20000000;
static volatile uint64_t ticks;

static int consume(void *arg)
{
	struct rte_mbuf *m[BURST];
	uint64_t got = 0, t0 = 0;
	(void)arg;
	while (got < packets) {
		unsigned n = rte_ring_sc_dequeue_burst(ring, (void **)m, BURST, NULL);
		if (n == 0)
			continue;
		if (got == 0)
			t0 = rte_rdtsc();
		rte_pktmbuf_free_bulk(m, n);
		got += n;
	}
	ticks = rte_rdtsc() - t0;
	return 0;
}

int main(int argc, char **argv)
{
	static const uint8_t frame[SIZE] = { 0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00 };
	struct rte_mbuf *m[BURST];
	uint64_t sent = 0;
	unsigned worker;
	int n = rte_eal_init(argc, argv);
	if (n < 0) {
		fprintf(stderr, "dpdk-pktpipe: EAL init failed\n");
		return 1;
	}
	argc -= n;
	argv += n;
	if (argc > 1)
		packets = strtoull(argv[1], NULL, 10);
	if (rte_lcore_count() != 2) {
		fprintf(stderr, "dpdk-pktpipe: give two lcores (-l A,B)\n");
		return 1;
	}
	/* Room for the ring, both lcores' caches and the bursts on the way.
	 * The cache size is DPDK's best here: with 128 (or 32) a run takes
	 * ~45-55 ticks a packet, with 256 either that or ~230, with 512 ~240. */
	pool = rte_pktmbuf_pool_create("pktpipe", 8191, 128, 0, RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id());
	ring = rte_ring_create("pktpipe", 1024, rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ);
	if (pool == NULL || ring == NULL) {
		fprintf(stderr, "dpdk-pktpipe: no mempool or ring\n");
		return 1;
	}
	worker = rte_get_next_lcore(rte_lcore_id(), 1, 0);
	rte_eal_remote_launch(consume, NULL, worker);
	while (sent < packets) {
		unsigned k = packets - sent < BURST ? (unsigned)(packets - sent) : BURST;
		unsigned i, done = 0;
		if (rte_pktmbuf_alloc_bulk(pool, m, k) != 0)
			continue;
		for (i = 0; i < k; i++)
			rte_memcpy(rte_pktmbuf_append(m[i], SIZE), frame, SIZE);
		while (done < k)
			done += rte_ring_sp_enqueue_burst(ring, (void **)&m[done], k - done, NULL);
		sent += k;
	}
	rte_eal_mp_wait_lcore();
	printf("PKTPIPE packets=%llu ticks_per_packet=%.2f\n", (unsigned long long)packets,
	       (double)ticks / (double)packets);
	rte_eal_cleanup();
	return 0;
}
