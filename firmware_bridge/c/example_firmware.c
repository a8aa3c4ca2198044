/*
 * example_firmware: a stand-in for stethoscope firmware, on a POSIX machine.
 *
 * Reads a 16-bit PCM mono WAV and streams it with the stethoedge bridge protocol: one 0x00 (so
 * the host drops any partial frame), HELLO, then AUDIO frames (PCM16 or IMA ADPCM, N samples
 * each, the last one flagged LAST) with a HEARTBEAT every --heartbeat-ms of audio. Frames go to
 * stdout, a file, or a serial device (configured raw 8N1 at --baud). With --listen it also
 * decodes host frames arriving on the same line (stdin when writing to stdout): CONTROL frames
 * are applied and ACKed, RESULT and ACK frames are printed on stderr, one line each.
 *
 * Only this file uses the OS; the protocol library (seb_*.c) is plain C99 without malloc.
 *
 *   cc -std=c99 -O2 -o example_firmware example_firmware.c seb_proto.c seb_cobs.c seb_crc32.c seb_adpcm.c
 *   ./example_firmware --wav lung.wav --format adpcm --out /dev/ttyUSB0 --baud 115200 --realtime
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "seb_proto.h"

#define MAX_FRAME_SAMPLES SEB_PCM16_MAX_SAMPLES

typedef struct {
    const char *wav;
    const char *out;
    int format;
    unsigned frame_samples;
    int realtime;
    long baud;
    unsigned heartbeat_ms;
    int listen;
    int wait_start;
    unsigned linger_ms;
    unsigned start_timeout_ms;
    const char *device_id;
    const char *firmware_version;
    uint32_t boot_id;
} options;

typedef struct {
    FILE *file;
    uint32_t rate;
    uint32_t n_samples; /* samples left to read */
} wav_reader;

typedef struct {
    options opt;
    int out_fd;
    int in_fd; /* -1 when not listening */
    wav_reader wav;
    uint16_t seq;
    uint32_t sent;  /* samples sent */
    seb_adpcm_state adpcm;
    seb_rx rx;
    int started;
    int stop;
    int16_t gain_cdb;
    uint8_t filter_mode;
    struct timespec t0;
    uint8_t frame[SEB_MAX_WIRE_FRAME];
} device;

/* ------------------------------------------------------------------ utilities */

static void die(const char *what)
{
    fprintf(stderr, "example_firmware: %s\n", what);
    exit(2);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint16_t le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}

/* Device clock in microseconds, derived from the sample clock (deterministic output). */
static uint32_t clock_us(const device *d, uint32_t samples)
{
    return (uint32_t)((unsigned long long)samples * 1000000ull / d->wav.rate);
}

/* ------------------------------------------------------------------ WAV reader */

