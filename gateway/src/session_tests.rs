//! Unit tests of the session state machine (see `session.rs`).
