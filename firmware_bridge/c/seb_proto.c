/* stethoedge bridge protocol v1: frame writer, message encoders, receiver. See seb_proto.h. */
#include "seb_proto.h"

/* ---------------------------------------------------------------- frame writer */

static void seb_cobs_byte(seb_frame_writer *w, uint8_t b)
{
    /* Streaming COBS: the open block's code byte is back-patched when the block closes. We know
     * how many frame bytes are left, so no empty block is opened after a final full one. */
    w->left--;
    if (b == 0u) {
        w->out[w->code_pos] = w->code;
        w->code = 1;
        w->code_pos = w->pos++;
    } else {
        w->out[w->pos++] = b;
        w->code++;
        if (w->code == 0xFFu) {
            w->out[w->code_pos] = w->code;
            w->code = 1;
            if (w->left > 0u) {
                w->code_pos = w->pos++;
            } else {
                w->open = 0;
            }
        }
    }
}

static void seb_writer_byte(seb_frame_writer *w, uint8_t b, int crc)
{
    if (w->error) {
        return;
    }
    /* A byte costs at most 2 output bytes (itself and a new code byte). */
    if (w->left == 0u || w->pos + 2u > w->cap) {
        w->error = 1;
        return;
    }
    if (crc) {
        w->crc = seb_crc32_update(w->crc, &b, 1u);
    }
    seb_cobs_byte(w, b);
}

int seb_frame_begin(seb_frame_writer *w, uint8_t *out, size_t cap, uint8_t type, uint16_t seq,
                    uint32_t timestamp_us, uint16_t payload_len)
{
    uint8_t header[SEB_HEADER_SIZE];
    size_t i;

    w->out = out;
    w->cap = cap;
    w->pos = 1;
    w->code_pos = 0;
    w->code = 1;
    w->open = 1;
    w->crc = 0u;
    w->left = (size_t)SEB_HEADER_SIZE + payload_len + SEB_CRC_SIZE;
    w->error = (uint8_t)(out == NULL || payload_len > SEB_MAX_PAYLOAD || cap < SEB_WIRE_SIZE(0u));
    if (w->error) {
        return -1;
    }
    header[0] = (uint8_t)SEB_PROTOCOL_VERSION;
    header[1] = type;
    header[2] = (uint8_t)(seq & 0xFFu);
    header[3] = (uint8_t)(seq >> 8);
    header[4] = (uint8_t)(timestamp_us & 0xFFu);
    header[5] = (uint8_t)((timestamp_us >> 8) & 0xFFu);
    header[6] = (uint8_t)((timestamp_us >> 16) & 0xFFu);
    header[7] = (uint8_t)(timestamp_us >> 24);
    header[8] = (uint8_t)(payload_len & 0xFFu);
    header[9] = (uint8_t)(payload_len >> 8);
    for (i = 0; i < SEB_HEADER_SIZE; i++) {
        seb_writer_byte(w, header[i], 1);
    }
    return w->error ? -1 : 0;
}

void seb_frame_put(seb_frame_writer *w, const uint8_t *data, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        /* The CRC's own bytes must not be reachable through put: keep 4 bytes for it. */
        if (w->left <= SEB_CRC_SIZE) {
            w->error = 1;
            return;
        }
        seb_writer_byte(w, data[i], 1);
    }
}

void seb_frame_put_u8(seb_frame_writer *w, uint8_t v)
{
    seb_frame_put(w, &v, 1u);
}

void seb_frame_put_u16(seb_frame_writer *w, uint16_t v)
{
    uint8_t b[2];
    b[0] = (uint8_t)(v & 0xFFu);
    b[1] = (uint8_t)(v >> 8);
    seb_frame_put(w, b, 2u);
}

void seb_frame_put_u32(seb_frame_writer *w, uint32_t v)
{
    uint8_t b[4];
    b[0] = (uint8_t)(v & 0xFFu);
    b[1] = (uint8_t)((v >> 8) & 0xFFu);
    b[2] = (uint8_t)((v >> 16) & 0xFFu);
    b[3] = (uint8_t)(v >> 24);
    seb_frame_put(w, b, 4u);
}

size_t seb_frame_end(seb_frame_writer *w)
{
    uint32_t crc = w->crc;
    size_t i;

    if (w->error || w->left != SEB_CRC_SIZE) {
        return 0;
    }
    for (i = 0; i < SEB_CRC_SIZE; i++) {
        seb_writer_byte(w, (uint8_t)((crc >> (8u * i)) & 0xFFu), 0);
    }
    if (w->error || w->pos >= w->cap) {
        return 0;
    }
    if (w->open) {
        w->out[w->code_pos] = w->code;
    }
    w->out[w->pos++] = 0u;
    return w->pos;
}

/* ---------------------------------------------------------------- device -> host */

