/* broker.h: host ABI v1 of the broker, for C apps compiled with clang --target=wasm32.
 *
 * Every function is imported from the module "broker_v1" (the UI toolkit extension's from
 * "broker_ui_v1") and returns an int32_t status:
 * BROKER_OK (0) or a negative BROKER_ERR_* code. Results are written through out-pointers.
 * Offsets and lengths passed to read/write are relative to the start of the handle's range.
 * See guest-lib/ABI.md for the semantics of each call. The values below are checked against the
 * broker-abi crate by the broker's test suite, so they cannot drift.
 */
#ifndef BROKER_H
#define BROKER_H

#include <stddef.h>
#include <stdint.h>

#define BROKER_ABI_VERSION 1

/* Status codes. */
#define BROKER_OK 0
#define BROKER_ERR_INVALID_HANDLE -1
#define BROKER_ERR_STALE_HANDLE -2
#define BROKER_ERR_PERMISSION_DENIED -3
#define BROKER_ERR_OUT_OF_BOUNDS -4
#define BROKER_ERR_BAD_POINTER -5
#define BROKER_ERR_NOT_FOUND -6
#define BROKER_ERR_ALREADY_EXISTS -7
#define BROKER_ERR_QUOTA_EXCEEDED -8
#define BROKER_ERR_INVALID_ARGUMENT -9
#define BROKER_ERR_MODE_NOT_SUPPORTED -10
#define BROKER_ERR_WRONG_MODE -11
#define BROKER_ERR_INTERNAL -12
#define BROKER_ERR_CONFLICT -13
#define BROKER_ERR_BAD_VERSION -14
#define BROKER_ERR_UNALIGNED -15
#define BROKER_ERR_BUSY -16
#define BROKER_ERR_TIMED_OUT -17
#define BROKER_ERR_BAD_CALLBACK -18
#define BROKER_ERR_SERVICE_FAILED -19
#define BROKER_ERR_UNAVAILABLE -20

/* Rights bits. */
#define BROKER_RIGHT_READ 0x1u
#define BROKER_RIGHT_WRITE 0x2u
#define BROKER_RIGHT_MAP 0x4u
#define BROKER_RIGHT_GRANT 0x8u
#define BROKER_RIGHT_WATCH 0x10u
#define BROKER_RIGHTS_ALL 0x1fu

/* Region modes. */
#define BROKER_MODE_HANDLE 0u
#define BROKER_MODE_MIRROR 1u
#define BROKER_MODE_SHARED 2u

/* region_map flags. */
#define BROKER_MAP_WRITE 0x1u

/* Toolkit object fields (ui_set/ui_get) and event codes. */
#define BROKER_UI_X 0u
#define BROKER_UI_Y 1u
#define BROKER_UI_WIDTH 2u
#define BROKER_UI_HEIGHT 3u
#define BROKER_UI_VALUE 4u
#define BROKER_UI_FLAGS 5u
#define BROKER_UI_COLOR 6u
#define BROKER_UI_EVENT_ALL 0u
#define BROKER_UI_EVENT_PRESSED 1u
#define BROKER_UI_EVENT_RELEASED 2u
#define BROKER_UI_EVENT_CLICKED 3u
#define BROKER_UI_EVENT_VALUE_CHANGED 4u

/* Longest region_wait, in milliseconds. */
#define BROKER_MAX_WAIT_MS 1000u
/* Most entries of one region_readv/region_writev. */
#define BROKER_MAX_IOVS 256u

/* `len` meaning "to the end of the range" in restrict and grant. */
#define BROKER_LEN_TO_END (-1LL)

/* Longest region or instance name, in bytes. */
#define BROKER_MAX_NAME_LEN 256u

/* The ABI's page size: window addresses and lengths, and mirror hint pages, count in these. */
#define BROKER_PAGE_SIZE 4096u

typedef uint32_t broker_handle_t;

/* What broker_handle_info writes: 40 bytes, little-endian, no padding. */
typedef struct broker_handle_info {
    uint64_t region_size;
    uint64_t offset;
    uint64_t len;
    uint64_t version;
    uint32_t rights;
    uint32_t mode;
} broker_handle_info_t;

