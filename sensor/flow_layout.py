"""Column layout of the live flow table (see sensor/flow_kernel.py), shared by the kernel and Python."""

# num columns
FIRST_TS, LAST_TS, CONN_START, REC_START = 0, 1, 2, 3
PKTS_A, PKTS_B, BYTES_A, BYTES_B, FLAGS_A, FLAGS_B = 4, 5, 6, 7, 8, 9
INIT_IS_A, ICMP_TYPE, ICMP_CODE, ICMP_ERROR, SYN_SEQ, RPC, LIVE = 10, 11, 12, 13, 14, 15, 16
# per-batch scratch: which batch last touched the flow, what it saw of the 5-tuple in that batch
STAMP, CLOSED_BITS, BATCH_SYN_SEQ, SEG_BATCH, DECIDED = 17, 18, 19, 20, 21
N_COLS = 22

# meta: allocation state shared with Python
META_NEXT_SLOT, META_FREE_TOP, META_LIVE = 0, 1, 2

