/*
 * toolkit: objects, the object tree and event dispatch. See toolkit.h for the contract.
 *
 * Memory: every object is one calloc'd struct obj. An object is freed when it has been deleted and no
 * obj_send_event frame is running on it; until then it stays allocated (a "zombie") so that a callback
 * deleting its own target never leaves the sending frame with a dangling pointer.
 */
#include "toolkit.h"

#include <stdlib.h>
#include <string.h>

/* The field struct must have no padding: its bytes are copied and shared as they are. */
_Static_assert(offsetof(obj_fields_t, x) == 0, "obj_fields_t.x");
_Static_assert(offsetof(obj_fields_t, y) == 4, "obj_fields_t.y");
_Static_assert(offsetof(obj_fields_t, width) == 8, "obj_fields_t.width");
_Static_assert(offsetof(obj_fields_t, height) == 12, "obj_fields_t.height");
_Static_assert(offsetof(obj_fields_t, value) == 16, "obj_fields_t.value");
_Static_assert(offsetof(obj_fields_t, flags) == 20, "obj_fields_t.flags");
_Static_assert(offsetof(obj_fields_t, color) == 24, "obj_fields_t.color");
_Static_assert(offsetof(obj_fields_t, text) == 28, "obj_fields_t.text");
_Static_assert(sizeof(obj_fields_t) == 28 + TOOLKIT_TEXT_MAX, "obj_fields_t has padding");

/* A doubly linked list of siblings, in creation order. */
struct child_list {
    obj_t *first;
    obj_t *last;
    uint32_t count;
};

struct event_dsc {
    event_cb_t cb;
    event_code_t filter;
    void *user_data;
    int id;
};

struct obj {
    obj_fields_t fields;
    obj_t *parent;
    obj_t *prev;
    obj_t *next;
    struct child_list children;
    struct event_dsc cbs[TOOLKIT_MAX_EVENT_CBS];
    uint32_t cb_count;
    int next_cb_id;
    /* obj_send_event frames running on this object. */
    uint32_t sending;
    /* Set on the whole subtree when obj_delete starts: no new children, callbacks or user events. */
    int deleting;
    /* Set once deletion finished; the object is freed as soon as sending drops to 0. */
    int destroyed;
    /* obj_get_text's always-terminated copy of fields.text. */
    char text_out[TOOLKIT_TEXT_MAX + 1];
};

/* The object registry: the top-level objects (every live object is reachable from them) and how many
 * sends are running anywhere, so that toolkit_reset can refuse to run inside a callback. */
static struct {
    struct child_list roots;
    uint32_t sending;
} registry;

static struct child_list *siblings_of(obj_t *obj)
{
    return obj->parent != NULL ? &obj->parent->children : &registry.roots;
}

static void list_append(obj_t *obj)
{
    struct child_list *list = siblings_of(obj);
    obj->prev = list->last;
    obj->next = NULL;
    if (list->last != NULL) {
        list->last->next = obj;
    } else {
        list->first = obj;
    }
    list->last = obj;
    list->count++;
}

static void list_unlink(obj_t *obj)
{
    struct child_list *list = siblings_of(obj);
    if (obj->prev != NULL) {
        obj->prev->next = obj->next;
    } else {
        list->first = obj->next;
    }
    if (obj->next != NULL) {
        obj->next->prev = obj->prev;
    } else {
        list->last = obj->prev;
    }
    list->count--;
    obj->prev = NULL;
    obj->next = NULL;
    obj->parent = NULL;
}

obj_t *obj_create(obj_t *parent)
{
    if (parent != NULL && parent->deleting) {
        return NULL;
    }
    obj_t *obj = calloc(1, sizeof *obj);
    if (obj == NULL) {
        return NULL;
    }
    obj->parent = parent;
    list_append(obj);
    return obj;
}

static void mark_deleting(obj_t *obj)
{
    obj->deleting = 1;
    for (obj_t *c = obj->children.first; c != NULL; c = c->next) {
        mark_deleting(c);
    }
}

static void free_if_unused(obj_t *obj)
{
    if (obj->destroyed && obj->sending == 0) {
        free(obj);
    }
}

