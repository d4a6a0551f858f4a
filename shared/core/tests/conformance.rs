//! The conformance suite against the in-memory store.

dearsync_core::conformance_suite!(dearsync_core::conformance::MemoryFactory);
