//! DeepIntShield: an LLM API gateway with a thread-per-core HTTP front on `may` and pinned,
//! bounded per-provider worker pools. The binary (`src/main.rs`) wires these modules together.

// The `fault-injection` feature compiles in triggers that let a request panic or stall a worker
// (the built-in mock's `__panic__` and `__stall__` models), for the end-to-end tests. A release
// build must never carry them.
#[cfg(all(feature = "fault-injection", not(debug_assertions)))]
compile_error!("the fault-injection feature is for test builds only, never a release build");

pub mod admin;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod cost;
pub mod error;
pub mod formats;
pub mod handoff;
pub mod http;
pub mod job;
pub mod log;
pub mod objpool;
pub mod plugins;
pub mod pool;
pub mod providers;
pub mod route;
pub mod service;
pub mod stats;
pub mod store;
