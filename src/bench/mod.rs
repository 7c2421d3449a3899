//! `veltrix-sidecar bench`: commands that print figures.
//!
//! - `bench resolve`: the configuration layer, and Get latency while it works;
//! - `bench load`: a load generator for a running sidecar's API;
//! - `bench fanout`: watch fan-out from etcd alone and through a relay.

mod fanout;
mod load;
mod resolve;

pub use fanout::{FanoutBench, fanout};
pub use load::{LoadBench, Rpc, load};
pub use resolve::{ResolveBench, resolve};
