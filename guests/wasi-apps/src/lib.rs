//! The WASI apps are the examples of this crate (`src/*.rs`, each a cdylib); the library is empty.
