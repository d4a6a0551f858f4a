//! What the end-to-end tests share lives in the dev-only crate `dearsync-test-kit`.

#![allow(unused_imports)] // Each test binary uses its own part.

pub use dearsync_test_kit::*;
