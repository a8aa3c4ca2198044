/*
 * bridge_vectors: command-line access to the C reference, for cross-checking it against the
 * Python host (tests/test_bridge_c.py) or another implementation. Binary data on stdin/stdout.
 *
 *   bridge_vectors crc                       stdin -> "xxxxxxxx" (CRC-32, hex)
 *   bridge_vectors cobs-encode               stdin -> COBS(stdin)
 *   bridge_vectors cobs-decode               stdin (one frame, no delimiter) -> decoded, exit 1 if invalid
 *   bridge_vectors adpcm-encode PRED INDEX   int16 LE samples -> packed codes; "PRED INDEX" after, on stderr
 *   bridge_vectors adpcm-decode N PRED INDEX packed codes -> N int16 LE samples
 *   bridge_vectors messages                  one wire frame of every message type, fixed contents
 *   bridge_vectors decode                    wire bytes -> one line per received frame + a stats line
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seb_proto.h"

#define MAX_INPUT (8u * 1024u * 1024u)

static uint8_t input[MAX_INPUT];
static uint8_t output[2u * MAX_INPUT];
static int16_t pcm[MAX_INPUT / 2u];

static size_t read_stdin(void)
{
    size_t n = fread(input, 1, sizeof input, stdin);
    if (!feof(stdin)) {
        fputs("bridge_vectors: input too large\n", stderr);
        exit(2);
    }
    return n;
}

static long arg_long(const char *s)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0') {
        fprintf(stderr, "bridge_vectors: bad number '%s'\n", s);
        exit(2);
    }
    return v;
}

static void write_out(const uint8_t *p, size_t n)
{
    if (fwrite(p, 1, n, stdout) != n) {
        exit(3);
    }
}

static void emit(size_t len)
{
    if (len == 0u) {
        fputs("bridge_vectors: encoder failed\n", stderr);
        exit(1);
    }
    write_out(output, len);
}

static int cmd_messages(void)
{
    static const uint32_t rates[2] = {16000u, 8000u};
    static const int16_t samples[5] = {0, 1000, -1000, 32767, -32768};
    seb_hello h;
    seb_heartbeat hb;
    seb_control c;
    seb_result r;
    seb_adpcm_state st;
    uint16_t seq = 100;
    const size_t cap = sizeof output;

    h.device_id = "steth-01";
    h.firmware_version = "1.2.3";
    h.sample_rates = rates;
    h.n_rates = 2;
    h.formats = SEB_FMT_BIT_PCM16 | SEB_FMT_BIT_IMA_ADPCM;
    h.max_rx_payload = 64;
    h.boot_id = 0xA5A5A5A5u;
    emit(seb_encode_hello(output, cap, seq++, 1000u, &h));
    emit(seb_encode_audio_pcm16(output, cap, seq++, 2000u, 48000u, 16000u, 0u, samples, 5));
    st.predictor = -1234;
    st.step_index = 40;
    emit(seb_encode_audio_adpcm(output, cap, seq++, 3000u, 0xFFFFFFF0u, 16000u, SEB_AUDIO_FLAG_LAST, &st, samples, 5));
    hb.uptime_ms = 123456u;
    hb.next_sample_index = 7u;
    hb.dropped_samples = 3u;
    hb.state = SEB_STATE_STREAMING;
    emit(seb_encode_heartbeat(output, cap, seq++, 4000u, &hb));
    emit(seb_encode_error(output, cap, seq++, 5000u, SEB_ERR_TX_OVERFLOW, "tx buffer overflow"));
    emit(seb_encode_ack(output, cap, seq++, 6000u, 65535u, SEB_MSG_CONTROL, SEB_OK));
    c.command = SEB_CMD_START;
    c.filter_mode = SEB_FILTER_DIAPHRAGM;
    c.gain_cdb = -350;
    c.sample_rate = 16000u;
    c.format = SEB_FMT_IMA_ADPCM;
    c.frame_samples = 512u;
    emit(seb_encode_control(output, cap, seq++, 7000u, &c));
    r.label_index = 3;
    r.confidence_q16 = 52428u;
    r.window_ms = 2500u;
    emit(seb_encode_result(output, cap, seq++, 0xFFFFFFFFu, &r));
    return 0;
}

static int cmd_decode(void)
{
    size_t n = read_stdin();
    size_t i;
    seb_rx rx;
    seb_rx_init(&rx);
    for (i = 0; i < n; i++) {
        seb_frame f;
        seb_control c;
        seb_result r;
        seb_ack a;
        if (!seb_rx_feed(&rx, input[i], &f)) {
            continue;
        }
        if (seb_parse_control(&f, &c) == 0) {
            printf("CONTROL seq=%u ts=%lu command=%u filter=%u gain_cdb=%d rate=%lu format=%u frame_samples=%u\n",
                   (unsigned)f.seq, (unsigned long)f.timestamp_us, (unsigned)c.command, (unsigned)c.filter_mode,
                   (int)c.gain_cdb, (unsigned long)c.sample_rate, (unsigned)c.format, (unsigned)c.frame_samples);
        } else if (seb_parse_result(&f, &r) == 0) {
            printf("RESULT seq=%u ts=%lu label=%u confidence_q16=%u window_ms=%lu\n", (unsigned)f.seq,
                   (unsigned long)f.timestamp_us, (unsigned)r.label_index, (unsigned)r.confidence_q16,
                   (unsigned long)r.window_ms);
        } else if (seb_parse_ack(&f, &a) == 0) {
            printf("ACK seq=%u ts=%lu acked_seq=%u acked_type=%u status=%u\n", (unsigned)f.seq,
                   (unsigned long)f.timestamp_us, (unsigned)a.acked_seq, (unsigned)a.acked_type, (unsigned)a.status);
        } else {
            printf("OTHER seq=%u type=%u len=%u\n", (unsigned)f.seq, (unsigned)f.type, (unsigned)f.payload_len);
        }
    }
    printf("STATS frames=%lu crc_errors=%lu malformed=%lu oversize=%lu bad_version=%lu garbage_bytes=%lu\n",
           (unsigned long)rx.stats.frames, (unsigned long)rx.stats.crc_errors, (unsigned long)rx.stats.malformed,
           (unsigned long)rx.stats.oversize, (unsigned long)rx.stats.bad_version,
           (unsigned long)rx.stats.garbage_bytes);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (strcmp(cmd, "crc") == 0) {
        size_t n = read_stdin();
        printf("%08lx\n", (unsigned long)seb_crc32(input, n));
        return 0;
    }
    if (strcmp(cmd, "cobs-encode") == 0) {
        size_t n = read_stdin();
        size_t m = seb_cobs_encode(input, n, output, sizeof output);
        if (m == 0u) {
            return 1;
        }
        write_out(output, m);
        return 0;
    }
    if (strcmp(cmd, "cobs-decode") == 0) {
        size_t n = read_stdin();
        size_t m = seb_cobs_decode(input, n, output, sizeof output);
        if (m == SEB_COBS_ERROR) {
            return 1;
        }
        write_out(output, m);
        return 0;
    }
    if (strcmp(cmd, "adpcm-encode") == 0 && argc == 4) {
        seb_adpcm_state st;
        size_t n = read_stdin() / 2u;
        size_t i;
        st.predictor = (int16_t)arg_long(argv[2]);
        st.step_index = (uint8_t)arg_long(argv[3]);
        for (i = 0; i < n; i++) {
            pcm[i] = (int16_t)(uint16_t)(input[2 * i] | ((uint16_t)input[2 * i + 1] << 8));
        }
        seb_adpcm_encode(&st, pcm, n, output);
        write_out(output, (n + 1u) / 2u);
        fprintf(stderr, "%d %u\n", (int)st.predictor, (unsigned)st.step_index);
        return 0;
    }
    if (strcmp(cmd, "adpcm-decode") == 0 && argc == 5) {
        seb_adpcm_state st;
        size_t want = (size_t)arg_long(argv[2]);
        size_t n = read_stdin();
        size_t i;
        if (want > sizeof pcm / sizeof pcm[0] || (want + 1u) / 2u > n) {
            return 1;
        }
        st.predictor = (int16_t)arg_long(argv[3]);
        st.step_index = (uint8_t)arg_long(argv[4]);
        seb_adpcm_decode(&st, input, want, pcm);
        for (i = 0; i < want; i++) {
            output[2 * i] = (uint8_t)((uint16_t)pcm[i] & 0xFFu);
            output[2 * i + 1] = (uint8_t)((uint16_t)pcm[i] >> 8);
        }
        write_out(output, 2u * want);
        return 0;
    }
    if (strcmp(cmd, "messages") == 0) {
        return cmd_messages();
    }
    if (strcmp(cmd, "decode") == 0) {
        return cmd_decode();
    }
    fputs("usage: bridge_vectors crc|cobs-encode|cobs-decode|adpcm-encode P I|adpcm-decode N P I|messages|decode\n",
          stderr);
    return 2;
}
