//! End-to-end tests live in `tests/`; run them with `e2e/run.sh`.
