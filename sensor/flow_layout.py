"""Column layout of the live flow table (see sensor/flow_kernel.py), shared by the kernel and Python."""

# num columns
FIRST_TS, LAST_TS, CONN_START, REC_START = 0, 1, 2, 3
PKTS_A, PKTS_B, BYTES_A, BYTES_B, FLAGS_A, FLAGS_B = 4, 5, 6, 7, 8, 9
INIT_IS_A, ICMP_TYPE, ICMP_CODE, ICMP_ERROR, SYN_SEQ, RPC, LIVE = 10, 11, 12, 13, 14, 15, 16
# per-batch scratch: which batch last touched the flow, what it saw of the 5-tuple in that batch
STAMP, CLOSED_BITS, BATCH_SYN_SEQ, SEG_BATCH, DECIDED = 17, 18, 19, 20, 21
# per connection, kept across interim records: the ClientHello's code (sensor/app_layer.py TlsClients);
# per side, gaps between bursts of small packets (count, sum in ns, sum of squares in ns^2 stored as
# float64 bits, time of the last small packet, start of the current burst); ICMP data sizes seen (a
# 127-bit set of size % 127) and odd messages
TLS = 22
GAP_N_A, GAP_N_B, GAP_SUM_A, GAP_SUM_B, GAP_SQ_A, GAP_SQ_B, SMALL_TS_A, SMALL_TS_B = 23, 24, 25, 26, 27, 28, 29, 30
ICMP_SIZES_LO, ICMP_SIZES_HI, ICMP_ODD = 31, 32, 33
BURST_TS_A, BURST_TS_B = 34, 35
# per connection: how each side's first TCP payload starts (1 + sensor/payload_kinds.py's kind, 0: none yet)
# and who sent the first payload (1 + side; 3 + side when no SYN was seen before it: joined mid-stream)
OPEN_A, OPEN_B, FIRST_SPEAKER = 36, 37, 38
# per connection and side: the code of the host its first payload's HTTP request names (sensor/app_layer.py
# HttpHosts; 0: none)
HOST_A, HOST_B = 39, 40
# per connection and side, the timer that starts its bursts (sensor/flow_kernel.py _track_beat): the
# candidate period in microseconds << 32 | bursts on it << 16 | bursts between them; when the last one came
BEAT_A, BEAT_B, BEAT_AT_A, BEAT_AT_B = 41, 42, 43, 44
# per record: the executable headers each side sent (sensor/executables.py), side A's in bits 0-1, B's in 2-3
EXEC = 45
# per connection and side, what an acknowledgement of it may say (sensor/flow_kernel.py _acknowledges): the
# initial sequence number of its last SYN (-1: none seen) and how far past it its segments reached (the
# sequence space it sent, unwrapped)
ISN_A, ISN_B, SENT_A, SENT_B = 46, 47, 48, 49
N_COLS = 50

# meta: allocation state shared with Python
META_NEXT_SLOT, META_FREE_TOP, META_LIVE = 0, 1, 2