static void wav_open(wav_reader *w, const char *path)
{
    unsigned char hdr[12];
    unsigned char chunk[8];
    unsigned char fmt[40];
    int have_fmt = 0;

    w->file = fopen(path, "rb");
    if (w->file == NULL) {
        fprintf(stderr, "example_firmware: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    if (fread(hdr, 1, 12, w->file) != 12 || memcmp(hdr, "RIFF", 4) != 0 || memcmp(hdr + 8, "WAVE", 4) != 0) {
        die("not a RIFF/WAVE file");
    }
    for (;;) {
        uint32_t size;
        if (fread(chunk, 1, 8, w->file) != 8) {
            die("WAV file has no data chunk");
        }
        size = le32(chunk + 4);
        if (memcmp(chunk, "fmt ", 4) == 0) {
            uint16_t tag, channels, bits;
            size_t take = size < sizeof fmt ? size : sizeof fmt;
            if (size < 16 || fread(fmt, 1, take, w->file) != take ||
                fseek(w->file, (long)(size - take + (size & 1u)), SEEK_CUR) != 0) {
                die("WAV fmt chunk is truncated");
            }
            tag = le16(fmt);
            channels = le16(fmt + 2);
            w->rate = le32(fmt + 4);
            bits = le16(fmt + 14);
            if (tag == 0xFFFEu && size >= 26) {
                tag = le16(fmt + 24); /* WAVE_FORMAT_EXTENSIBLE: sub-format GUID starts with the tag */
            }
            if (tag != 1u || channels != 1u || bits != 16u) {
                die("WAV must be 16-bit PCM mono");
            }
            if (w->rate < 1000u || w->rate > 192000u) {
                die("WAV sample rate out of range");
            }
            have_fmt = 1;
        } else if (memcmp(chunk, "data", 4) == 0) {
            if (!have_fmt) {
                die("WAV data chunk before fmt chunk");
            }
            w->n_samples = size / 2u;
            return;
        } else if (fseek(w->file, (long)(size + (size & 1u)), SEEK_CUR) != 0) {
            die("WAV chunk is truncated");
        }
    }
}

/* Read up to n samples; returns how many were read (a short data chunk ends the stream). */
static unsigned wav_read(wav_reader *w, int16_t *pcm, unsigned n)
{
    unsigned char raw[2 * MAX_FRAME_SAMPLES];
    unsigned i, got;
    if (n > w->n_samples) {
        n = w->n_samples;
    }
    got = (unsigned)(fread(raw, 2, n, w->file));
    for (i = 0; i < got; i++) {
        pcm[i] = (int16_t)le16(raw + 2 * i);
    }
    w->n_samples = got < n ? 0u : w->n_samples - got;
    return got;
}

/* ------------------------------------------------------------------ serial line */

static speed_t baud_constant(long baud)
{
    switch (baud) {
    case 9600: return B9600;
    case 19200: return B19200;
    case 38400: return B38400;
    case 57600: return B57600;
    case 115200: return B115200;
#ifdef B230400
    case 230400: return B230400;
#endif
#ifdef B460800
    case 460800: return B460800;
#endif
#ifdef B921600
    case 921600: return B921600;
#endif
    default: return B0;
    }
}

static void configure_tty(int fd, long baud)
{
    struct termios t;
    speed_t speed = baud_constant(baud);
    if (tcgetattr(fd, &t) != 0) {
        die("tcgetattr failed on the serial device");
    }
    /* Raw 8N1, no flow control, no echo, no translation (what cfmakeraw does, in POSIX terms). */
    t.c_iflag &= (tcflag_t) ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON | IXOFF | INPCK);
    t.c_oflag &= (tcflag_t) ~OPOST;
    t.c_lflag &= (tcflag_t) ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.c_cflag &= (tcflag_t) ~(CSIZE | PARENB | CSTOPB);
    t.c_cflag |= CS8 | CREAD | CLOCAL;
    t.c_cc[VMIN] = 0;
    t.c_cc[VTIME] = 0;
    if (speed == B0) {
        die("unsupported --baud for this system");
    }
    cfsetispeed(&t, speed);
    cfsetospeed(&t, speed);
    if (tcsetattr(fd, TCSANOW, &t) != 0) {
        die("tcsetattr failed on the serial device");
    }
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                struct pollfd pfd;
                pfd.fd = fd;
                pfd.events = POLLOUT;
                pfd.revents = 0;
                (void)poll(&pfd, 1, 100);
                continue;
            }
            fprintf(stderr, "example_firmware: write failed: %s\n", strerror(errno));
            exit(3);
        }
        p += k;
        n -= (size_t)k;
    }
}

static void send_frame(device *d, size_t len)
{
    if (len == 0u) {
        die("frame encoding failed (internal error)");
    }
    write_all(d->out_fd, d->frame, len);
    d->seq++;
}

/* ------------------------------------------------------------------ host -> device */

static const char *command_name(uint8_t command)
{
    switch (command) {
    case SEB_CMD_START: return "START";
    case SEB_CMD_STOP: return "STOP";
    case SEB_CMD_SET_GAIN: return "SET_GAIN";
    case SEB_CMD_SET_FILTER: return "SET_FILTER";
    case SEB_CMD_REQUEST_HELLO: return "REQUEST_HELLO";
    default: return "?";
    }
}

static void send_hello(device *d)
{
    uint32_t rates[1];
    seb_hello h;
    rates[0] = d->wav.rate;
    h.device_id = d->opt.device_id;
    h.firmware_version = d->opt.firmware_version;
    h.sample_rates = rates;
    h.n_rates = 1;
    h.formats = SEB_FMT_BIT_PCM16 | SEB_FMT_BIT_IMA_ADPCM;
    h.max_rx_payload = SEB_RX_MAX_PAYLOAD;
    h.boot_id = d->opt.boot_id;
    send_frame(d, seb_encode_hello(d->frame, sizeof d->frame, d->seq, clock_us(d, d->sent), &h));
}

