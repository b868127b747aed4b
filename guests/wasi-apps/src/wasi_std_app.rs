//! An ordinary Rust program for `wasm32-wasip1`, written with the standard library as any app would be:
//! `println!`, `HashMap`, `Instant`, a `Vec` of a few MiB, `std::env`, `std::fs`, `std::thread::sleep`
//! and `std::process::exit`, plus a region read and written through `broker-guest`'s mode-agnostic
//! `View`. Exports return a non-negative result or a negative ABI status code.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use broker_guest::{Error, Region};

fn ret(r: Result<u64, Error>) -> i64 {
    match r {
        Ok(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code()),
    }
}

/// Greets on stdout and stderr; returns the number of lines written.
#[no_mangle]
pub extern "C" fn hello() -> i64 {
    println!("hello from a std wasm32-wasip1 app");
    eprintln!("and a line on stderr");
    2
}

/// Counts words with a `HashMap`, fills a `Vec` of `mib` MiB, times both with `Instant`, and prints
/// what it found; returns the number of distinct words plus the vector's checksum (mod 2^32).
#[no_mangle]
pub extern "C" fn work(mib: i32) -> i64 {
    let started = Instant::now();
    let text = "the quick brown fox jumps over the lazy dog the fox";
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for w in text.split_whitespace() {
        *counts.entry(w).or_default() += 1;
    }
    let len = usize::try_from(mib).unwrap_or(0) << 20;
    let mut big = vec![0u8; len];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let sum = big.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    let elapsed = started.elapsed();
    println!(
        "words={} the={} vec_bytes={} sum={} elapsed_ok={}",
        counts.len(),
        counts.get("the").copied().unwrap_or(0),
        big.len(),
        sum,
        elapsed < Duration::from_secs(60)
    );
    i64::try_from(counts.len()).unwrap_or(0) + i64::from(sum)
}

/// Opens region `data`, reads its first `len` bytes, prints their sum, and writes them back each plus
/// one; returns the sum.
#[no_mangle]
pub extern "C" fn bump_region(len: i32) -> i64 {
    ret((|| {
        let region = Region::open("data")?;
        let mut view = region.view()?;
        view.refresh()?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| Error::InvalidArgument)?];
        view.read(0, &mut buf)?;
        let sum: u64 = buf.iter().map(|&b| u64::from(b)).sum();
        println!("region data: {} bytes, sum {sum}, mode {:?}", buf.len(), view.mode());
        for b in &mut buf {
            *b = b.wrapping_add(1);
        }
        view.write(0, &buf)?;
        view.commit()?;
        Ok(sum)
    })())
}

/// Prints its arguments and environment, one per line; returns how many there were.
#[no_mangle]
pub extern "C" fn args_env() -> i64 {
    let mut n = 0;
    for a in std::env::args() {
        println!("arg {a}");
        n += 1;
    }
    for (k, v) in std::env::vars() {
        println!("env {k}={v}");
        n += 1;
    }
    n
}

/// Prints `n` numbered lines as fast as it can; returns `n`.
#[no_mangle]
pub extern "C" fn flood(n: i32) -> i64 {
    let mut out = std::io::stdout().lock();
    for i in 0..n {
        let _ = writeln!(out, "flood line {i}");
    }
    let _ = out.flush();
    i64::from(n)
}

/// Prints a line without a newline (the broker ends it when the call returns).
#[no_mangle]
pub extern "C" fn partial() -> i64 {
    print!("no newline here");
    let _ = std::io::stdout().flush();
    0
}

/// Exits with `status` (WASI `proc_exit`).
#[no_mangle]
pub extern "C" fn quit(status: i32) -> i64 {
    println!("exiting with {status}");
    std::process::exit(status)
}

/// Tries to open `/etc/passwd`, which no preopened directory gives it; returns the OS error number
/// (positive), or -1 if the open succeeded.
#[no_mangle]
pub extern "C" fn open_file() -> i64 {
    match std::fs::File::open("/etc/passwd") {
        Ok(_) => -1,
        Err(e) => {
            eprintln!("open /etc/passwd: {e}");
            i64::from(e.raw_os_error().unwrap_or(0))
        }
    }
}

/// Sleeps `ms` milliseconds (WASI `poll_oneoff` on a clock); returns the milliseconds that passed.
#[no_mangle]
pub extern "C" fn sleep_ms(ms: i32) -> i64 {
    let started = Instant::now();
    println!("sleeping {ms} ms");
    std::thread::sleep(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// A random `u32` from the host (WASI `random_get`, through `HashMap`'s seed).
#[no_mangle]
pub extern "C" fn random() -> i64 {
    use std::hash::{BuildHasher, RandomState};
    i64::from(RandomState::new().hash_one(0u8) as u32)
}

/// The negated OS error number of `e` (or -1 if it has none).
fn errno(e: &std::io::Error) -> i64 {
    -i64::from(e.raw_os_error().unwrap_or(1))
}

/// Writes `n` bytes to `/data/out.txt` (a preopened directory, if it was given one) and reads them
/// back; returns how many it read, or the negated errno.
#[no_mangle]
pub extern "C" fn write_file(n: i32) -> i64 {
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    if let Err(e) = std::fs::write("/data/out.txt", &data) {
        eprintln!("write /data/out.txt: {e}");
        return errno(&e);
    }
    match std::fs::read("/data/out.txt") {
        Ok(back) if back == data => i64::try_from(back.len()).unwrap_or(i64::MAX),
        Ok(_) => -1000,
        Err(e) => errno(&e),
    }
}

/// Reads `/data/<name index>`: 0 `in.txt`, 1 `../secret.txt` (outside the preopen), 2 a path climbing
/// out of it to the host's `/etc/passwd`; returns its length, or the negated errno.
#[no_mangle]
pub extern "C" fn read_file(which: i32) -> i64 {
    let path = match which {
        0 => "/data/in.txt",
        1 => "/data/../secret.txt",
        _ => "/data/../../../../../../etc/passwd",
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            println!("read {path}: {}", String::from_utf8_lossy(&bytes));
            i64::try_from(bytes.len()).unwrap_or(i64::MAX)
        }
        Err(e) => {
            eprintln!("read {path}: {e}");
            errno(&e)
        }
    }
}

broker_guest::watch_callback!(fn sleepy(_user_data, _event) {
    println!("callback sleeping");
    std::thread::sleep(Duration::from_secs(3600));
});

/// Watches region `data` with a callback that sleeps for an hour (a hostile callback: only its budget
/// or the host's stop can end it); returns the handle, kept open.
#[no_mangle]
pub extern "C" fn watch_and_sleep() -> i64 {
    ret(Region::open("data").and_then(|r| {
        r.watch(sleepy, 0)?;
        Ok(u64::from(r.into_raw()))
    }))
}

/// Writes `mib` MiB of newlines to stdout in one `write`; returns the bytes written or the negated
/// errno.
#[no_mangle]
pub extern "C" fn big_write(mib: i32) -> i64 {
    let buf = vec![b'\n'; usize::try_from(mib).unwrap_or(0) << 20];
    match std::io::stdout().write(&buf) {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(e) => errno(&e),
    }
}

/// Writes `n` newlines to stdout in one `write`; returns the bytes written or the negated errno.
#[no_mangle]
pub extern "C" fn big_write_bytes(n: i64) -> i64 {
    let buf = vec![b'\n'; usize::try_from(n).unwrap_or(0)];
    match std::io::stdout().write(&buf) {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(e) => errno(&e),
    }
}