_Static_assert(sizeof(broker_handle_info_t) == 40, "broker_handle_info_t must be 40 bytes");

/* One entry of region_readv/region_writev: `offset` in the capability's range, `ptr` and `len` in the
 * app's memory. */
typedef struct {
    int64_t offset;
    uint32_t ptr;
    uint32_t len;
} broker_iovec_t;

_Static_assert(sizeof(broker_iovec_t) == 16, "broker_iovec_t must be 16 bytes");

#define BROKER_IMPORT(name) __attribute__((import_module("broker_v1"), import_name(#name)))

BROKER_IMPORT(abi_version) int32_t broker_abi_version(void);
BROKER_IMPORT(nop) int32_t broker_nop(void);
BROKER_IMPORT(region_open) int32_t broker_region_open(const char *name, size_t name_len, broker_handle_t *out_handle);
BROKER_IMPORT(region_create) int32_t broker_region_create(const char *name, size_t name_len, int64_t size, uint32_t mode, broker_handle_t *out_handle);
BROKER_IMPORT(handle_close) int32_t broker_handle_close(broker_handle_t handle);
BROKER_IMPORT(handle_info) int32_t broker_handle_info(broker_handle_t handle, broker_handle_info_t *out_info);
BROKER_IMPORT(region_read) int32_t broker_region_read(broker_handle_t handle, int64_t offset, void *dst, size_t len);
BROKER_IMPORT(region_write) int32_t broker_region_write(broker_handle_t handle, int64_t offset, const void *src, size_t len);
/* Several reads (writes) in one call: all checked before any is done; the reads see one state of the
 * region, the writes land together as one change. */
BROKER_IMPORT(region_readv) int32_t broker_region_readv(broker_handle_t handle, const broker_iovec_t *iovs, size_t count);
BROKER_IMPORT(region_writev) int32_t broker_region_writev(broker_handle_t handle, const broker_iovec_t *iovs, size_t count);
/* Typed members of a struct stored in a region, at the compiler's offsets (guest-lib's `member!`):
 * BROKER_MEMBER_READ(h, record, struct reading, seq, &seq) reads the member `seq` of the
 * `struct reading` that starts at byte `record` of the region, in one call of the member's size.
 * `record` must leave room for the member's offset in an int64_t (the broker checks the rest). */
/* `ptr` must point to a value of the member's size: a mismatch does not compile. */
#define BROKER_MEMBER_SIZE_CHECK(type, member, ptr)                                                       \
    ((void)sizeof(char[sizeof(*(ptr)) == sizeof(((type *)0)->member) ? 1 : -1]))
#define BROKER_MEMBER_READ(handle, record, type, member, dst)                                             \
    (BROKER_MEMBER_SIZE_CHECK(type, member, dst),                                                         \
     broker_region_read((handle), (int64_t)(record) + (int64_t)offsetof(type, member), (dst),            \
                        sizeof(((type *)0)->member)))
#define BROKER_MEMBER_WRITE(handle, record, type, member, src)                                            \
    (BROKER_MEMBER_SIZE_CHECK(type, member, src),                                                         \
     broker_region_write((handle), (int64_t)(record) + (int64_t)offsetof(type, member), (src),           \
                         sizeof(((type *)0)->member)))
/* One entry of a vectored call for a member: gather several with region_readv in one call. */
#define BROKER_MEMBER_IOVEC(record, type, member, ptr)                                                    \
    (BROKER_MEMBER_SIZE_CHECK(type, member, ptr),                                                         \
     (broker_iovec_t){(int64_t)(record) + (int64_t)offsetof(type, member), (uint32_t)(uintptr_t)(ptr),    \
                      (uint32_t)sizeof(((type *)0)->member)})

