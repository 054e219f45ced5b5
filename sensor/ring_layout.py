"""Where the kernel puts what in a TPACKET_V3 ring (linux/if_packet.h), for the compiled walk
(sensor/ring_kernel.py) and the socket (sensor/af_packet.py), which must not import numba to know it."""

# struct tpacket_block_desc: version u32 @0, offset_to_priv u32 @4, then struct tpacket_hdr_v1:
BLOCK_STATUS, BLOCK_NUM_PKTS, BLOCK_FIRST_PKT, BLOCK_LEN = 8, 12, 16, 20
BLOCK_HEADER = 48  # the descriptor with its two timestamps
# struct tpacket3_hdr: next_offset u32 @0, sec @4, nsec @8, snaplen @12, len @16, status @20, mac u16 @24;
# struct sockaddr_ll follows at 48, its sll_pkttype at 48 + 10
PKT_NEXT, PKT_SEC, PKT_NSEC, PKT_SNAPLEN, PKT_LEN, PKT_MAC, PKT_TYPE = 0, 4, 8, 12, 16, 24, 58
PKT_HEADER = 60  # bytes of header and address read for each packet
TP_STATUS_USER = 1
PACKET_OUTGOING = 4
