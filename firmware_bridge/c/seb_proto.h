/*
 * stethoedge bridge protocol, version 1: frame encoder and decoder for firmware.
 *
 * Portable C99, no dynamic memory, no OS calls: the caller owns every buffer and moves the
 * bytes (UART DMA, USB CDC, BLE). See PROTOCOL.md for the wire format.
 *
 * Frame on the wire: COBS(header | payload | crc32) 0x00
 *   header (10 bytes, little-endian): version u8, type u8, seq u16, timestamp_us u32, payload_len u16
 *   crc32: CRC-32/ISO-HDLC over header + payload, little-endian
 *
 * Sending (device -> host): call one seb_encode_*() function per message; it writes the complete
 * wire frame (delimiter included) into out[0..cap) and returns its length, or 0 if the
 * arguments are invalid or cap is too small (SEB_WIRE_SIZE(payload_len) always suffices).
 * Your own message types can be written with seb_frame_begin / seb_frame_put* / seb_frame_end.
 *
 * Receiving (host -> device): feed every received byte to seb_rx_feed(); it returns 1 when a
 * valid frame is complete, then parse it with seb_parse_control / _result / _ack.
 */
#ifndef SEB_PROTO_H
#define SEB_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "seb_adpcm.h"
#include "seb_cobs.h"
#include "seb_crc32.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SEB_PROTOCOL_VERSION 1u
#define SEB_HEADER_SIZE 10u
#define SEB_CRC_SIZE 4u
#define SEB_MAX_PAYLOAD 4096u
/* Bytes on the wire for a payload of n bytes, worst case, delimiter included. */
#define SEB_WIRE_SIZE(n) (SEB_COBS_MAX_ENCODED(SEB_HEADER_SIZE + (n) + SEB_CRC_SIZE) + 1u)
#define SEB_MAX_WIRE_FRAME SEB_WIRE_SIZE(SEB_MAX_PAYLOAD) /* 4128 */

/* Largest host->device payload this device accepts (announced in HELLO). CONTROL is 12 bytes,
 * RESULT 8, ACK 4; override with -DSEB_RX_MAX_PAYLOAD=... (at most SEB_MAX_PAYLOAD). */
#ifndef SEB_RX_MAX_PAYLOAD
#define SEB_RX_MAX_PAYLOAD 64u
#endif

/* Message types (header byte 1). */
enum {
    SEB_MSG_HELLO = 0x01,
    SEB_MSG_AUDIO = 0x02,
    SEB_MSG_HEARTBEAT = 0x03,
    SEB_MSG_ERROR = 0x04,
    SEB_MSG_ACK = 0x40,
    SEB_MSG_CONTROL = 0x81,
    SEB_MSG_RESULT = 0x82
};

/* AUDIO formats. */
enum { SEB_FMT_PCM16 = 1, SEB_FMT_IMA_ADPCM = 2 };
/* HELLO formats bitmask. */
enum { SEB_FMT_BIT_PCM16 = 0x01, SEB_FMT_BIT_IMA_ADPCM = 0x02 };
/* AUDIO flags. */
enum { SEB_AUDIO_FLAG_LAST = 0x01 };
/* CONTROL commands. */
enum {
    SEB_CMD_START = 1,
    SEB_CMD_STOP = 2,
    SEB_CMD_SET_GAIN = 3,
    SEB_CMD_SET_FILTER = 4,
    SEB_CMD_REQUEST_HELLO = 5
};
/* Filter modes. */
enum { SEB_FILTER_BELL = 0, SEB_FILTER_DIAPHRAGM = 1, SEB_FILTER_EXTENDED = 2 };
/* ERROR codes and non-zero ACK statuses. */
enum {
    SEB_OK = 0,
    SEB_ERR_UNSUPPORTED_RATE = 1,
    SEB_ERR_UNSUPPORTED_FORMAT = 2,
    SEB_ERR_BAD_COMMAND = 3,
    SEB_ERR_TX_OVERFLOW = 4,
    SEB_ERR_SENSOR_FAULT = 5,
    SEB_ERR_RX_FRAME_ERROR = 6,
    SEB_ERR_BUSY = 7,
    SEB_ERR_INTERNAL = 8
};
/* HEARTBEAT states. */
enum { SEB_STATE_IDLE = 0, SEB_STATE_STREAMING = 1 };