BROKER_IMPORT(handle_restrict) int32_t broker_handle_restrict(broker_handle_t handle, uint32_t rights, int64_t offset, int64_t len, broker_handle_t *out_handle);
BROKER_IMPORT(handle_grant) int32_t broker_handle_grant(broker_handle_t handle, const char *target, size_t target_len, uint32_t rights, int64_t offset, int64_t len);
BROKER_IMPORT(handle_revoke) int32_t broker_handle_revoke(broker_handle_t handle);
BROKER_IMPORT(mirror_acquire) int32_t broker_mirror_acquire(broker_handle_t handle, void *buf, size_t len, uint64_t *out_version);
BROKER_IMPORT(mirror_refresh) int32_t broker_mirror_refresh(broker_handle_t handle, void *buf, size_t len, int64_t since_version, uint64_t *out_version, uint32_t *out_pages);
BROKER_IMPORT(mirror_commit) int32_t broker_mirror_commit(broker_handle_t handle, const void *buf, size_t len, int64_t base_version, uint64_t *out_version, uint32_t *out_pages);
/* Limits the next commit through `handle` to the pages hinted since the last commit (page indices
 * relative to the handle's range; pages == 0 hints none): a commit then costs the pages changed. */
BROKER_IMPORT(mirror_hint) int32_t broker_mirror_hint(broker_handle_t handle, uint32_t first_page, uint32_t pages);

BROKER_IMPORT(region_map) int32_t broker_region_map(broker_handle_t handle, void *addr, size_t len, uint32_t flags);
BROKER_IMPORT(region_unmap) int32_t broker_region_unmap(broker_handle_t handle, void *addr);
BROKER_IMPORT(region_wait) int32_t broker_region_wait(broker_handle_t handle, int64_t offset, uint32_t expected, uint32_t timeout_ms);
BROKER_IMPORT(region_notify) int32_t broker_region_notify(broker_handle_t handle, int64_t offset);

/* Callbacks: `callback` is a function pointer (an index into the exported function table; link with
 * -Wl,--export-table). Watch callbacks: void cb(uint32_t user_data, broker_handle_t handle,
 * uint64_t version, uint64_t offset, uint64_t len, uint32_t missed). Toolkit event callbacks (see the
 * UI extension below): void cb(uint32_t user_data, broker_handle_t object, uint32_t code, int32_t param,
 * uint32_t missed). */
BROKER_IMPORT(region_watch) int32_t broker_region_watch(broker_handle_t handle, uint32_t callback, uint32_t user_data);
BROKER_IMPORT(region_unwatch) int32_t broker_region_unwatch(broker_handle_t handle);
BROKER_IMPORT(fn_open) int32_t broker_fn_open(const char *name, size_t name_len, uint32_t *out_handle);
BROKER_IMPORT(fn_call) int32_t broker_fn_call(uint32_t fn_handle, const void *args, size_t args_len, void *result, size_t result_cap, uint32_t *out_len);
BROKER_IMPORT(fn_close) int32_t broker_fn_close(uint32_t fn_handle);

/* The UI toolkit extension, imported from its own module: a broker offers it only when its host turned
 * it on, and refuses to load an app that imports it otherwise. A declaration alone imports nothing, so
 * an app that calls none of these runs on any broker. */
#define BROKER_UI_IMPORT(name) __attribute__((import_module("broker_ui_v1"), import_name(#name)))

BROKER_UI_IMPORT(ui_create) int32_t broker_ui_create(broker_handle_t parent, uint32_t mode, broker_handle_t *out_handle);
BROKER_UI_IMPORT(ui_set) int32_t broker_ui_set(broker_handle_t object, uint32_t field, int32_t value);
BROKER_UI_IMPORT(ui_get) int32_t broker_ui_get(broker_handle_t object, uint32_t field, int32_t *out_value);
BROKER_UI_IMPORT(ui_set_text) int32_t broker_ui_set_text(broker_handle_t object, const char *text, size_t len);
BROKER_UI_IMPORT(ui_get_text) int32_t broker_ui_get_text(broker_handle_t object, char *buf, size_t cap, uint32_t *out_len);
BROKER_UI_IMPORT(ui_on_event) int32_t broker_ui_on_event(broker_handle_t object, uint32_t code, uint32_t callback, uint32_t user_data);
BROKER_UI_IMPORT(ui_send) int32_t broker_ui_send(broker_handle_t object, uint32_t code, int32_t param, uint32_t *out_count);
BROKER_UI_IMPORT(ui_delete) int32_t broker_ui_delete(broker_handle_t object);

#undef BROKER_UI_IMPORT
#undef BROKER_IMPORT

#endif /* BROKER_H */
