/*
 * IMA ADPCM (4 bits per 16-bit sample) for stethoedge bridge AUDIO frames.
 *
 * Bit-exact with the IMA/DVI reference algorithm (see PROTOCOL.md for the arithmetic). Codes are
 * packed two per byte, the earlier sample in the low nibble; an odd count leaves the last high
 * nibble 0. Each AUDIO frame carries the state *before* its first sample.
 */
#ifndef SEB_ADPCM_H
#define SEB_ADPCM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SEB_ADPCM_MAX_STEP_INDEX 88

typedef struct {
    int16_t predictor;  /* last reconstructed sample */
    uint8_t step_index; /* 0..88 (larger values are treated as 88) */
} seb_adpcm_state;

/* Reset to predictor 0, step index 0. */
void seb_adpcm_init(seb_adpcm_state *state);

/* Encode one sample; returns its 4-bit code and advances the state. */
uint8_t seb_adpcm_encode_sample(seb_adpcm_state *state, int16_t sample);

/* Decode one 4-bit code; returns the sample and advances the state. */
int16_t seb_adpcm_decode_sample(seb_adpcm_state *state, uint8_t code);

/* Encode n samples into (n + 1) / 2 bytes at out. */
void seb_adpcm_encode(seb_adpcm_state *state, const int16_t *pcm, size_t n, uint8_t *out);

/* Decode n samples from (n + 1) / 2 bytes at in. */
void seb_adpcm_decode(seb_adpcm_state *state, const uint8_t *in, size_t n, int16_t *pcm);

#ifdef __cplusplus
}
#endif

#endif /* SEB_ADPCM_H */
