/*
 * CRC-32 of the stethoedge bridge protocol: CRC-32/ISO-HDLC (zlib, Ethernet, PNG).
 *
 *   width 32, poly 0x04C11DB7 (reflected 0xEDB88320), init 0xFFFFFFFF,
 *   refin = refout = true, xorout 0xFFFFFFFF, check("123456789") = 0xCBF43926.
 *
 * seb_crc32_update(crc, ...) continues a CRC: seb_crc32_update(seb_crc32(a), b) is the CRC of a
 * followed by b, and seb_crc32_update(0, ...) starts one (as zlib's crc32()).
 * Define SEB_CRC32_SMALL to use a 64-byte nibble table instead of the 1 KiB byte table.
 */
#ifndef SEB_CRC32_H
#define SEB_CRC32_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SEB_CRC32_CHECK 0xCBF43926u

uint32_t seb_crc32_update(uint32_t crc, const uint8_t *data, size_t len);
uint32_t seb_crc32(const uint8_t *data, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* SEB_CRC32_H */
