//! Unit tests of the native bridge: the C toolkit through its safe wrapper, and trampolines that the C
//! library stores and calls as real function pointers.
//!
//! The toolkit and the trampoline table are process-global, and cargo runs tests on parallel threads, so
//! every test holds `SERIAL` and starts from an empty toolkit and an empty table.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::trampoline::{ffi_trampolines, reset_table};
use super::*;

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the test, empties the toolkit and the trampoline table (in that order: no C registration
/// may outlive the table's reset), and gives the test a pool as large as the table, so filling the pool
/// fills the table.
fn fresh() -> (MutexGuard<'static, ()>, Toolkit, TrampolinePool) {
    let serial = SERIAL.lock();
    let toolkit = Toolkit::new();
    toolkit.reset().expect("reset outside a callback");
    reset_table();
    let pool = TrampolinePool::new(MAX_TRAMPOLINES).expect("the largest pool is valid");
    (serial, toolkit, pool)
}

/// What the recording targets saw: (target name, event), in call order.
type Log = Arc<Mutex<Vec<(&'static str, Event)>>>;

/// A target that records each event under `name` and accepts it.
fn recorder(name: &'static str, log: &Log) -> EventTarget {
    let log = Arc::clone(log);
    Arc::new(move |event: &Event| {
        log.lock().push((name, *event));
        Ok(())
    })
}

fn accept_all() -> EventTarget {
    Arc::new(|_: &Event| Ok(()))
}

#[test]
fn every_field_round_trips_through_c() {
    let (_serial, tk, _) = fresh();
    let obj = tk.create_object(None).expect("create");
    assert_eq!(tk.fields(obj), Ok(ObjFields::default()), "objects start zeroed");

    tk.set_pos(obj, -3, 7).expect("set_pos");
    tk.set_size(obj, 120, 40).expect("set_size");
    tk.set_value(obj, i32::MIN).expect("set_value");
    tk.set_flags(obj, 0b1010).expect("set_flags");
    tk.set_color(obj, 0x00ff_8800).expect("set_color");
    tk.set_text(obj, "OK").expect("set_text");

    assert_eq!(tk.pos(obj), Ok((-3, 7)));
    assert_eq!(tk.size(obj), Ok((120, 40)));
    assert_eq!(tk.value(obj), Ok(i32::MIN));
    assert_eq!(tk.flags(obj), Ok(0b1010));
    assert_eq!(tk.color(obj), Ok(0x00ff_8800));
    assert_eq!(tk.text(obj).as_deref(), Ok("OK"));

    let mut text = [0; TEXT_CAPACITY];
    text[..2].copy_from_slice(b"OK");
    let expected = ObjFields {
        x: -3,
        y: 7,
        width: 120,
        height: 40,
        value: i32::MIN,
        flags: 0b1010,
        color: 0x00ff_8800,
        text,
    };
    assert_eq!(tk.fields(obj), Ok(expected));
    assert_eq!(tk.fields_bytes(obj), Ok(expected.to_bytes()));
}

#[test]
fn raw_field_writes_are_seen_by_the_c_getters() {
    let (_serial, tk, _) = fresh();
    let obj = tk.create_object(None).expect("create");
    // A raw writer (a future region) may leave the text without a terminating NUL.
    let written = ObjFields {
        x: 1,
        y: 2,
        width: 3,
        height: 4,
        value: 5,
        flags: 6,
        color: 7,
        text: [b'z'; TEXT_CAPACITY],
    };
    tk.write_fields_bytes(obj, &written.to_bytes()).expect("write");
    assert_eq!(tk.pos(obj), Ok((1, 2)));
    assert_eq!(tk.size(obj), Ok((3, 4)));
    assert_eq!(tk.value(obj), Ok(5));
    assert_eq!(tk.flags(obj), Ok(6));
    assert_eq!(tk.color(obj), Ok(7));
    assert_eq!(tk.text(obj), Ok("z".repeat(TEXT_CAPACITY)), "read back bounded, not past the buffer");
    assert_eq!(tk.fields(obj).expect("fields").text_bytes(), &[b'z'; TEXT_CAPACITY][..]);
}

#[test]
fn text_is_truncated_to_the_capacity_on_a_character_boundary() {
    let (_serial, tk, _) = fresh();
    let obj = tk.create_object(None).expect("create");

    tk.set_text(obj, &"a".repeat(40)).expect("long ascii");
    assert_eq!(tk.text(obj), Ok("a".repeat(TEXT_CAPACITY - 1)));
    let fields = tk.fields(obj).expect("fields");
    assert_eq!(fields.text[TEXT_CAPACITY - 1], 0, "the C library keeps the terminator");

    // 20 two-byte characters: 31 bytes would split the 16th, so 15 are kept.
    tk.set_text(obj, &"é".repeat(20)).expect("long utf-8");
    assert_eq!(tk.text(obj), Ok("é".repeat(15)));

    tk.set_text(obj, "").expect("empty");
    assert_eq!(tk.text(obj).as_deref(), Ok(""));
    assert_eq!(tk.fields(obj).expect("fields").text, [0; TEXT_CAPACITY], "shorter text clears the rest");

    assert_eq!(tk.set_text(obj, "a\0b"), Err(ToolkitError::TextContainsNul { position: 1 }));
    assert_eq!(tk.text(obj).as_deref(), Ok(""), "a refused text changes nothing");
}

#[test]
fn trampolines_are_stored_and_called_by_c_in_order() {
    let (_serial, tk, pool) = fresh();
    let log = Log::default();
    let first = pool.allocate(recorder("first", &log)).expect("allocate");
    let second = pool.allocate(recorder("second", &log)).expect("allocate");
    assert_ne!(first.fn_ptr(), second.fn_ptr(), "each slot has its own C function");
    let dead_before = pool.dead_calls();

    let button = tk.create_object(None).expect("create");
    tk.add_event_cb(button, first.fn_ptr(), EventCode::CLICKED, 0x1111).expect("add first");
    tk.add_event_cb(button, second.fn_ptr(), EventCode::ALL, 0x2222).expect("add second");
    assert_eq!(
        tk.event_callbacks(button),
        Ok(vec![first.fn_ptr(), second.fn_ptr()]),
        "the C library holds exactly the trampolines' function pointers"
    );

    assert_eq!(tk.send_event(button, EventCode::CLICKED, 42), Ok(2));
    let clicked = |user_data| Event { code: EventCode::CLICKED, param: 42, user_data, target: Some(button) };
    assert_eq!(*log.lock(), [("first", clicked(0x1111)), ("second", clicked(0x2222))]);

    // Filters are applied by C: only the catch-all callback hears a press.
    log.lock().clear();
    assert_eq!(tk.send_event(button, EventCode::PRESSED, -7), Ok(1));
    let pressed = Event { code: EventCode::PRESSED, param: -7, user_data: 0x2222, target: Some(button) };
    assert_eq!(*log.lock(), [("second", pressed)]);

    // Removing the registration in C stops the calls.
    log.lock().clear();
    assert_eq!(tk.remove_event_cb(button, second.fn_ptr()), Ok(true));
    assert_eq!(tk.remove_event_cb(button, second.fn_ptr()), Ok(false));
    assert_eq!(tk.send_event(button, EventCode::PRESSED, 0), Ok(0));
    assert!(log.lock().is_empty());

    assert_eq!(pool.dead_calls(), dead_before, "every call was delivered");
    assert_eq!(
        tk.send_event(button, EventCode::ALL, 0),
        Err(ToolkitError::UnsendableEventCode(EventCode::ALL))
    );
}

#[test]
fn deleting_an_object_sends_delete_children_first() {
    let (_serial, tk, pool) = fresh();
    let log = Log::default();
    let trampoline = pool.allocate(recorder("deleted", &log)).expect("allocate");
    let parent = tk.create_object(None).expect("parent");
    let child = tk.create_object(Some(parent)).expect("child");
    assert_eq!(tk.parent(child), Ok(Some(parent)));
    assert_eq!(tk.children(parent), Ok(vec![child]));
    tk.add_event_cb(parent, trampoline.fn_ptr(), EventCode::DELETE, 1).expect("add");
    tk.add_event_cb(child, trampoline.fn_ptr(), EventCode::DELETE, 2).expect("add");

    tk.delete_object(parent).expect("delete");
    let deleted =
        |user_data, target| Event { code: EventCode::DELETE, param: 0, user_data, target: Some(target) };
    assert_eq!(*log.lock(), [("deleted", deleted(2, child)), ("deleted", deleted(1, parent))]);
    assert_eq!(tk.value(child), Err(ToolkitError::UnknownObject(child)), "the child went with its parent");
}

#[test]
fn a_call_through_a_freed_trampoline_is_a_dead_call() {
    let (_serial, tk, pool) = fresh();
    let log = Log::default();
    let trampoline = pool.allocate(recorder("freed", &log)).expect("allocate");
    let obj = tk.create_object(None).expect("create");
    tk.add_event_cb(obj, trampoline.fn_ptr(), EventCode::ALL, 0).expect("add");
    pool.free(trampoline.slot()).expect("free");
    let dead_before = pool.dead_calls();

    // C still holds the pointer and calls it; the dispatcher finds the slot free and returns.
    assert_eq!(tk.send_event(obj, EventCode::CLICKED, 1), Ok(1));
    assert_eq!(pool.dead_calls(), dead_before + 1);
    assert!(log.lock().is_empty(), "the old target is not reached");
    assert_eq!(pool.free(trampoline.slot()), Err(PoolError::StaleSlot(trampoline.slot())));
}

#[test]
fn a_failing_target_is_a_dead_call() {
    let (_serial, tk, pool) = fresh();
    let stopped: EventTarget = Arc::new(|_: &Event| Err("app stopped".to_owned()));
    let trampoline = pool.allocate(stopped).expect("allocate");
    let obj = tk.create_object(None).expect("create");
    tk.add_event_cb(obj, trampoline.fn_ptr(), EventCode::ALL, 0).expect("add");
    let dead_before = pool.dead_calls();

    assert_eq!(tk.send_event(obj, EventCode::VALUE_CHANGED, 3), Ok(1));
    assert_eq!(pool.dead_calls(), dead_before + 1);
}

#[test]
fn a_panicking_target_does_not_unwind_into_c() {
    let (_serial, tk, pool) = fresh();
    let log = Log::default();
    let panicking: EventTarget = Arc::new(|_: &Event| panic!("target bug"));
    let panics = pool.allocate(panicking).expect("allocate");
    let after = pool.allocate(recorder("after", &log)).expect("allocate");
    let obj = tk.create_object(None).expect("create");
    tk.add_event_cb(obj, panics.fn_ptr(), EventCode::ALL, 0).expect("add");
    tk.add_event_cb(obj, after.fn_ptr(), EventCode::ALL, 0).expect("add");
    let dead_before = pool.dead_calls();

    assert_eq!(tk.send_event(obj, EventCode::CLICKED, 0), Ok(2), "C went on to the next callback");
    assert_eq!(pool.dead_calls(), dead_before + 1);
    assert_eq!(log.lock().len(), 1);
    assert_eq!(tk.value(obj), Ok(0), "the toolkit is usable afterwards");
}

#[test]
fn a_target_calling_back_into_the_toolkit_is_refused_not_deadlocked() {
    let (_serial, tk, pool) = fresh();
    let seen = Arc::new(Mutex::new(None));
    let reentering: EventTarget = {
        let seen = Arc::clone(&seen);
        Arc::new(move |event: &Event| {
            let target = event.target.ok_or("no target")?;
            *seen.lock() = Some(Toolkit::new().value(target));
            Ok(())
        })
    };
    let trampoline = pool.allocate(reentering).expect("allocate");
    let obj = tk.create_object(None).expect("create");
    tk.add_event_cb(obj, trampoline.fn_ptr(), EventCode::ALL, 0).expect("add");

    assert_eq!(tk.send_event(obj, EventCode::CLICKED, 0), Ok(1));
    assert_eq!(*seen.lock(), Some(Err(ToolkitError::Reentered)));
}

#[test]
fn freed_slots_are_reused_with_a_new_generation() {
    let (_serial, _, pool) = fresh();
    let all: Vec<Trampoline> =
        (0..pool.capacity()).map(|_| pool.allocate(accept_all()).expect("allocate")).collect();
    let freed = all[5];
    pool.free(freed.slot()).expect("free");

    let reused = pool.allocate(accept_all()).expect("allocate the freed slot");
    assert_eq!(reused.slot().index(), freed.slot().index());
    assert_eq!(reused.fn_ptr(), freed.fn_ptr(), "the slot's trampoline is the same C function");
    assert!(reused.slot().generation() > freed.slot().generation());
    assert_eq!(pool.free(freed.slot()), Err(PoolError::StaleSlot(freed.slot())), "an old id frees nothing");
    assert_eq!(pool.in_use(), pool.capacity());
}

#[test]
fn the_longest_freed_slot_is_reused_first() {
    let (_serial, _, pool) = fresh();
    let all: Vec<Trampoline> =
        (0..pool.capacity()).map(|_| pool.allocate(accept_all()).expect("allocate")).collect();
    let (older, newer) = (all[9].slot(), all[2].slot());
    pool.free(older).expect("free");
    pool.free(newer).expect("free");
    assert_eq!(pool.allocate(accept_all()).map(|t| t.slot().index()), Ok(older.index()));
    assert_eq!(pool.allocate(accept_all()).map(|t| t.slot().index()), Ok(newer.index()));
}

#[test]
fn an_exhausted_pool_gives_a_typed_error() {
    let (_serial, _, pool) = fresh();
    assert_eq!(MAX_TRAMPOLINES, ffi_trampolines::broker_trampoline_count(), "Rust and C agree on the count");
    assert!(ffi_trampolines::broker_trampoline_ptr(MAX_TRAMPOLINES).is_none());

    let all: Vec<Trampoline> =
        (0..pool.capacity()).map(|_| pool.allocate(accept_all()).expect("allocate")).collect();
    let mut addresses: Vec<usize> = all.iter().map(|t| t.fn_ptr().addr()).collect();
    addresses.sort_unstable();
    addresses.dedup();
    assert_eq!(addresses.len(), all.len(), "every slot has a distinct C function");

    assert_eq!(
        pool.allocate(accept_all()).map(|t| t.slot()),
        Err(PoolError::Exhausted { capacity: MAX_TRAMPOLINES })
    );
}

#[test]
fn a_pool_of_n_refuses_the_next_one_until_one_is_freed() {
    let (_serial, _, _) = fresh();
    for n in [1, 3, DEFAULT_TRAMPOLINES] {
        let pool = TrampolinePool::new(n).expect("a valid size");
        assert_eq!(pool.capacity(), n);
        let all: Vec<Trampoline> = (0..n).map(|_| pool.allocate(accept_all()).expect("allocate")).collect();
        assert_eq!(pool.in_use(), n);
        assert_eq!(
            pool.allocate(accept_all()).map(|t| t.slot()),
            Err(PoolError::Exhausted { capacity: n }),
            "the table has room, the pool of {n} has not"
        );
        pool.free(all[0].slot()).expect("free");
        assert_eq!(pool.in_use(), n - 1);
        pool.allocate(accept_all()).expect("room again after a free");
        assert_eq!(pool.in_use(), n);
    }
}

#[test]
fn pool_sizes_outside_one_to_the_maximum_are_refused() {
    for bad in [0, MAX_TRAMPOLINES + 1, u32::MAX] {
        assert_eq!(
            TrampolinePool::new(bad).map(|p| p.capacity()),
            Err(PoolError::InvalidCapacity { requested: bad, max: MAX_TRAMPOLINES })
        );
    }
    for good in [1, DEFAULT_TRAMPOLINES, MAX_TRAMPOLINES] {
        assert_eq!(TrampolinePool::new(good).map(|p| p.capacity()), Ok(good));
    }
}

#[test]
fn pools_share_the_table_and_free_only_their_own_slots() {
    let (_serial, _, _) = fresh();
    let small = TrampolinePool::new(4).expect("valid");
    let big = TrampolinePool::new(MAX_TRAMPOLINES - 2).expect("valid");
    let held: Vec<Trampoline> =
        (0..big.capacity()).map(|_| big.allocate(accept_all()).expect("allocate")).collect();
    let mine: Vec<Trampoline> = (0..2).map(|_| small.allocate(accept_all()).expect("allocate")).collect();
    assert_eq!(
        small.allocate(accept_all()).map(|t| t.slot()),
        Err(PoolError::ProcessExhausted { max: MAX_TRAMPOLINES }),
        "the small pool has room, the process has none"
    );
    assert_eq!(small.free(held[0].slot()), Err(PoolError::StaleSlot(held[0].slot())));
    assert_eq!(big.free(mine[0].slot()), Err(PoolError::StaleSlot(mine[0].slot())));
    assert_eq!((big.in_use(), small.in_use()), (MAX_TRAMPOLINES - 2, 2));
    // A slot one pool frees, another may take.
    big.free(held[0].slot()).expect("free");
    assert_eq!(small.allocate(accept_all()).map(|t| t.slot().index()), Ok(held[0].slot().index()));
}

#[test]
fn a_pool_dropped_while_holding_slots_retires_them() {
    let (_serial, tk, pool) = fresh();
    let log = Log::default();
    let dropped = TrampolinePool::new(1).expect("valid");
    let forgotten = dropped.allocate(recorder("forgotten", &log)).expect("allocate");
    let obj = tk.create_object(None).expect("create");
    // The registration stays in C, as when a broker goes without running its cleanup hooks.
    tk.add_event_cb(obj, forgotten.fn_ptr(), EventCode::ALL, 0).expect("add");
    drop(dropped);
    let dead_before = pool.dead_calls();
    assert_eq!(tk.send_event(obj, EventCode::CLICKED, 1), Ok(1));
    assert_eq!(pool.dead_calls(), dead_before + 1, "the retired slot's target is gone");
    assert!(log.lock().is_empty());
    // Every other slot can be taken, the retired one never.
    let all: Vec<Trampoline> =
        (0..MAX_TRAMPOLINES - 1).map(|_| pool.allocate(accept_all()).expect("allocate")).collect();
    assert!(all.iter().all(|t| t.slot().index() != forgotten.slot().index()));
    assert_eq!(
        pool.allocate(accept_all()).map(|t| t.slot()),
        Err(PoolError::ProcessExhausted { max: MAX_TRAMPOLINES })
    );
    assert_eq!(tk.send_event(obj, EventCode::CLICKED, 2), Ok(1));
    assert!(log.lock().is_empty(), "C's stale pointer reaches no new target");
}

#[test]
fn stale_and_unknown_object_ids_are_errors() {
    let (_serial, tk, pool) = fresh();
    let trampoline = pool.allocate(accept_all()).expect("allocate");
    let obj = tk.create_object(None).expect("create");
    tk.delete_object(obj).expect("delete");
    let forged = ObjectId(u64::MAX);

    for id in [obj, forged] {
        let unknown = Err(ToolkitError::UnknownObject(id));
        assert_eq!(tk.delete_object(id), unknown);
        assert_eq!(tk.create_object(Some(id)), Err(ToolkitError::UnknownObject(id)));
        assert_eq!(tk.set_pos(id, 1, 1), unknown);
        assert_eq!(tk.pos(id), Err(ToolkitError::UnknownObject(id)));
        assert_eq!(tk.set_value(id, 1), unknown);
        assert_eq!(tk.value(id), Err(ToolkitError::UnknownObject(id)));
        assert_eq!(tk.set_text(id, "x"), unknown);
        assert_eq!(tk.text(id), Err(ToolkitError::UnknownObject(id)));
        assert_eq!(tk.fields_bytes(id), Err(ToolkitError::UnknownObject(id)));
        assert_eq!(tk.write_fields_bytes(id, &[0; OBJ_FIELDS_SIZE]), unknown);
        assert_eq!(
            tk.add_event_cb(id, trampoline.fn_ptr(), EventCode::ALL, 0),
            Err(ToolkitError::UnknownObject(id))
        );
        assert_eq!(tk.remove_event_cb(id, trampoline.fn_ptr()), Err(ToolkitError::UnknownObject(id)));
        assert_eq!(tk.send_event(id, EventCode::CLICKED, 0), Err(ToolkitError::UnknownObject(id)));
    }

    // Reset makes every id stale, and ids are never reused afterwards.
    let before_reset = tk.create_object(None).expect("create");
    tk.reset().expect("reset");
    assert_eq!(tk.value(before_reset), Err(ToolkitError::UnknownObject(before_reset)));
    let after_reset = tk.create_object(None).expect("create");
    assert_ne!(after_reset, before_reset);
}

#[test]
fn an_object_holds_at_most_the_maximum_of_callbacks() {
    let (_serial, tk, pool) = fresh();
    let trampoline = pool.allocate(accept_all()).expect("allocate");
    let obj = tk.create_object(None).expect("create");
    let ids: Vec<CallbackId> = (0..MAX_EVENT_CALLBACKS)
        .map(|_| tk.add_event_cb(obj, trampoline.fn_ptr(), EventCode::ALL, 0).expect("add"))
        .collect();
    assert_eq!(ids, (0..MAX_EVENT_CALLBACKS).map(CallbackId).collect::<Vec<_>>());
    assert_eq!(
        tk.add_event_cb(obj, trampoline.fn_ptr(), EventCode::ALL, 0),
        Err(ToolkitError::TooManyCallbacks { object: obj, max: MAX_EVENT_CALLBACKS })
    );
    assert_eq!(tk.send_event(obj, EventCode::CLICKED, 0), Ok(MAX_EVENT_CALLBACKS));
}

#[test]
fn error_messages_are_lower_case_sentences() {
    let id = ObjectId(7);
    assert_eq!(
        ToolkitError::UnknownObject(id).to_string(),
        "object#7 does not exist (deleted or never created)"
    );
    assert_eq!(
        ToolkitError::UnsendableEventCode(EventCode::ALL).to_string(),
        "event code all is a filter and cannot be sent"
    );
    assert_eq!(PoolError::Exhausted { capacity: 64 }.to_string(), "all 64 trampolines are in use");
    assert_eq!(
        PoolError::InvalidCapacity { requested: 0, max: 1024 }.to_string(),
        "a pool holds 1 to 1024 trampolines (the number compiled in), not 0"
    );
}
