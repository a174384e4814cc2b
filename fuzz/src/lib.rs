//! Shared pieces of the fuzz targets: independent models of what a canonical path is and
//! of how backends resolve one, and the fixtures (keys, policies, routes) the targets
//! compile once per process.
//!
//! Every `check_*` function returns `Err(description)` when an invariant breaks; the
//! targets turn that into a panic, which libFuzzer reports as a crash with the input.

#![forbid(unsafe_code)]

pub mod fixture;
pub mod paths;

/// Panics with the message when an invariant check failed (the fuzz targets' "assert").
#[track_caller]
pub fn ensure(result: Result<(), String>) {
    if let Err(e) = result {
        panic!("invariant broken: {e}");
    }
}
