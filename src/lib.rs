//! DeepIntShield: an LLM API gateway with a thread-per-core HTTP front on `may` and pinned,
//! bounded per-provider worker pools. The binary (`src/main.rs`) wires these modules together.

pub mod admin;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod cost;
pub mod error;
pub mod formats;
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
