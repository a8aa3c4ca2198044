/* IMA ADPCM codec: see seb_adpcm.h. */
#include "seb_adpcm.h"

static const int16_t seb_step_table[SEB_ADPCM_MAX_STEP_INDEX + 1] = {
    7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45,
    50, 55, 60, 66, 73, 80, 88, 97, 107, 118, 130, 143, 157, 173, 190, 209, 230, 253, 279, 307,
    337, 371, 408, 449, 494, 544, 598, 658, 724, 796, 876, 963, 1060, 1166, 1282, 1411, 1552, 1707, 1878, 2066,
    2272, 2499, 2749, 3024, 3327, 3660, 4026, 4428, 4871, 5358, 5894, 6484, 7132, 7845, 8630, 9493, 10442, 11487, 12635, 13899,
    15289, 16818, 18500, 20350, 22385, 24623, 27086, 29794, 32767
};

static const int8_t seb_index_table[16] = {
    -1, -1, -1, -1, 2, 4, 6, 8, -1, -1, -1, -1, 2, 4, 6, 8
};

static void seb_adpcm_advance(seb_adpcm_state *state, uint8_t code, int32_t vpdiff)
{
    int32_t pred = state->predictor;
    int32_t index = (int32_t)state->step_index + seb_index_table[code];
    if (code & 8u) {
        pred -= vpdiff;
    } else {
        pred += vpdiff;
    }
    if (pred > 32767) {
        pred = 32767;
    } else if (pred < -32768) {
        pred = -32768;
    }
    if (index < 0) {
        index = 0;
    } else if (index > SEB_ADPCM_MAX_STEP_INDEX) {
        index = SEB_ADPCM_MAX_STEP_INDEX;
    }
    state->predictor = (int16_t)pred;
    state->step_index = (uint8_t)index;
}

void seb_adpcm_init(seb_adpcm_state *state)
{
    state->predictor = 0;
    state->step_index = 0;
}

static int32_t seb_adpcm_step(seb_adpcm_state *state)
{
    if (state->step_index > SEB_ADPCM_MAX_STEP_INDEX) {
        state->step_index = SEB_ADPCM_MAX_STEP_INDEX; /* never index past the table */
    }
    return seb_step_table[state->step_index];
}

uint8_t seb_adpcm_encode_sample(seb_adpcm_state *state, int16_t sample)
{
    int32_t step = seb_adpcm_step(state);
    int32_t diff = (int32_t)sample - state->predictor;
    int32_t vpdiff = step >> 3;
    uint8_t code = 0;

    if (diff < 0) {
        code = 8;
        diff = -diff;
    }
    if (diff >= step) {
        code |= 4u;
        diff -= step;
        vpdiff += step;
    }
    step >>= 1;
    if (diff >= step) {
        code |= 2u;
        diff -= step;
        vpdiff += step;
    }
    step >>= 1;
    if (diff >= step) {
        code |= 1u;
        vpdiff += step;
    }
    seb_adpcm_advance(state, code, vpdiff);
    return code;
}

int16_t seb_adpcm_decode_sample(seb_adpcm_state *state, uint8_t code)
{
    int32_t step = seb_adpcm_step(state);
    int32_t vpdiff = step >> 3;

    code &= 0x0Fu;
    if (code & 4u) {
        vpdiff += step;
    }
    if (code & 2u) {
        vpdiff += step >> 1;
    }
    if (code & 1u) {
        vpdiff += step >> 2;
    }
    seb_adpcm_advance(state, code, vpdiff);
    return state->predictor;
}

void seb_adpcm_encode(seb_adpcm_state *state, const int16_t *pcm, size_t n, uint8_t *out)
{
    size_t i;
    for (i = 0; i < n; i++) {
        uint8_t code = seb_adpcm_encode_sample(state, pcm[i]);
        if (i & 1u) {
            out[i >> 1] = (uint8_t)(out[i >> 1] | (uint8_t)(code << 4));
        } else {
            out[i >> 1] = code;
        }
    }
}

void seb_adpcm_decode(seb_adpcm_state *state, const uint8_t *in, size_t n, int16_t *pcm)
{
    size_t i;
    for (i = 0; i < n; i++) {
        uint8_t byte = in[i >> 1];
        pcm[i] = seb_adpcm_decode_sample(state, (uint8_t)((i & 1u) ? (byte >> 4) : (byte & 0x0Fu)));
    }
}