static uint8_t apply_control(device *d, const seb_control *c)
{
    switch (c->command) {
    case SEB_CMD_START:
        if (c->sample_rate != 0u && c->sample_rate != d->wav.rate) {
            return SEB_ERR_UNSUPPORTED_RATE;
        }
        if (c->format != 0u && c->format != SEB_FMT_PCM16 && c->format != SEB_FMT_IMA_ADPCM) {
            return SEB_ERR_UNSUPPORTED_FORMAT;
        }
        if (c->frame_samples > MAX_FRAME_SAMPLES) {
            return SEB_ERR_BAD_COMMAND;
        }
        if (c->format != 0u) {
            d->opt.format = c->format;
        }
        if (c->frame_samples != 0u) {
            d->opt.frame_samples = c->frame_samples;
        }
        d->started = 1;
        return SEB_OK;
    case SEB_CMD_STOP:
        d->stop = 1;
        return SEB_OK;
    case SEB_CMD_SET_GAIN:
        d->gain_cdb = c->gain_cdb; /* a real device programs its analog front end here */
        return SEB_OK;
    case SEB_CMD_SET_FILTER:
        d->filter_mode = c->filter_mode;
        return SEB_OK;
    case SEB_CMD_REQUEST_HELLO:
        send_hello(d);
        return SEB_OK;
    default:
        return SEB_ERR_BAD_COMMAND;
    }
}

static void handle_frame(device *d, const seb_frame *f)
{
    seb_control c;
    seb_result r;
    seb_ack a;
    if (f->type == SEB_MSG_CONTROL) {
        uint16_t acked = f->seq;
        uint8_t status;
        if (seb_parse_control(f, &c) != 0) {
            fprintf(stderr, "host CONTROL seq=%u invalid\n", (unsigned)f->seq);
            status = SEB_ERR_BAD_COMMAND;
        } else {
            fprintf(stderr, "host CONTROL seq=%u command=%s filter=%u gain_cdb=%d rate=%lu format=%u frame_samples=%u\n",
                    (unsigned)f->seq, command_name(c.command), (unsigned)c.filter_mode, (int)c.gain_cdb,
                    (unsigned long)c.sample_rate, (unsigned)c.format, (unsigned)c.frame_samples);
            status = apply_control(d, &c);
        }
        send_frame(d, seb_encode_ack(d->frame, sizeof d->frame, d->seq, clock_us(d, d->sent), acked,
                                     SEB_MSG_CONTROL, status));
    } else if (f->type == SEB_MSG_RESULT && seb_parse_result(f, &r) == 0) {
        fprintf(stderr, "host RESULT seq=%u label=%u confidence_q16=%u window_ms=%lu\n", (unsigned)f->seq,
                (unsigned)r.label_index, (unsigned)r.confidence_q16, (unsigned long)r.window_ms);
    } else if (f->type == SEB_MSG_ACK && seb_parse_ack(f, &a) == 0) {
        fprintf(stderr, "host ACK seq=%u acked_seq=%u acked_type=0x%02x status=%u\n", (unsigned)f->seq,
                (unsigned)a.acked_seq, (unsigned)a.acked_type, (unsigned)a.status);
    } else {
        fprintf(stderr, "host frame seq=%u type=0x%02x len=%u ignored\n", (unsigned)f->seq, (unsigned)f->type,
                (unsigned)f->payload_len);
    }
    fflush(stderr);
}

/* Wait up to timeout_s for host bytes (0: just look) and handle them. Returns 0 at end of input. */
static int poll_host(device *d, double timeout_s)
{
    struct pollfd pfd;
    uint8_t buf[256];
    ssize_t n, i;
    int ms;

    if (d->in_fd < 0) {
        if (timeout_s > 0) {
            struct timespec ts;
            ts.tv_sec = (time_t)timeout_s;
            ts.tv_nsec = (long)((timeout_s - (double)ts.tv_sec) * 1e9);
            nanosleep(&ts, NULL);
        }
        return 1;
    }
    ms = timeout_s > 0 ? (int)(timeout_s * 1000.0 + 0.999) : 0;
    pfd.fd = d->in_fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (poll(&pfd, 1, ms) <= 0) {
        return 1;
    }
    if (pfd.revents & (POLLERR | POLLNVAL)) {
        return 0;
    }
    n = read(d->in_fd, buf, sizeof buf);
    if (n < 0) {
        return errno == EINTR || errno == EAGAIN ? 1 : 0;
    }
    if (n == 0) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        seb_frame f;
        if (seb_rx_feed(&d->rx, buf[i], &f)) {
            handle_frame(d, &f);
        }
    }
    return 1;
}

