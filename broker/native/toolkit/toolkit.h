/*
 * toolkit: a tiny retained-mode object toolkit in the spirit of LVGL.
 *
 * Objects form a tree (obj_create(parent)); each holds a plain field struct (position, size, a value,
 * flags, a colour and a short text) and up to TOOLKIT_MAX_EVENT_CBS event callbacks, which are ordinary
 * C function pointers called in registration order by obj_send_event.
 *
 * Threading: the toolkit is single-threaded. It keeps no thread-local state, but no two calls may run
 * at the same time: the caller serialises every call (one thread, or one lock held around each call).
 * Callbacks run on the calling thread, inside obj_send_event, obj_delete and toolkit_reset.
 *
 * Reentrancy: a callback may call any toolkit function. It may delete the object it was called for (the
 * remaining callbacks for that event are then skipped and the memory is freed once the outermost send
 * returns) and may add or remove callbacks (a callback removed during a send is not called by it).
 * toolkit_reset called from a callback does nothing.
 *
 * Pointers: every obj_t pointer passed in must be NULL or a live object (obj_is_valid tells, without
 * dereferencing). Functions given NULL do nothing and return 0, NULL, "" or -1.
 */
#ifndef TOOLKIT_H
#define TOOLKIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes in obj_fields_t.text, the terminating NUL included. */
#define TOOLKIT_TEXT_MAX 32
/* Event callbacks one object can hold. */
#define TOOLKIT_MAX_EVENT_CBS 8

/* An object. Opaque: reach its plain fields through obj_fields or the accessors. */
typedef struct obj obj_t;

/*
 * The plain fields of an object: no pointers and no padding (toolkit.c checks the layout), so its bytes
 * can be copied or shared as they are. text is NUL-terminated when written by obj_set_text; a caller
 * writing through obj_fields may leave it unterminated, which obj_get_text tolerates.
 */
typedef struct obj_fields {
    int32_t x;
    int32_t y;
    int32_t width;
    int32_t height;
    int32_t value;
    uint32_t flags;
    uint32_t color;
    char text[TOOLKIT_TEXT_MAX];
} obj_fields_t;

/* What happened. Codes other than EVENT_ALL may also be application defined. */
typedef uint32_t event_code_t;
/* As a filter: every code. Never sent. */
#define EVENT_ALL ((event_code_t)0)
#define EVENT_PRESSED ((event_code_t)1)
#define EVENT_RELEASED ((event_code_t)2)
#define EVENT_CLICKED ((event_code_t)3)
#define EVENT_VALUE_CHANGED ((event_code_t)4)
/* Sent by obj_delete to every object it deletes, children before their parent; param is 0. */
#define EVENT_DELETE ((event_code_t)5)

/* One event as a callback sees it; valid only during the callback. */
typedef struct event {
    event_code_t code;
    obj_t *target;
    void *user_data;
    int32_t param;
} event_t;

/* An event callback. */
typedef void (*event_cb_t)(event_t *e);

/* Creates an object under parent (NULL: a top-level object), zeroed. NULL when out of memory or when
 * parent is being deleted. */
obj_t *obj_create(obj_t *parent);
/* Deletes obj and all its descendants, sending EVENT_DELETE to each. */
void obj_delete(obj_t *obj);
/* 1 if obj is a live object, else 0. Never dereferences obj. */
int obj_is_valid(const obj_t *obj);
obj_t *obj_get_parent(const obj_t *obj);
uint32_t obj_get_child_count(const obj_t *obj);
/* The index-th child in creation order, or NULL when out of range. */
obj_t *obj_get_child(const obj_t *obj, uint32_t index);

void obj_set_pos(obj_t *obj, int32_t x, int32_t y);
void obj_set_size(obj_t *obj, int32_t width, int32_t height);
void obj_set_value(obj_t *obj, int32_t value);
void obj_set_flags(obj_t *obj, uint32_t flags);
void obj_add_flag(obj_t *obj, uint32_t flag);
void obj_clear_flag(obj_t *obj, uint32_t flag);
void obj_set_color(obj_t *obj, uint32_t color);
/* Copies text (NULL: empty), truncated to TOOLKIT_TEXT_MAX - 1 bytes. */
void obj_set_text(obj_t *obj, const char *text);

int32_t obj_get_x(const obj_t *obj);
int32_t obj_get_y(const obj_t *obj);
int32_t obj_get_width(const obj_t *obj);
int32_t obj_get_height(const obj_t *obj);
int32_t obj_get_value(const obj_t *obj);
uint32_t obj_get_flags(const obj_t *obj);
int obj_has_flag(const obj_t *obj, uint32_t flag);
uint32_t obj_get_color(const obj_t *obj);
/* The text, always NUL-terminated; valid until the next obj_get_text on obj or its deletion. */
const char *obj_get_text(obj_t *obj);
/* The object's field struct, valid until the object is deleted. */
obj_fields_t *obj_fields(obj_t *obj);

/* Registers cb for events whose code equals filter (EVENT_ALL: every event). Returns a registration id
 * (>= 0), or -1 when obj or cb is NULL, obj is being deleted or already has TOOLKIT_MAX_EVENT_CBS. */
int obj_add_event_cb(obj_t *obj, event_cb_t cb, event_code_t filter, void *user_data);
/* Removes the first registration of cb. Returns 1 if one was removed, 0 if none, -1 for NULLs. */
int obj_remove_event_cb(obj_t *obj, event_cb_t cb);
uint32_t obj_get_event_count(const obj_t *obj);
/* The index-th registered callback in order, or NULL when out of range. */
event_cb_t obj_get_event_cb(const obj_t *obj, uint32_t index);
/* Calls every callback of obj whose filter matches code, in registration order. Returns how many were
 * called, or -1 when obj is NULL or being deleted or code is EVENT_ALL. */
int obj_send_event(obj_t *obj, event_code_t code, int32_t param);

event_code_t event_get_code(const event_t *e);
obj_t *event_get_target(const event_t *e);
void *event_get_user_data(const event_t *e);
int32_t event_get_param(const event_t *e);

/* Deletes every object (as obj_delete does). Does nothing when called from a callback. */
void toolkit_reset(void);

#ifdef __cplusplus
}
#endif

#endif /* TOOLKIT_H */