static int send(obj_t *obj, event_code_t code, int32_t param);

/* Deletes an object already unlinked from its siblings and marked deleting, children first. */
static void destroy(obj_t *obj)
{
    while (obj->children.first != NULL) {
        obj_t *child = obj->children.first;
        list_unlink(child);
        destroy(child);
    }
    (void)send(obj, EVENT_DELETE, 0);
    obj->destroyed = 1;
    free_if_unused(obj);
}

void obj_delete(obj_t *obj)
{
    if (obj == NULL || obj->deleting) {
        return;
    }
    mark_deleting(obj);
    list_unlink(obj);
    destroy(obj);
}

static int list_contains(const struct child_list *list, const obj_t *obj)
{
    for (const obj_t *c = list->first; c != NULL; c = c->next) {
        if (c == obj || list_contains(&c->children, obj)) {
            return 1;
        }
    }
    return 0;
}

int obj_is_valid(const obj_t *obj)
{
    return obj != NULL && list_contains(&registry.roots, obj);
}

obj_t *obj_get_parent(const obj_t *obj)
{
    return obj != NULL ? obj->parent : NULL;
}

uint32_t obj_get_child_count(const obj_t *obj)
{
    return obj != NULL ? obj->children.count : 0;
}

obj_t *obj_get_child(const obj_t *obj, uint32_t index)
{
    if (obj == NULL || index >= obj->children.count) {
        return NULL;
    }
    obj_t *c = obj->children.first;
    for (uint32_t i = 0; i < index && c != NULL; i++) {
        c = c->next;
    }
    return c;
}

void obj_set_pos(obj_t *obj, int32_t x, int32_t y)
{
    if (obj != NULL) {
        obj->fields.x = x;
        obj->fields.y = y;
    }
}

void obj_set_size(obj_t *obj, int32_t width, int32_t height)
{
    if (obj != NULL) {
        obj->fields.width = width;
        obj->fields.height = height;
    }
}

void obj_set_value(obj_t *obj, int32_t value)
{
    if (obj != NULL) {
        obj->fields.value = value;
    }
}

void obj_set_flags(obj_t *obj, uint32_t flags)
{
    if (obj != NULL) {
        obj->fields.flags = flags;
    }
}

void obj_add_flag(obj_t *obj, uint32_t flag)
{
    if (obj != NULL) {
        obj->fields.flags |= flag;
    }
}

void obj_clear_flag(obj_t *obj, uint32_t flag)
{
    if (obj != NULL) {
        obj->fields.flags &= ~flag;
    }
}

void obj_set_color(obj_t *obj, uint32_t color)
{
    if (obj != NULL) {
        obj->fields.color = color;
    }
}

void obj_set_text(obj_t *obj, const char *text)
{
    if (obj == NULL) {
        return;
    }
    size_t len = 0;
    if (text != NULL) {
        while (len < TOOLKIT_TEXT_MAX - 1 && text[len] != '\0') {
            len++;
        }
        /* memmove: text may point into this very object (its fields or its text_out copy). */
        memmove(obj->fields.text, text, len);
    }
    memset(obj->fields.text + len, 0, TOOLKIT_TEXT_MAX - len);
}

int32_t obj_get_x(const obj_t *obj)
{
    return obj != NULL ? obj->fields.x : 0;
}

int32_t obj_get_y(const obj_t *obj)
{
    return obj != NULL ? obj->fields.y : 0;
}

int32_t obj_get_width(const obj_t *obj)
{
    return obj != NULL ? obj->fields.width : 0;
}

int32_t obj_get_height(const obj_t *obj)
{
    return obj != NULL ? obj->fields.height : 0;
}

int32_t obj_get_value(const obj_t *obj)
{
    return obj != NULL ? obj->fields.value : 0;
}

uint32_t obj_get_flags(const obj_t *obj)
{
    return obj != NULL ? obj->fields.flags : 0;
}

int obj_has_flag(const obj_t *obj, uint32_t flag)
{
    return obj != NULL && (obj->fields.flags & flag) == flag;
}

uint32_t obj_get_color(const obj_t *obj)
{
    return obj != NULL ? obj->fields.color : 0;
}