/* Listen until deadline (absolute, now_s clock) or until STOP / end of input. */
static void listen_until(device *d, double deadline)
{
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0 || d->stop) {
            return;
        }
        if (!poll_host(d, left > 0.05 ? 0.05 : left)) {
            return;
        }
    }
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fputs("usage: example_firmware --wav FILE [--out PATH|-] [--format pcm16|adpcm] [--frame-samples N]\n"
          "         [--realtime] [--baud N] [--heartbeat-ms N] [--listen] [--wait-start]\n"
          "         [--linger-ms N] [--start-timeout-ms N] [--device-id S] [--firmware-version S]\n"
          "         [--boot-id N]\n",
          stderr);
    exit(2);
}

static unsigned long parse_number(const char *s, unsigned long max)
{
    char *end = NULL;
    unsigned long v;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v > max) {
        fprintf(stderr, "example_firmware: bad number '%s'\n", s);
        exit(2);
    }
    return v;
}

static void parse_args(options *o, int argc, char **argv)
{
    int i;
    o->wav = NULL;
    o->out = "-";
    o->format = SEB_FMT_PCM16;
    o->frame_samples = 256;
    o->realtime = 0;
    o->baud = 921600;
    o->heartbeat_ms = 1000;
    o->listen = 0;
    o->wait_start = 0;
    o->linger_ms = 0;
    o->start_timeout_ms = 10000;
    o->device_id = "stethoedge-example";
    o->firmware_version = "example-1.0.0";
    o->boot_id = 1; /* deterministic output; real firmware uses a random number or a boot counter */
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--realtime") == 0) {
            o->realtime = 1;
        } else if (strcmp(a, "--listen") == 0) {
            o->listen = 1;
        } else if (strcmp(a, "--wait-start") == 0) {
            o->wait_start = 1;
            o->listen = 1;
        } else if (v == NULL) {
            usage();
        } else {
            i++;
            if (strcmp(a, "--wav") == 0) {
                o->wav = v;
            } else if (strcmp(a, "--out") == 0) {
                o->out = v;
            } else if (strcmp(a, "--format") == 0) {
                if (strcmp(v, "pcm16") == 0) {
                    o->format = SEB_FMT_PCM16;
                } else if (strcmp(v, "adpcm") == 0) {
                    o->format = SEB_FMT_IMA_ADPCM;
                } else {
                    usage();
                }
            } else if (strcmp(a, "--frame-samples") == 0) {
                o->frame_samples = (unsigned)parse_number(v, MAX_FRAME_SAMPLES);
            } else if (strcmp(a, "--baud") == 0) {
                o->baud = (long)parse_number(v, 4000000ul);
            } else if (strcmp(a, "--heartbeat-ms") == 0) {
                o->heartbeat_ms = (unsigned)parse_number(v, 3600000ul);
            } else if (strcmp(a, "--linger-ms") == 0) {
                o->linger_ms = (unsigned)parse_number(v, 3600000ul);
            } else if (strcmp(a, "--start-timeout-ms") == 0) {
                o->start_timeout_ms = (unsigned)parse_number(v, 3600000ul);
            } else if (strcmp(a, "--device-id") == 0) {
                o->device_id = v;
            } else if (strcmp(a, "--firmware-version") == 0) {
                o->firmware_version = v;
            } else if (strcmp(a, "--boot-id") == 0) {
                o->boot_id = (uint32_t)parse_number(v, 0xFFFFFFFFul);
            } else {
                usage();
            }
        }
    }
    if (o->wav == NULL || o->frame_samples == 0u) {
        usage();
    }
}

static void open_output(device *d)
{
    if (strcmp(d->opt.out, "-") == 0) {
        d->out_fd = STDOUT_FILENO;
        d->in_fd = d->opt.listen ? STDIN_FILENO : -1;
        return;
    }
    d->out_fd = open(d->opt.out, (d->opt.listen ? O_RDWR : O_WRONLY | O_CREAT | O_TRUNC) | O_NOCTTY, 0644);
    if (d->out_fd < 0) {
        fprintf(stderr, "example_firmware: %s: %s\n", d->opt.out, strerror(errno));
        exit(2);
    }
    if (isatty(d->out_fd)) {
        configure_tty(d->out_fd, d->opt.baud);
    }
    d->in_fd = d->opt.listen ? d->out_fd : -1;
}