static size_t seb_strlen_max(const char *s, size_t max)
{
    size_t n = 0;
    if (s == NULL) {
        return 0;
    }
    while (n <= max && s[n] != '\0') {
        n++;
    }
    return n;
}

size_t seb_encode_hello(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, const seb_hello *hello)
{
    seb_frame_writer w;
    size_t id_len = seb_strlen_max(hello->device_id, SEB_MAX_STRING);
    size_t fw_len = seb_strlen_max(hello->firmware_version, SEB_MAX_STRING);
    size_t i;
    uint16_t len;

    if (id_len > SEB_MAX_STRING || fw_len > SEB_MAX_STRING || hello->n_rates == 0u ||
        hello->n_rates > SEB_MAX_HELLO_RATES || hello->sample_rates == NULL) {
        return 0;
    }
    len = (uint16_t)(8u + 4u * hello->n_rates + 1u + id_len + 1u + fw_len);
    if (seb_frame_begin(&w, out, cap, SEB_MSG_HELLO, seq, timestamp_us, len) != 0) {
        return 0;
    }
    seb_frame_put_u8(&w, hello->formats);
    seb_frame_put_u8(&w, hello->n_rates);
    seb_frame_put_u16(&w, hello->max_rx_payload);
    seb_frame_put_u32(&w, hello->boot_id);
    for (i = 0; i < hello->n_rates; i++) {
        seb_frame_put_u32(&w, hello->sample_rates[i]);
    }
    seb_frame_put_u8(&w, (uint8_t)id_len);
    seb_frame_put(&w, (const uint8_t *)hello->device_id, id_len);
    seb_frame_put_u8(&w, (uint8_t)fw_len);
    seb_frame_put(&w, (const uint8_t *)hello->firmware_version, fw_len);
    return seb_frame_end(&w);
}

static void seb_put_audio_header(seb_frame_writer *w, uint32_t sample_index, uint32_t sample_rate,
                                 uint8_t format, uint8_t flags, uint16_t n)
{
    seb_frame_put_u32(w, sample_index);
    seb_frame_put_u32(w, sample_rate);
    seb_frame_put_u8(w, format);
    seb_frame_put_u8(w, flags);
    seb_frame_put_u16(w, n);
}

size_t seb_encode_audio_pcm16(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us,
                              uint32_t sample_index, uint32_t sample_rate, uint8_t flags,
                              const int16_t *pcm, uint16_t n)
{
    seb_frame_writer w;
    uint16_t i;

    if (n > SEB_PCM16_MAX_SAMPLES || sample_rate == 0u || (n > 0u && pcm == NULL)) {
        return 0;
    }
    if (seb_frame_begin(&w, out, cap, SEB_MSG_AUDIO, seq, timestamp_us,
                        (uint16_t)(SEB_AUDIO_HEADER_SIZE + 2u * n)) != 0) {
        return 0;
    }
    seb_put_audio_header(&w, sample_index, sample_rate, SEB_FMT_PCM16, flags, n);
    for (i = 0; i < n; i++) {
        seb_frame_put_u16(&w, (uint16_t)pcm[i]); /* two's complement, little-endian */
    }
    return seb_frame_end(&w);
}

size_t seb_encode_audio_adpcm(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us,
                              uint32_t sample_index, uint32_t sample_rate, uint8_t flags,
                              seb_adpcm_state *state, const int16_t *pcm, uint16_t n)
{
    seb_frame_writer w;
    seb_adpcm_state s = *state;
    uint16_t i;
    uint8_t byte = 0;
    size_t len;

    if (n > SEB_ADPCM_MAX_SAMPLES || sample_rate == 0u || state->step_index > SEB_ADPCM_MAX_STEP_INDEX ||
        (n > 0u && pcm == NULL)) {
        return 0;
    }
    if (seb_frame_begin(&w, out, cap, SEB_MSG_AUDIO, seq, timestamp_us,
                        (uint16_t)(SEB_AUDIO_HEADER_SIZE + SEB_ADPCM_STATE_SIZE + (n + 1u) / 2u)) != 0) {
        return 0;
    }
    seb_put_audio_header(&w, sample_index, sample_rate, SEB_FMT_IMA_ADPCM, flags, n);
    seb_frame_put_u16(&w, (uint16_t)s.predictor);
    seb_frame_put_u8(&w, s.step_index);
    seb_frame_put_u8(&w, 0u);
    for (i = 0; i < n; i++) {
        uint8_t code = seb_adpcm_encode_sample(&s, pcm[i]);
        if (i & 1u) {
            seb_frame_put_u8(&w, (uint8_t)(byte | (uint8_t)(code << 4)));
        } else {
            byte = code;
        }
    }
    if (n & 1u) {
        seb_frame_put_u8(&w, byte);
    }
    len = seb_frame_end(&w);
    if (len != 0u) {
        *state = s;
    }
    return len;
}