const char *obj_get_text(obj_t *obj)
{
    if (obj == NULL) {
        return "";
    }
    /* A copy, terminated here, because writers through obj_fields may leave fields.text unterminated. */
    memcpy(obj->text_out, obj->fields.text, TOOLKIT_TEXT_MAX);
    obj->text_out[TOOLKIT_TEXT_MAX] = '\0';
    return obj->text_out;
}

obj_fields_t *obj_fields(obj_t *obj)
{
    return obj != NULL ? &obj->fields : NULL;
}

int obj_add_event_cb(obj_t *obj, event_cb_t cb, event_code_t filter, void *user_data)
{
    if (obj == NULL || cb == NULL || obj->deleting || obj->cb_count >= TOOLKIT_MAX_EVENT_CBS ||
        obj->next_cb_id < 0) {
        return -1;
    }
    int id = obj->next_cb_id;
    /* Ids are never reused within an object; once exhausted (after INT_MAX registrations) adding fails. */
    obj->next_cb_id = id < INT32_MAX ? id + 1 : -1;
    obj->cbs[obj->cb_count] = (struct event_dsc){ .cb = cb, .filter = filter, .user_data = user_data, .id = id };
    obj->cb_count++;
    return id;
}

int obj_remove_event_cb(obj_t *obj, event_cb_t cb)
{
    if (obj == NULL || cb == NULL) {
        return -1;
    }
    for (uint32_t i = 0; i < obj->cb_count; i++) {
        if (obj->cbs[i].cb == cb) {
            memmove(&obj->cbs[i], &obj->cbs[i + 1], (obj->cb_count - i - 1) * sizeof obj->cbs[0]);
            obj->cb_count--;
            return 1;
        }
    }
    return 0;
}

uint32_t obj_get_event_count(const obj_t *obj)
{
    return obj != NULL ? obj->cb_count : 0;
}

event_cb_t obj_get_event_cb(const obj_t *obj, uint32_t index)
{
    if (obj == NULL || index >= obj->cb_count) {
        return NULL;
    }
    return obj->cbs[index].cb;
}

static int still_registered(const obj_t *obj, int id)
{
    for (uint32_t i = 0; i < obj->cb_count; i++) {
        if (obj->cbs[i].id == id) {
            return 1;
        }
    }
    return 0;
}

/* Calls the matching callbacks from a snapshot, so callbacks may add or remove registrations (or delete
 * obj: it stays allocated while sending > 0). */
static int send(obj_t *obj, event_code_t code, int32_t param)
{
    struct event_dsc snapshot[TOOLKIT_MAX_EVENT_CBS];
    uint32_t n = obj->cb_count;
    memcpy(snapshot, obj->cbs, n * sizeof snapshot[0]);
    obj->sending++;
    registry.sending++;
    int called = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (obj->deleting && code != EVENT_DELETE) {
            break;
        }
        if (snapshot[i].filter != EVENT_ALL && snapshot[i].filter != code) {
            continue;
        }
        if (!still_registered(obj, snapshot[i].id)) {
            continue;
        }
        event_t e = { .code = code, .target = obj, .user_data = snapshot[i].user_data, .param = param };
        snapshot[i].cb(&e);
        called++;
    }
    registry.sending--;
    obj->sending--;
    free_if_unused(obj);
    return called;
}

int obj_send_event(obj_t *obj, event_code_t code, int32_t param)
{
    if (obj == NULL || obj->deleting || code == EVENT_ALL) {
        return -1;
    }
    return send(obj, code, param);
}

event_code_t event_get_code(const event_t *e)
{
    return e != NULL ? e->code : EVENT_ALL;
}

obj_t *event_get_target(const event_t *e)
{
    return e != NULL ? e->target : NULL;
}

void *event_get_user_data(const event_t *e)
{
    return e != NULL ? e->user_data : NULL;
}

int32_t event_get_param(const event_t *e)
{
    return e != NULL ? e->param : 0;
}

void toolkit_reset(void)
{
    if (registry.sending > 0) {
        return;
    }
    while (registry.roots.first != NULL) {
        obj_delete(registry.roots.first);
    }
}