static device dev; /* static: the frame buffer is 4 KiB */

int main(int argc, char **argv)
{
    device *d = &dev;
    int16_t pcm[MAX_FRAME_SAMPLES];
    uint32_t hb_every, next_hb;
    double t0;
    static const uint8_t delimiter = 0;

    parse_args(&d->opt, argc, argv);
    wav_open(&d->wav, d->opt.wav);
    open_output(d);
    seb_rx_init(&d->rx);
    seb_adpcm_init(&d->adpcm);
    d->seq = 0;
    d->sent = 0;
    d->started = !d->opt.wait_start;

    write_all(d->out_fd, &delimiter, 1); /* resynchronise the receiver */
    send_hello(d);
    if (!d->started) {
        double deadline = now_s() + d->opt.start_timeout_ms / 1000.0;
        while (!d->started && !d->stop && now_s() < deadline) {
            if (!poll_host(d, 0.05)) {
                break;
            }
        }
        if (!d->started) {
            die("no CONTROL START from the host");
        }
    }

    hb_every = (uint32_t)((unsigned long long)d->wav.rate * d->opt.heartbeat_ms / 1000u);
    next_hb = hb_every;
    t0 = now_s();
    while (!d->stop) {
        unsigned want = d->opt.frame_samples;
        unsigned n = wav_read(&d->wav, pcm, want);
        uint8_t flags = d->wav.n_samples == 0u ? SEB_AUDIO_FLAG_LAST : 0u;
        uint32_t end = d->sent + n;
        size_t len;

        if (d->opt.realtime) {
            /* A real device sends a frame once its last sample has been captured. */
            double due = t0 + (double)end / d->wav.rate;
            while (now_s() < due && !d->stop) {
                double left = due - now_s();
                if (!poll_host(d, left > 0.05 ? 0.05 : left)) {
                    d->in_fd = -1;
                }
            }
        } else if (d->in_fd >= 0 && !poll_host(d, 0)) {
            d->in_fd = -1;
        }
        if (d->stop) {
            flags = SEB_AUDIO_FLAG_LAST; /* STOP: end the stream with this (possibly partial) frame */
        }
        if (d->opt.format == SEB_FMT_IMA_ADPCM) {
            len = seb_encode_audio_adpcm(d->frame, sizeof d->frame, d->seq, clock_us(d, end), d->sent, d->wav.rate,
                                         flags, &d->adpcm, pcm, (uint16_t)n);
        } else {
            len = seb_encode_audio_pcm16(d->frame, sizeof d->frame, d->seq, clock_us(d, end), d->sent, d->wav.rate,
                                         flags, pcm, (uint16_t)n);
        }
        send_frame(d, len);
        d->sent = end;
        if (flags & SEB_AUDIO_FLAG_LAST) {
            break;
        }
        if (hb_every > 0u && d->sent >= next_hb) {
            seb_heartbeat hb;
            hb.uptime_ms = (uint32_t)((unsigned long long)d->sent * 1000u / d->wav.rate);
            hb.next_sample_index = d->sent;
            hb.dropped_samples = 0;
            hb.state = SEB_STATE_STREAMING;
            send_frame(d, seb_encode_heartbeat(d->frame, sizeof d->frame, d->seq, clock_us(d, d->sent), &hb));
            next_hb += hb_every;
        }
    }
    if (d->in_fd >= 0 && d->opt.linger_ms > 0u) {
        listen_until(d, now_s() + d->opt.linger_ms / 1000.0);
    }
    if (d->opt.listen) {
        fprintf(stderr, "rx frames=%lu crc_errors=%lu malformed=%lu oversize=%lu bad_version=%lu garbage_bytes=%lu\n",
                (unsigned long)d->rx.stats.frames, (unsigned long)d->rx.stats.crc_errors,
                (unsigned long)d->rx.stats.malformed, (unsigned long)d->rx.stats.oversize,
                (unsigned long)d->rx.stats.bad_version, (unsigned long)d->rx.stats.garbage_bytes);
    }
    fclose(d->wav.file);
    if (d->out_fd != STDOUT_FILENO) {
        close(d->out_fd);
    }
    return 0;
}
