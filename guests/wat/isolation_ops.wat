;; isolation_ops: a hostile guest written in raw instructions, so no library filters what it does.
;;
;; It maps shared windows through the raw imports and runs single wasm instructions at addresses the host
;; chooses, including inside read-only, read-write and revoked windows: plain loads and stores, SIMD,
;; `memory.fill`/`memory.copy`/`memory.init` (which wasmtime runs as host-side helpers), atomics, and
;; WASI calls that write where the guest points (wasmtime-wasi's host code writing into a window).
;; Tests and the instruction-level fuzzer (`tests/src/fuzz.rs`) drive it.
(module
  (import "broker_v1" "region_open" (func $region_open (param i32 i32 i32) (result i32)))
  (import "broker_v1" "region_map" (func $region_map (param i32 i32 i32 i32) (result i32)))
  (import "broker_v1" "region_unmap" (func $region_unmap (param i32 i32) (result i32)))
  (import "broker_v1" "region_read" (func $region_read (param i32 i64 i32 i32) (result i32)))
  (import "broker_v1" "region_write" (func $region_write (param i32 i64 i32 i32) (result i32)))
  (import "broker_v1" "handle_close" (func $handle_close (param i32) (result i32)))
  (import "broker_v1" "nop" (func $nop (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))

  ;; 4 MiB; windows go at addresses the host picks (page aligned, above 1 MiB by convention).
  (memory (export "memory") 64)

  ;; A passive segment for memory.init: 256 bytes of 0x5a.
  (data $seg "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ")

  ;; Opens the region whose name the host wrote at [ptr, ptr+len); returns the handle (a u32, so
  ;; widened to i64 unsigned), or the (negative) status.
  (func (export "open") (param $ptr i32) (param $len i32) (result i64)
    (local $rc i32)
    (local.set $rc (call $region_open (local.get $ptr) (local.get $len) (i32.const 16)))
    (if (result i64) (i32.eqz (local.get $rc))
      (then (i64.extend_i32_u (i32.load (i32.const 16))))
      (else (i64.extend_i32_s (local.get $rc)))))

  (func (export "map") (param $h i32) (param $ptr i32) (param $len i32) (param $flags i32) (result i32)
    (call $region_map (local.get $h) (local.get $ptr) (local.get $len) (local.get $flags)))

  (func (export "unmap") (param $h i32) (param $ptr i32) (result i32)
    (call $region_unmap (local.get $h) (local.get $ptr)))

  (func (export "close") (param $h i32) (result i32)
    (call $handle_close (local.get $h)))

  ;; Host calls whose guest pointers are the arguments: they must refuse windows they may not touch.
  (func (export "read") (param $h i32) (param $dst i32) (param $len i32) (result i32)
    (call $region_read (local.get $h) (i64.const 0) (local.get $dst) (local.get $len)))
  (func (export "write") (param $h i32) (param $src i32) (param $len i32) (result i32)
    (call $region_write (local.get $h) (i64.const 0) (local.get $src) (local.get $len)))

  ;; One instruction. `a` is the address, `b` a value or second address, `n` a length.
  ;;  0 i32.load a          1 i32.store a b         2 memory.fill a b n    3 memory.copy a <- b, n
  ;;  4 memory.copy b <- a  5 memory.init a (seg+b&127), n&127             6 i32.atomic.rmw.add a b
  ;;  7 memory.atomic.notify a       8 memory.atomic.wait32 a b (0 ns)      9 v128.store a (splat b)
  ;; 10 i32.store8 a b     11 i64.atomic.load a    12 nop host call        13 i32.atomic.store a b
  ;; 14 WASI random_get a n (n bytes at a)          15 WASI clock_time_get (8 bytes at a)
  (func $op (export "op") (param $kind i32) (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $done (result i32)
      (block $k15 (block $k14 (block $k13 (block $k12 (block $k11 (block $k10 (block $k9 (block $k8 (block $k7
      (block $k6 (block $k5 (block $k4 (block $k3 (block $k2 (block $k1 (block $k0
        (br_table $k0 $k1 $k2 $k3 $k4 $k5 $k6 $k7 $k8 $k9 $k10 $k11 $k12 $k13 $k14 $k15 (local.get $kind)))
        (br $done (i32.load (local.get $a))))
        (i32.store (local.get $a) (local.get $b)) (br $done (i32.const 0)))
        (memory.fill (local.get $a) (local.get $b) (local.get $n)) (br $done (i32.const 0)))
        (memory.copy (local.get $a) (local.get $b) (local.get $n)) (br $done (i32.const 0)))
        (memory.copy (local.get $b) (local.get $a) (local.get $n)) (br $done (i32.const 0)))
        (memory.init $seg (local.get $a)
          (i32.and (local.get $b) (i32.const 127)) (i32.and (local.get $n) (i32.const 127)))
        (br $done (i32.const 0)))
        (br $done (i32.atomic.rmw.add (local.get $a) (local.get $b))))
        (br $done (memory.atomic.notify (local.get $a) (i32.const 1))))
        (br $done (memory.atomic.wait32 (local.get $a) (local.get $b) (i64.const 0))))
        (v128.store (local.get $a) (i32x4.splat (local.get $b))) (br $done (i32.const 0)))
        (i32.store8 (local.get $a) (local.get $b)) (br $done (i32.const 0)))
        (br $done (i32.wrap_i64 (i64.atomic.load (local.get $a)))))
        (br $done (call $nop)))
        (i32.atomic.store (local.get $a) (local.get $b)) (br $done (i32.const 0)))
        (br $done (call $random_get (local.get $a) (local.get $n))))
        (br $done (call $clock_time_get (i32.const 0) (i64.const 0) (local.get $a))))
    ;; (Unknown kinds take br_table's default, the last case.)
  )

  ;; `count` times the same instruction at a, a+stride, ... (wrapping inside [a, a+span)), so a fuzzer
  ;; runs many instructions per call; returns how many ran.
  (func (export "repeat") (param $kind i32) (param $a i32) (param $b i32) (param $n i32)
      (param $count i32) (param $stride i32) (param $span i32) (result i32)
    (local $i i32)
    (block $out
      (loop $next
        (br_if $out (i32.ge_u (local.get $i) (local.get $count)))
        (drop (call $op (local.get $kind)
          (i32.add (local.get $a)
            (i32.rem_u (i32.mul (local.get $i) (local.get $stride)) (i32.add (local.get $span) (i32.const 1))))
          (local.get $b) (local.get $n)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $i))
)
