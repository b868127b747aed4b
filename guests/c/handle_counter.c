/* handle_counter.c: a C app using the broker's ABI through guest-lib/include/broker.h.
 *
 * Built with: clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -I../../guest-lib/include \
 *             -o handle_counter.wasm handle_counter.c
 * The checked-in handle_counter.wasm is that build; the test suite runs it, and where clang is
 * installed it rebuilds this file and runs the fresh build through the same checks.
 */
#include "broker.h"

#define EXPORT(name) __attribute__((export_name(#name)))

static const char DATA[] = "data";

/* Opens "data", adds `delta` to the u64 at offset 0 and returns the new value (or a negative status). */
EXPORT(bump) int64_t bump(int64_t delta) {
    broker_handle_t h;
    int32_t rc = broker_region_open(DATA, sizeof(DATA) - 1, &h);
    if (rc != BROKER_OK) return rc;
    uint64_t value = 0;
    rc = broker_region_read(h, 0, &value, sizeof(value));
    if (rc == BROKER_OK) {
        value += (uint64_t)delta;
        rc = broker_region_write(h, 0, &value, sizeof(value));
    }
    broker_handle_close(h);
    return rc != BROKER_OK ? rc : (int64_t)value;
}

/* Returns the length of a read-only restriction of "data" to [8, 8+16), then tries to write through it
 * and returns that status in the high half: (status << 32) | len. */
EXPORT(restricted) int64_t restricted(void) {
    broker_handle_t h, r;
    int32_t rc = broker_region_open(DATA, sizeof(DATA) - 1, &h);
    if (rc != BROKER_OK) return rc;
    rc = broker_handle_restrict(h, BROKER_RIGHT_READ, 8, 16, &r);
    if (rc != BROKER_OK) { broker_handle_close(h); return rc; }
    broker_handle_info_t info;
    rc = broker_handle_info(r, &info);
    uint8_t byte = 1;
    int32_t write_rc = broker_region_write(r, 0, &byte, 1);
    broker_handle_close(h); /* closes r too: it was derived from h */
    if (rc != BROKER_OK) return rc;
    return ((int64_t)write_rc << 32) | (int64_t)info.len;
}

/* A forged handle: the broker must answer with an error code. */
EXPORT(forged) int32_t forged(void) {
    uint64_t value;
    return broker_region_read(0xdeadbeefu, 0, &value, sizeof(value));
}
