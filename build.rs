//! Compiles the local API and the relay API with protox (pure Rust, so no system `protoc` is needed)
//! and writes the descriptor set that server reflection serves.
//!
//! Messages and the client come from `config.proto` as usual. The server is generated
//! from the same service definition through tonic's manual builder, because three of
//! its replies carry entries that the store encoded once per change: their Rust types
//! hold those bytes (`api::wire`), and their wire format is the one `config.proto`
//! declares.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

const PROTO: &str = "proto/veltrix/config/v1/config.proto";
const RELAY_PROTO: &str = "proto/veltrix/relay/v1/relay.proto";
const ETCD_PROTO: &str = "proto/etcd/api/etcdserverpb/rpc.proto";
const PACKAGE: &str = "veltrix.config.v1";
const SERVICE: &str = "ConfigService";
/// Replies whose entries the store encodes once per change: (proto message, `api::wire` type).
const PRE_ENCODED: &[(&str, &str)] =
    &[("GetResponse", "GetReply"), ("BatchGetResponse", "BatchGetReply"), ("WatchResponse", "WatchReply")];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed={RELAY_PROTO}");
    println!("cargo:rerun-if-changed=proto/etcd");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let fds = protox::compile([PROTO], ["proto"])?;
    let server_fds = fds.clone();
    fs::write(out_dir.join("veltrix_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(false).bytes(".veltrix.config.v1.Entry.json").compile_fds(fds)?;

    // The server's methods come from the proto's own service definition; only the
    // replies listed in PRE_ENCODED use a Rust type other than the generated one.
    let mut service = tonic_build::manual::Service::builder().name(SERVICE).package(PACKAGE);
    let methods = server_fds
        .file
        .iter()
        .flat_map(|file| &file.service)
        .filter(|service| service.name() == SERVICE)
        .flat_map(|service| &service.method);
    for method in methods {
        let input = method.input_type().rsplit('.').next().unwrap_or_default();
        let output = method.output_type().rsplit('.').next().unwrap_or_default();
        let output_path = match PRE_ENCODED.iter().find(|(message, _)| *message == output) {
            Some((_, wire)) => format!("crate::api::wire::{wire}"),
            None => format!("crate::api::proto::{output}"),
        };
        let mut builder = tonic_build::manual::Method::builder()
            .name(snake_case(method.name()))
            .route_name(method.name())
            .input_type(format!("crate::api::proto::{input}"))
            .output_type(output_path)
            .codec_path("crate::api::wire::RequestCodec");
        if method.server_streaming() {
            builder = builder.server_streaming();
        }
        if method.client_streaming() {
            builder = builder.client_streaming();
        }
        service = service.method(builder.build());
    }
    // What relays serve to sidecars: client and server, as generated.
    let relay_fds = protox::compile([RELAY_PROTO], ["proto"])?;
    fs::write(out_dir.join("relay_descriptor.bin"), relay_fds.encode_to_vec())?;
    tonic_prost_build::configure().bytes(".veltrix.relay.v1.Document.content").compile_fds(relay_fds)?;

    // The etcd v3 API, for the etcd source: clients only.
    let etcd_fds = protox::compile([ETCD_PROTO], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(etcd_fds)?;

    tonic_build::manual::Builder::new().build_client(false).out_dir(&out_dir).compile(&[service.build()]);
    Ok(())
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (n, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && n > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
