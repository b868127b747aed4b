/* mirror_counter.c: a C app that mirrors whatever range of "data" it was granted, written from
 * guest-lib/ABI.md alone: hint pages count from the start of the handle's range, and a commit writes
 * back only the bytes this app changed.
 *
 * Built with: clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -I../../guest-lib/include \
 *             -o mirror_counter.wasm mirror_counter.c
 * The checked-in mirror_counter.wasm is that build; the test suite runs it, and where clang is
 * installed it rebuilds this file and runs the fresh build through the same checks.
 */
#include "broker.h"

#define EXPORT(name) __attribute__((export_name(#name)))

static const char DATA[] = "data";

/* The mirror: up to 16 KiB of the granted range, the handle, its length and the version it reflects. */
static uint8_t buf[16384];
static broker_handle_t handle;
static size_t len;
static uint64_t version;

/* Opens "data" (the range this app was granted) and acquires a mirror of it; returns the range's
 * length or a negative status. */
EXPORT(acquire) int64_t acquire(void) {
    int32_t rc = broker_region_open(DATA, sizeof(DATA) - 1, &handle);
    if (rc != BROKER_OK) return rc;
    broker_handle_info_t info;
    rc = broker_handle_info(handle, &info);
    if (rc != BROKER_OK) return rc;
    if (info.len > sizeof(buf)) return BROKER_ERR_OUT_OF_BOUNDS;
    len = (size_t)info.len;
    rc = broker_mirror_acquire(handle, buf, len, &version);
    return rc != BROKER_OK ? rc : (int64_t)len;
}

/* Hints pages [first, first + pages) of the range; the status. */
EXPORT(hint) int32_t hint(int32_t first, int32_t pages) {
    return broker_mirror_hint(handle, (uint32_t)first, (uint32_t)pages);
}

/* Commits against the version this copy reflects; returns the pages written, or a negative status. */
EXPORT(commit) int64_t commit(void) {
    uint32_t pages = 0;
    int32_t rc = broker_mirror_commit(handle, buf, len, (int64_t)version, &version, &pages);
    return rc != BROKER_OK ? rc : (int64_t)pages;
}

/* Sets the byte at `offset` of the range in this app's copy (not yet committed). */
EXPORT(poke) int32_t poke(int32_t offset, int32_t byte) {
    if (offset < 0 || (size_t)offset >= len) return BROKER_ERR_OUT_OF_BOUNDS;
    buf[offset] = (uint8_t)byte;
    return BROKER_OK;
}

/* Adds one to this app's own u64 counter at `offset` of its copy, hints the page(s) it lies on, and
 * commits; returns the commit's pages or a negative status. Never refreshes: the counter is this
 * app's alone, so under last-writer-wins the others' counters on the same page must survive. */
EXPORT(count) int64_t count(int32_t offset) {
    if (offset < 0 || (size_t)offset + 8 > len) return BROKER_ERR_OUT_OF_BOUNDS;
    uint64_t v = 0;
    __builtin_memcpy(&v, buf + offset, sizeof(v));
    v += 1;
    __builtin_memcpy(buf + offset, &v, sizeof(v));
    uint32_t first = (uint32_t)offset / 4096, last = ((uint32_t)offset + 7) / 4096;
    int32_t rc = broker_mirror_hint(handle, first, last - first + 1);
    if (rc != BROKER_OK) return rc;
    return commit();
}