size_t seb_encode_heartbeat(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, const seb_heartbeat *hb)
{
    seb_frame_writer w;
    if (seb_frame_begin(&w, out, cap, SEB_MSG_HEARTBEAT, seq, timestamp_us, SEB_HEARTBEAT_SIZE) != 0) {
        return 0;
    }
    seb_frame_put_u32(&w, hb->uptime_ms);
    seb_frame_put_u32(&w, hb->next_sample_index);
    seb_frame_put_u32(&w, hb->dropped_samples);
    seb_frame_put_u8(&w, hb->state);
    seb_frame_put_u8(&w, 0u);
    return seb_frame_end(&w);
}

size_t seb_encode_error(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, uint16_t code, const char *text)
{
    seb_frame_writer w;
    size_t text_len = seb_strlen_max(text, SEB_MAX_ERROR_TEXT);
    if (text_len > SEB_MAX_ERROR_TEXT) {
        text_len = SEB_MAX_ERROR_TEXT; /* truncate (may cut a UTF-8 sequence; receivers replace it) */
    }
    if (seb_frame_begin(&w, out, cap, SEB_MSG_ERROR, seq, timestamp_us, (uint16_t)(2u + text_len)) != 0) {
        return 0;
    }
    seb_frame_put_u16(&w, code);
    seb_frame_put(&w, (const uint8_t *)text, text_len);
    return seb_frame_end(&w);
}

size_t seb_encode_ack(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, uint16_t acked_seq,
                      uint8_t acked_type, uint8_t status)
{
    seb_frame_writer w;
    if (seb_frame_begin(&w, out, cap, SEB_MSG_ACK, seq, timestamp_us, SEB_ACK_SIZE) != 0) {
        return 0;
    }
    seb_frame_put_u16(&w, acked_seq);
    seb_frame_put_u8(&w, acked_type);
    seb_frame_put_u8(&w, status);
    return seb_frame_end(&w);
}

size_t seb_encode_control(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, const seb_control *c)
{
    seb_frame_writer w;
    if (seb_frame_begin(&w, out, cap, SEB_MSG_CONTROL, seq, timestamp_us, SEB_CONTROL_SIZE) != 0) {
        return 0;
    }
    seb_frame_put_u8(&w, c->command);
    seb_frame_put_u8(&w, c->filter_mode);
    seb_frame_put_u16(&w, (uint16_t)c->gain_cdb);
    seb_frame_put_u32(&w, c->sample_rate);
    seb_frame_put_u8(&w, c->format);
    seb_frame_put_u8(&w, 0u);
    seb_frame_put_u16(&w, c->frame_samples);
    return seb_frame_end(&w);
}

size_t seb_encode_result(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, const seb_result *r)
{
    seb_frame_writer w;
    if (seb_frame_begin(&w, out, cap, SEB_MSG_RESULT, seq, timestamp_us, SEB_RESULT_SIZE) != 0) {
        return 0;
    }
    seb_frame_put_u16(&w, r->label_index);
    seb_frame_put_u16(&w, r->confidence_q16);
    seb_frame_put_u32(&w, r->window_ms);
    return seb_frame_end(&w);
}

/* ---------------------------------------------------------------- receiver */

enum { SEB_RX_IDLE = 0, SEB_RX_IN_FRAME = 1, SEB_RX_DISCARD = 2 };

static uint16_t seb_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8)); /* no signed shift, even with 16-bit int */
}

/* Two's-complement reinterpretation without implementation-defined conversions. */
static int16_t seb_s16(uint16_t v)
{
    return v < 0x8000u ? (int16_t)v : (int16_t)((int32_t)v - 65536);
}

static uint32_t seb_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

void seb_rx_init(seb_rx *rx)
{
    rx->len = 0;
    rx->seg_bytes = 0;
    rx->block_left = 0;
    rx->block_code = 0;
    rx->state = SEB_RX_IDLE;
    rx->stats.frames = 0;
    rx->stats.crc_errors = 0;
    rx->stats.malformed = 0;
    rx->stats.oversize = 0;
    rx->stats.bad_version = 0;
    rx->stats.garbage_bytes = 0;
}

static void seb_rx_reject(seb_rx *rx, uint32_t *counter)
{
    (*counter)++;
    rx->state = SEB_RX_DISCARD;
}

