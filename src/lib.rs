//! veltrix-sidecar: the configuration layer of an engine process, moved next to it.
//!
//! The engine asks over localhost gRPC and is answered from memory; the sidecar follows
//! the upstream, parses and publishes changes off the request path, and pushes them to
//! Watch streams. Modules in reading order: the shared vocabulary, the pure
//! configuration layer, the store, sources and the sync loop that feeds the store, the
//! API that reads it, and the process around them.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod app;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod metrics;
pub mod model;
pub mod relay;
pub mod resolve;
pub mod source;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;
