/* dispatcher: PROXY protocol v1 and v2 header parsing (haproxy's proxy-protocol.txt). Pure: no
 * I/O, no allocation, so it can be fuzzed directly. */
#ifndef DSP_WK_PP_H
#define DSP_WK_PP_H

#include <stddef.h>
#include <stdint.h>

#define WK_PP_MAX_V1 107  /* the longest legal v1 line, CRLF included */
#define WK_PP_MAX_V2 4096 /* we refuse larger v2 headers (TLVs beyond this are abuse) */

struct wk_pp_addr {
    int family;      /* AF_INET, AF_INET6, or 0 for UNKNOWN / LOCAL / non-TCP (keep peer) */
    uint8_t src[16]; /* network byte order; IPv4 in the first 4 bytes */
    uint8_t dst[16];
    uint16_t src_port; /* host byte order */
    uint16_t dst_port;
};

/* Parse a PROXY header at the start of <buf>[0, len). Returns the header length (> 0) with
 * <*out> filled, 0 when more bytes are needed, or -1 when the bytes are not a valid header (the
 * connection must be closed with nothing forwarded). */
int wk_pp_parse(const uint8_t *buf, size_t len, struct wk_pp_addr *out);

#endif
