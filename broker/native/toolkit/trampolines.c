/*
 * A pool of BROKER_TRAMPOLINE_COUNT distinct C functions of type event_cb_t. Trampoline n does nothing
 * but call broker_trampoline_dispatch(n, e), which the broker implements in Rust and which routes the
 * event to whatever slot n is bound to. This is how a Rust closure becomes a real C function pointer
 * for a C library that takes no context argument beside its callbacks: the pointer itself names the slot.
 */
#include "toolkit.h"

#define BROKER_TRAMPOLINE_COUNT 64

/* Implemented in Rust (broker/src/native/trampoline.rs). Must not unwind. */
extern void broker_trampoline_dispatch(uint32_t slot, event_t *e);

/* Trampoline for slot row * 8 + col. */
#define TRAMPOLINE(row, col)                                                          \
    static void broker_trampoline_##row##_##col(event_t *e)                           \
    {                                                                                 \
        broker_trampoline_dispatch((uint32_t)((row) * 8 + (col)), e);                 \
    }
#define TRAMPOLINE_ROW(row)                                                           \
    TRAMPOLINE(row, 0) TRAMPOLINE(row, 1) TRAMPOLINE(row, 2) TRAMPOLINE(row, 3)       \
    TRAMPOLINE(row, 4) TRAMPOLINE(row, 5) TRAMPOLINE(row, 6) TRAMPOLINE(row, 7)

TRAMPOLINE_ROW(0)
TRAMPOLINE_ROW(1)
TRAMPOLINE_ROW(2)
TRAMPOLINE_ROW(3)
TRAMPOLINE_ROW(4)
TRAMPOLINE_ROW(5)
TRAMPOLINE_ROW(6)
TRAMPOLINE_ROW(7)

#define ENTRY(row, col) broker_trampoline_##row##_##col,
#define ENTRY_ROW(row)                                                                \
    ENTRY(row, 0) ENTRY(row, 1) ENTRY(row, 2) ENTRY(row, 3)                           \
    ENTRY(row, 4) ENTRY(row, 5) ENTRY(row, 6) ENTRY(row, 7)

static event_cb_t const trampolines[] = {
    ENTRY_ROW(0) ENTRY_ROW(1) ENTRY_ROW(2) ENTRY_ROW(3)
    ENTRY_ROW(4) ENTRY_ROW(5) ENTRY_ROW(6) ENTRY_ROW(7)
};

_Static_assert(sizeof trampolines / sizeof trampolines[0] == BROKER_TRAMPOLINE_COUNT,
               "one trampoline per slot");

/* How many trampolines there are. */
uint32_t broker_trampoline_count(void)
{
    return BROKER_TRAMPOLINE_COUNT;
}

/* The trampoline of slot, or NULL when slot is out of range. */
event_cb_t broker_trampoline_ptr(uint32_t slot)
{
    return slot < BROKER_TRAMPOLINE_COUNT ? trampolines[slot] : NULL;
}