/* Fixed payload sizes. */
#define SEB_AUDIO_HEADER_SIZE 12u
#define SEB_ADPCM_STATE_SIZE 4u
#define SEB_HEARTBEAT_SIZE 14u
#define SEB_CONTROL_SIZE 12u
#define SEB_RESULT_SIZE 8u
#define SEB_ACK_SIZE 4u
#define SEB_MAX_STRING 64u
#define SEB_MAX_ERROR_TEXT 200u
#define SEB_MAX_HELLO_RATES 8u
#define SEB_PCM16_MAX_SAMPLES ((SEB_MAX_PAYLOAD - SEB_AUDIO_HEADER_SIZE) / 2u)                        /* 2042 */
#define SEB_ADPCM_MAX_SAMPLES ((SEB_MAX_PAYLOAD - SEB_AUDIO_HEADER_SIZE - SEB_ADPCM_STATE_SIZE) * 2u) /* 8160 */

/* ---- frame writer (streaming: header, payload bytes, CRC, COBS, delimiter) ---- */

typedef struct {
    uint8_t *out;
    size_t cap;
    size_t pos;      /* next free byte in out */
    size_t code_pos; /* position of the open COBS block's code byte */
    size_t left;     /* frame bytes (header+payload+crc) still to be written */
    uint32_t crc;    /* running CRC-32 */
    uint8_t code;    /* 1 + data bytes in the open COBS block */
    uint8_t open;    /* a COBS block is open */
    uint8_t error;   /* capacity exceeded or payload length mismatch */
} seb_frame_writer;

/* Start a frame that will carry exactly payload_len payload bytes. Returns 0 on success. */
int seb_frame_begin(seb_frame_writer *w, uint8_t *out, size_t cap, uint8_t type, uint16_t seq,
                    uint32_t timestamp_us, uint16_t payload_len);
void seb_frame_put(seb_frame_writer *w, const uint8_t *data, size_t len);
void seb_frame_put_u8(seb_frame_writer *w, uint8_t v);
void seb_frame_put_u16(seb_frame_writer *w, uint16_t v);
void seb_frame_put_u32(seb_frame_writer *w, uint32_t v);
/* Append the CRC and the delimiter. Returns the wire length, or 0 on any error. */
size_t seb_frame_end(seb_frame_writer *w);

/* ---- device -> host messages ---- */

typedef struct {
    const char *device_id;        /* UTF-8, at most SEB_MAX_STRING bytes */
    const char *firmware_version; /* UTF-8, at most SEB_MAX_STRING bytes */
    const uint32_t *sample_rates; /* 1..SEB_MAX_HELLO_RATES rates in Hz */
    uint8_t n_rates;
    uint8_t formats;          /* SEB_FMT_BIT_* mask */
    uint16_t max_rx_payload;  /* normally SEB_RX_MAX_PAYLOAD */
    uint32_t boot_id;         /* must change at every boot: random number or boot counter */
} seb_hello;

typedef struct {
    uint32_t uptime_ms;
    uint32_t next_sample_index;
    uint32_t dropped_samples;
    uint8_t state; /* SEB_STATE_* */
} seb_heartbeat;

size_t seb_encode_hello(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, const seb_hello *hello);

/* AUDIO, PCM16: n samples (0..SEB_PCM16_MAX_SAMPLES) starting at device sample sample_index. */
size_t seb_encode_audio_pcm16(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us,
                              uint32_t sample_index, uint32_t sample_rate, uint8_t flags,
                              const int16_t *pcm, uint16_t n);

