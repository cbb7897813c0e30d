"""Named reasons a packet is dropped. Every drop is counted under one of these."""

# Unauthenticated (global counters; never answered)
MALFORMED = "malformed"
UNKNOWN_TYPE = "unknown_type"
BAD_MAC1 = "bad_mac1"
UNKNOWN_INDEX = "unknown_index"
HANDSHAKE_FAILED = "handshake_failed"
UNKNOWN_PEER = "unknown_peer"
COOKIE_SENT = "cookie_sent"  # under load: answered with a cookie instead of a handshake
BAD_COOKIE = "bad_cookie"
RATE_LIMITED = "rate_limited"  # a cookie holder over its own handshake budget
# Authenticated, per peer
REPLAY = "replay"
DECRYPT_FAILED = "decrypt_failed"
SPOOFED_SOURCE = "spoofed_source"
STALE_TIMESTAMP = "stale_timestamp"
SESSION_EXPIRED = "session_expired"
NO_COMMON_CIPHER = "no_common_cipher"  # the peer offers no AEAD we allow (see [tunnel] cipher)
# Outbound
NO_ROUTE = "no_route"
NO_ENDPOINT = "no_endpoint"
QUEUE_FULL = "queue_full"
HANDSHAKE_TIMEOUT = "handshake_timeout"
MALFORMED_INNER = "malformed_inner"
HANDSHAKE_CAPPED = "handshake_capped"  # over the per-peer or per-destination handshake rate (anti-reflection)
# LAN (broadcast copies and Ethernet frames), per network
BROADCAST_RATE = "broadcast_rate"  # over the network's per-sender broadcast/multicast rate limit
BROADCAST_OFF = "broadcast_off"  # the network's owner turned broadcast/multicast off
SPOOFED_MAC = "spoofed_mac"  # a frame whose source MAC is not the sender's (nor a bridge's learned one)
LAN_UNKNOWN_NETWORK = "lan_unknown_network"  # a copy for a network we are not in (or of the other mode)
LAN_NOT_MEMBER = "lan_not_member"  # from a peer that is not a member of the network it names
LAN_NOT_GROUP = "lan_not_group"  # a "group" copy whose destination is unicast
LAN_NOT_FOR_US = "lan_not_for_us"  # flooded unicast for another MAC (we are not a bridge)
LAN_MALFORMED = "lan_malformed"
