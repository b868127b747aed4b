/* wasi_sort.c: an ordinary C program for WASI, built with wasi-libc (printf, malloc, qsort, errno),
 * reaching a region through guest-lib/include/broker.h by whatever mechanism the operator chose for it:
 * region_read/region_write in handle mode, a mirror (mirror_acquire/mirror_commit) in mirror mode, a
 * window (region_map) in shared mode.
 *
 * Built by guests/build.rs as a WASI reactor (exports _initialize, which the broker calls once):
 *   clang --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor -I../../guest-lib/include \
 *         -o wasi_sort.wasm wasi_sort.c
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

#define EXPORT(name) __attribute__((export_name(#name)))

static const char DATA[] = "data";

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Sorts the first `count` little-endian u32 of region "data" in place with qsort, through the region's
 * own mode; prints the smallest and largest; returns the sum of the sorted values (mod 2^32), or a
 * negative broker status. */
EXPORT(sort_region) int64_t sort_region(int32_t count) {
    if (count <= 0) return BROKER_ERR_INVALID_ARGUMENT;
    size_t len = (size_t)count * sizeof(uint32_t);
    broker_handle_t h;
    int32_t rc = broker_region_open(DATA, sizeof(DATA) - 1, &h);
    if (rc != BROKER_OK) return rc;
    broker_handle_info_t info;
    rc = broker_handle_info(h, &info);
    if (rc != BROKER_OK) goto close;
    if (len > info.len) { rc = BROKER_ERR_OUT_OF_BOUNDS; goto close; }

    uint32_t *values = NULL;
    uint64_t version = 0;
    uint8_t *mirror = NULL;
    void *window = NULL;
    const char *how = "handle";
    if (info.mode == BROKER_MODE_HANDLE) {
        values = malloc(len);
        if (!values) { rc = BROKER_ERR_QUOTA_EXCEEDED; goto close; }
        rc = broker_region_read(h, 0, values, len);
    } else if (info.mode == BROKER_MODE_MIRROR) {
        how = "mirror";
        mirror = malloc(info.len);
        if (!mirror) { rc = BROKER_ERR_QUOTA_EXCEEDED; goto close; }
        rc = broker_mirror_acquire(h, mirror, info.len, &version);
        values = (uint32_t *)mirror;
    } else {
        how = "shared";
        size_t pages = (info.len + BROKER_PAGE_SIZE - 1) / BROKER_PAGE_SIZE * BROKER_PAGE_SIZE;
        window = aligned_alloc(BROKER_PAGE_SIZE, pages);
        if (!window) { rc = BROKER_ERR_QUOTA_EXCEEDED; goto close; }
        rc = broker_region_map(h, window, pages, BROKER_MAP_WRITE);
        values = window;
    }
    if (rc != BROKER_OK) goto out;

    qsort(values, (size_t)count, sizeof(uint32_t), cmp_u32);
    uint32_t sum = 0;
    for (int32_t i = 0; i < count; i++) sum += values[i];
    printf("sorted %d values (%s): min %u max %u\n", (int)count, how, (unsigned)values[0],
           (unsigned)values[count - 1]);
    fflush(stdout); /* stdout is not a terminal: fully buffered until flushed */

    if (info.mode == BROKER_MODE_HANDLE) {
        rc = broker_region_write(h, 0, values, len);
    } else if (info.mode == BROKER_MODE_MIRROR) {
        uint64_t committed;
        uint32_t pages_written;
        rc = broker_mirror_commit(h, mirror, info.len, (int64_t)version, &committed, &pages_written);
    } else {
        rc = broker_region_unmap(h, window);
    }
    if (rc == BROKER_OK) {
        broker_handle_close(h);
        free(mirror);
        free(window);
        if (info.mode == BROKER_MODE_HANDLE) free(values);
        return (int64_t)sum;
    }
out:
    if (info.mode == BROKER_MODE_HANDLE) free(values);
    free(mirror);
    /* A window's memory goes back to the allocator only once unmapped. */
    if (window && (rc == BROKER_ERR_WRONG_MODE || broker_region_unmap(h, window) == BROKER_OK)) free(window);
close:
    broker_handle_close(h);
    fprintf(stderr, "sort_region failed: %d\n", (int)rc);
    return rc;
}

/* Opens a file no preopened directory gives the app; returns errno (positive), or -1 if it opened. */
EXPORT(open_file) int64_t open_file(void) {
    FILE *f = fopen("/etc/passwd", "r");
    if (f) { fclose(f); return -1; }
    int e = errno;
    fprintf(stderr, "fopen /etc/passwd: %s\n", strerror(e));
    return e;
}

/* Exits with `status` (proc_exit). */
EXPORT(quit) int64_t quit(int32_t status) {
    printf("exiting with %d\n", (int)status);
    exit(status);
}
