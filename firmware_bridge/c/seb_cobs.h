/*
 * Consistent Overhead Byte Stuffing (Cheshire & Baker 1999) for the stethoedge bridge.
 *
 * The encoding contains no 0x00 byte, so 0x00 delimits frames on the wire. Canonical form: a
 * final full block (code 0xFF) is not followed by an extra 0x01 code; decoders accept both.
 * Worst-case size: n + max(1, ceil(n / 254)) bytes (SEB_COBS_MAX_ENCODED), delimiter excluded.
 */
#ifndef SEB_COBS_H
#define SEB_COBS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SEB_COBS_MAX_ENCODED(n) ((n) + ((n) == 0u ? 1u : ((n) + 253u) / 254u))

/* Encode len bytes of src into dst (no delimiter). Returns the encoded length, or 0 if dst_cap
 * is too small. src and dst must not overlap. */
size_t seb_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t dst_cap);

/* Decode len bytes of src (one frame, no delimiter) into dst. Returns the decoded length, or
 * (size_t)-1 if src is not valid COBS (a 0x00 byte, a block running past the end) or dst_cap is
 * too small. */
size_t seb_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t dst_cap);

#define SEB_COBS_ERROR ((size_t)-1)

#ifdef __cplusplus
}
#endif

#endif /* SEB_COBS_H */
