//! Integration tests: real servers on 127.0.0.1:0 and unix sockets in temp dirs, asserted
//! through a tonic client, and the real binary for the command line.

mod admin;
mod api;
mod cli;
mod deploy;
mod engine;
mod etcd;
mod examples;
mod files;
mod last_known_good;
mod relay;
mod resolve;
mod services;
mod support;
mod watch;
mod zookeeper;
