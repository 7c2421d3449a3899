//! `veltrix-sidecar bench`: commands that print figures.
//!
//! - `bench resolve`: the configuration layer, and Get latency while it works;
//! - `bench load`: a load generator for a running sidecar's API;
//! - `bench startup`: time to a first Get and idle memory of a sidecar process.

mod load;
mod resolve;
mod startup;

pub use load::{LoadBench, Rpc, load};
pub use resolve::{ResolveBench, resolve};
pub use startup::{StartupBench, startup};