/* AUDIO, IMA ADPCM: encodes n samples (0..SEB_ADPCM_MAX_SAMPLES) from *state, writes the state
 * before the first sample into the frame and leaves *state after the last one. On error (return
 * 0) *state is unchanged. */
size_t seb_encode_audio_adpcm(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us,
                              uint32_t sample_index, uint32_t sample_rate, uint8_t flags,
                              seb_adpcm_state *state, const int16_t *pcm, uint16_t n);

size_t seb_encode_heartbeat(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, const seb_heartbeat *hb);
size_t seb_encode_error(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, uint16_t code, const char *text);
size_t seb_encode_ack(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, uint16_t acked_seq,
                      uint8_t acked_type, uint8_t status);

/* ---- host -> device messages ---- */

typedef struct {
    uint8_t command;     /* SEB_CMD_* */
    uint8_t filter_mode; /* SET_FILTER */
    int16_t gain_cdb;    /* SET_GAIN, hundredths of a dB */
    uint32_t sample_rate;    /* START, 0 = default */
    uint8_t format;          /* START, 0 = default */
    uint16_t frame_samples;  /* START, 0 = default */
} seb_control;

typedef struct {
    uint16_t label_index;
    uint16_t confidence_q16; /* confidence = confidence_q16 / 65535 */
    uint32_t window_ms;
} seb_result;

typedef struct {
    uint16_t acked_seq;
    uint8_t acked_type;
    uint8_t status;
} seb_ack;

/* Encoders for the host direction too (a C host, tests). */
size_t seb_encode_control(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, const seb_control *c);
size_t seb_encode_result(uint8_t *out, size_t cap, uint16_t seq, uint32_t timestamp_us, const seb_result *r);

/* ---- receiver ---- */

typedef struct {
    uint8_t version;
    uint8_t type;
    uint16_t seq;
    uint32_t timestamp_us;
    uint16_t payload_len;
    const uint8_t *payload; /* points into the seb_rx buffer: valid until the next seb_rx_feed */
} seb_frame;

typedef struct {
    uint32_t frames;        /* valid frames returned */
    uint32_t crc_errors;    /* CRC mismatch */
    uint32_t malformed;     /* bad COBS, too short, length field disagreeing with the size */
    uint32_t oversize;      /* length field > SEB_RX_MAX_PAYLOAD, or a segment too long */
    uint32_t bad_version;   /* valid CRC, other protocol version */
    uint32_t garbage_bytes; /* bytes of rejected segments */
} seb_rx_stats;

typedef struct {
    uint8_t buf[SEB_HEADER_SIZE + SEB_RX_MAX_PAYLOAD + SEB_CRC_SIZE];
    size_t len;          /* decoded bytes in buf */
    uint32_t seg_bytes;  /* encoded bytes of the current segment */
    uint8_t block_left;  /* data bytes left in the current COBS block */
    uint8_t block_code;  /* code byte of the current COBS block */
    uint8_t state;       /* internal */
    seb_rx_stats stats;
} seb_rx;

void seb_rx_init(seb_rx *rx);
/* Feed one received byte. Returns 1 and fills *frame when it completed a valid frame, else 0.
 * Never fails: invalid input is counted in rx->stats and skipped up to the next 0x00. */
int seb_rx_feed(seb_rx *rx, uint8_t byte, seb_frame *frame);

/* Parse a received frame's payload. Return 0 on success, -1 if the type is wrong, the payload is
 * too short, or a field is out of range (unknown command). Bytes after the known fields are
 * ignored (backward-compatible extensions, PROTOCOL.md §8). */
int seb_parse_control(const seb_frame *frame, seb_control *out);
int seb_parse_result(const seb_frame *frame, seb_result *out);
int seb_parse_ack(const seb_frame *frame, seb_ack *out);

#ifdef __cplusplus
}
#endif

#endif /* SEB_PROTO_H */