/* Append one decoded byte; switches to DISCARD when the frame cannot be accepted. */
static void seb_rx_store(seb_rx *rx, uint8_t b)
{
    if (rx->len >= sizeof rx->buf) {
        seb_rx_reject(rx, &rx->stats.oversize);
        return;
    }
    rx->buf[rx->len++] = b;
    if (rx->len == SEB_HEADER_SIZE) {
        /* Check the length field before the payload arrives: nothing is sized from it. */
        uint16_t payload_len = seb_le16(&rx->buf[8]);
        if (payload_len > SEB_RX_MAX_PAYLOAD || payload_len > SEB_MAX_PAYLOAD) {
            seb_rx_reject(rx, &rx->stats.oversize);
        }
    }
}

static int seb_rx_finish(seb_rx *rx, seb_frame *frame)
{
    size_t n = rx->len;
    uint16_t payload_len;

    if (rx->block_left != 0u || n < SEB_HEADER_SIZE + SEB_CRC_SIZE) {
        rx->stats.malformed++;
        return 0;
    }
    if (seb_crc32(rx->buf, n - SEB_CRC_SIZE) != seb_le32(&rx->buf[n - SEB_CRC_SIZE])) {
        rx->stats.crc_errors++;
        return 0;
    }
    if (rx->buf[0] != SEB_PROTOCOL_VERSION) {
        rx->stats.bad_version++;
        return 0;
    }
    payload_len = seb_le16(&rx->buf[8]);
    if ((size_t)SEB_HEADER_SIZE + payload_len + SEB_CRC_SIZE != n) {
        rx->stats.malformed++;
        return 0;
    }
    frame->version = rx->buf[0];
    frame->type = rx->buf[1];
    frame->seq = seb_le16(&rx->buf[2]);
    frame->timestamp_us = seb_le32(&rx->buf[4]);
    frame->payload_len = payload_len;
    frame->payload = &rx->buf[SEB_HEADER_SIZE];
    rx->stats.frames++;
    return 1;
}

int seb_rx_feed(seb_rx *rx, uint8_t byte, seb_frame *frame)
{
    int done = 0;

    if (byte == 0u) {
        if (rx->state == SEB_RX_IN_FRAME) {
            done = seb_rx_finish(rx, frame);
            if (!done) {
                rx->stats.garbage_bytes += rx->seg_bytes;
            }
        } else if (rx->state == SEB_RX_DISCARD) {
            rx->stats.garbage_bytes += rx->seg_bytes;
        }
        rx->state = SEB_RX_IDLE;
        rx->len = 0;
        rx->seg_bytes = 0;
        rx->block_left = 0;
        return done;
    }
    if (rx->seg_bytes < 0xFFFFFFFFu) {
        rx->seg_bytes++;
    }
    switch (rx->state) {
    case SEB_RX_IDLE:
        rx->state = SEB_RX_IN_FRAME;
        rx->block_code = byte;
        rx->block_left = (uint8_t)(byte - 1u);
        break;
    case SEB_RX_IN_FRAME:
        if (rx->block_left > 0u) {
            rx->block_left--;
            seb_rx_store(rx, byte);
        } else {
            if (rx->block_code != 0xFFu) {
                seb_rx_store(rx, 0u); /* the zero this block boundary stands for */
            }
            rx->block_code = byte;
            rx->block_left = (uint8_t)(byte - 1u);
        }
        break;
    default: /* SEB_RX_DISCARD: wait for the delimiter */
        break;
    }
    return 0;
}

int seb_parse_control(const seb_frame *frame, seb_control *out)
{
    const uint8_t *p = frame->payload;
    if (frame->type != SEB_MSG_CONTROL || frame->payload_len < SEB_CONTROL_SIZE) {
        return -1;
    }
    out->command = p[0];
    out->filter_mode = p[1];
    out->gain_cdb = seb_s16(seb_le16(&p[2]));
    out->sample_rate = seb_le32(&p[4]);
    out->format = p[8];
    out->frame_samples = seb_le16(&p[10]);
    if (out->command < SEB_CMD_START || out->command > SEB_CMD_REQUEST_HELLO) {
        return -1;
    }
    if (out->command == SEB_CMD_SET_FILTER && out->filter_mode > SEB_FILTER_EXTENDED) {
        return -1;
    }
    return 0;
}

int seb_parse_result(const seb_frame *frame, seb_result *out)
{
    const uint8_t *p = frame->payload;
    if (frame->type != SEB_MSG_RESULT || frame->payload_len < SEB_RESULT_SIZE) {
        return -1;
    }
    out->label_index = seb_le16(&p[0]);
    out->confidence_q16 = seb_le16(&p[2]);
    out->window_ms = seb_le32(&p[4]);
    return 0;
}

int seb_parse_ack(const seb_frame *frame, seb_ack *out)
{
    const uint8_t *p = frame->payload;
    if (frame->type != SEB_MSG_ACK || frame->payload_len < SEB_ACK_SIZE) {
        return -1;
    }
    out->acked_seq = seb_le16(&p[0]);
    out->acked_type = p[2];
    out->status = p[3];
    return 0;
}
