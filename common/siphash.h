/* dispatcher: SipHash's round (Aumasson and Bernstein), shared by the keyed hashes that use it:
 * SipHash-2-4 for basic_auth's credential tags (common/htpasswd.c) and SipHash-1-3 for the rate
 * limit table's bucket keys (shm/shm_rl.c). Each keeps its own message loop and finalization. */
#ifndef DSP_SIPHASH_H
#define DSP_SIPHASH_H

#include <stdint.h>

static inline uint64_t dsp_rotl64(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

/* One SipRound on the four state words, named by the caller. */
#define DSP_SIPROUND(v0, v1, v2, v3)                                                               \
    do {                                                                                           \
        (v0) += (v1);                                                                              \
        (v1) = dsp_rotl64((v1), 13);                                                               \
        (v1) ^= (v0);                                                                              \
        (v0) = dsp_rotl64((v0), 32);                                                               \
        (v2) += (v3);                                                                              \
        (v3) = dsp_rotl64((v3), 16);                                                               \
        (v3) ^= (v2);                                                                              \
        (v0) += (v3);                                                                              \
        (v3) = dsp_rotl64((v3), 21);                                                               \
        (v3) ^= (v0);                                                                              \
        (v2) += (v1);                                                                              \
        (v1) = dsp_rotl64((v1), 17);                                                               \
        (v1) ^= (v2);                                                                              \
        (v2) = dsp_rotl64((v2), 32);                                                               \
    } while (0)

#endif
