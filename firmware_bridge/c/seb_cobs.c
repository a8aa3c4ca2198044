/* COBS encoder/decoder: see seb_cobs.h. */
#include "seb_cobs.h"

size_t seb_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t dst_cap)
{
    size_t out = 1;       /* next write position; dst[0] is the first code byte */
    size_t code_pos = 0;  /* where the current block's code goes */
    uint8_t code = 1;     /* 1 + data bytes in the current block */
    size_t i;

    if (dst_cap == 0u) {
        return 0;
    }
    for (i = 0; i < len; i++) {
        if (src[i] == 0u) {
            dst[code_pos] = code;
            code = 1;
            code_pos = out;
            if (out >= dst_cap) {
                return 0;
            }
            out++;
        } else {
            if (out >= dst_cap) {
                return 0;
            }
            dst[out++] = src[i];
            code++;
            if (code == 0xFFu) {
                dst[code_pos] = code;
                code = 1;
                if (i + 1u == len) {
                    return out; /* canonical: no empty block after a final full one */
                }
                code_pos = out;
                if (out >= dst_cap) {
                    return 0;
                }
                out++;
            }
        }
    }
    dst[code_pos] = code;
    return out;
}

size_t seb_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t dst_cap)
{
    size_t in = 0;
    size_t out = 0;

    while (in < len) {
        uint8_t code = src[in];
        size_t end;
        if (code == 0u) {
            return SEB_COBS_ERROR;
        }
        end = in + code;
        if (end > len) {
            return SEB_COBS_ERROR;
        }
        for (in++; in < end; in++) {
            if (src[in] == 0u || out >= dst_cap) {
                return SEB_COBS_ERROR;
            }
            dst[out++] = src[in];
        }
        if (in < len && code != 0xFFu) {
            if (out >= dst_cap) {
                return SEB_COBS_ERROR;
            }
            dst[out++] = 0u;
        }
    }
    return out;
}
