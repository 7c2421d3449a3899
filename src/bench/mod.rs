//! `veltrix-sidecar bench`: commands that print figures.
//!
//! - `bench resolve`: the configuration layer, and Get latency while it works;
//! - `bench load`: a load generator for a running sidecar's API;
//! - `bench fanout`: watch fan-out from etcd alone and through a relay;
//! - `bench startup`: time to a first Get and idle memory of a sidecar process.

mod fanout;
mod load;
mod resolve;
mod startup;

pub use fanout::{FanoutBench, fanout};
pub use load::{LoadBench, Rpc, load};
pub use resolve::{ResolveBench, resolve};
pub use startup::{StartupBench, startup};
