//! The ui-toolkit scenario's app (after LVGL): it builds a screen of widgets in the broker's native C
//! toolkit and updates them, then handles the toolkit's event callbacks.
//!
//! Each widget is a toolkit object whose fields live in a region of the mode under test. `update(i)`
//! writes every slider's value through the object's region view (host calls in handle mode, a local
//! copy committed once in mirror mode, mapped pages in shared mode), sets the status label's text
//! through the toolkit, and clicks the button; the C toolkit calls the app's `on_click` through a
//! native trampoline, which counts the click and shows the count in the counter widget. The host checks
//! the count and every slider's value through the toolkit (which reads the C structs, synced from the
//! regions), not through this app's own bookkeeping.

#![no_main]

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use broker_guest::{ui_callback, ui_code, Error, Field, Mode, Object, View};

const SLIDERS: usize = 8;

struct Screen {
    _root: Object,
    sliders: Vec<(&'static Object, View<'static>)>,
    label: Object,
    button: Object,
    counter: Object,
}

thread_local! {
    static SCREEN: RefCell<Option<Screen>> = const { RefCell::new(None) };
}

static CLICKS: AtomicU64 = AtomicU64::new(0);
static CALLBACK_ERRORS: AtomicU64 = AtomicU64::new(0);

ui_callback!(fn on_click(_user_data, event) {
    let clicks = CLICKS.fetch_add(1 + u64::from(event.missed), Ordering::Relaxed) + 1 + u64::from(event.missed);
    let shown = i32::try_from(clicks).unwrap_or(i32::MAX);
    let ok = SCREEN.with_borrow(|s| s.as_ref().map(|s| s.counter.set(Field::Value, shown)));
    if !matches!(ok, Some(Ok(()))) {
        CALLBACK_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
});

fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

/// Builds the screen with widget fields in regions of `mode` (0 handle, 1 mirror, 2 shared); returns
/// the number of widgets.
#[no_mangle]
pub extern "C" fn init(mode: i32) -> i64 {
    let run = || -> Result<u64, Error> {
        let mode = u32::try_from(mode).ok().and_then(Mode::from_raw).ok_or(Error::InvalidArgument)?;
        let root = Object::create(None, Mode::Handle)?;
        let mut sliders = Vec::with_capacity(SLIDERS);
        for k in 0..SLIDERS {
            let slider: &'static Object = Box::leak(Box::new(Object::create(Some(&root), mode)?));
            slider.set(Field::X, i32::try_from(k * 40).unwrap_or(0))?;
            slider.set(Field::Width, 32)?;
            sliders.push((slider, slider.region().view()?));
        }
        let label = Object::create(Some(&root), Mode::Handle)?;
        let button = Object::create(Some(&root), Mode::Handle)?;
        let counter = Object::create(Some(&root), Mode::Handle)?;
        button.on_event(ui_code::EVENT_CLICKED, on_click, 7)?;
        let n = 4 + sliders.len();
        SCREEN.with_borrow_mut(|s| *s = Some(Screen { _root: root, sliders, label, button, counter }));
        Ok(u64::try_from(n).unwrap_or(0))
    };
    ret(run())
}

/// Frame `i`: slider `k` shows `i + k`, the label says `frame <i>`, and the button is clicked; returns the
/// widget operations done.
#[no_mangle]
pub extern "C" fn update(i: i64) -> i64 {
    let run = |s: &mut Screen| -> Result<u64, Error> {
        let value_at = u64::from(ui_code::VALUE * 4);
        for (k, (_, view)) in (0i64..).zip(s.sliders.iter_mut()) {
            view.refresh()?;
            let v = i32::try_from((i + k) % 1_000_000).map_err(|_| Error::InvalidArgument)?;
            view.store(value_at, &v)?;
            view.commit()?;
        }
        s.label.set_text(&format!("frame {i}"))?;
        s.button.send(ui_code::EVENT_CLICKED, i32::try_from(i % 1_000_000).unwrap_or(0))?;
        Ok(u64::try_from(s.sliders.len() + 2).unwrap_or(0))
    };
    SCREEN.with_borrow_mut(|s| ret(s.as_mut().ok_or(Error::InvalidArgument).and_then(run)))
}

/// Clicks the app's callback saw.
#[no_mangle]
pub extern "C" fn clicks() -> i64 {
    i64::try_from(CLICKS.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

/// The counter widget's value, read back from the toolkit.
#[no_mangle]
pub extern "C" fn counter() -> i64 {
    SCREEN.with_borrow(|s| {
        ret(s
            .as_ref()
            .ok_or(Error::InvalidArgument)
            .and_then(|s| s.counter.get(Field::Value))
            .map(|v| u64::try_from(v).unwrap_or(0)))
    })
}

/// Sum over sliders of the value the toolkit holds (so the host can check the last frame's values).
#[no_mangle]
pub extern "C" fn slider_sum() -> i64 {
    SCREEN.with_borrow(|s| {
        let s = s.as_ref().ok_or(Error::InvalidArgument);
        ret(s.and_then(|s| {
            s.sliders
                .iter()
                .try_fold(0u64, |acc, (o, _)| Ok(acc + u64::try_from(o.get(Field::Value)?).unwrap_or(0)))
        }))
    })
}

/// The status label's text length (the text is `frame <i>` for the last frame).
#[no_mangle]
pub extern "C" fn label_len() -> i64 {
    SCREEN.with_borrow(|s| {
        ret(s.as_ref().ok_or(Error::InvalidArgument).and_then(|s| s.label.text()).map(|t| t.len() as u64))
    })
}

/// Callbacks that failed to update the counter (must stay 0).
#[no_mangle]
pub extern "C" fn callback_errors() -> i64 {
    i64::try_from(CALLBACK_ERRORS.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}
