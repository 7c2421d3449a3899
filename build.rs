//! Compiles the local API with protox (pure Rust, so no system `protoc` is needed)
//! and writes the descriptor set that server reflection serves.
//!
//! Messages and the client come from `config.proto` as usual. The server is
//! described by hand below because three of its responses carry entries that the
//! store encoded once per change: their Rust types hold those bytes
//! (`api::wire`), and their wire format is the one `config.proto` declares.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

const PROTO: &str = "proto/veltrix/config/v1/config.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let fds = protox::compile([PROTO], ["proto"])?;
    fs::write(out_dir.join("veltrix_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(false).bytes(".veltrix.config.v1.Entry.json").compile_fds(fds)?;

    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::api::proto::{input}"))
            .output_type(output)
            .codec_path("crate::api::wire::RequestCodec")
    };
    let service = tonic_build::manual::Service::builder()
        .name("ConfigService")
        .package("veltrix.config.v1")
        .method(method("get", "Get", "GetRequest", "crate::api::wire::GetReply").build())
        .method(method("batch_get", "BatchGet", "BatchGetRequest", "crate::api::wire::BatchGetReply").build())
        .method(method("list", "List", "ListRequest", "crate::api::proto::ListResponse").build())
        .method(method("watch", "Watch", "WatchRequest", "crate::api::wire::WatchReply").server_streaming().build())
        .method(method("status", "Status", "StatusRequest", "crate::api::proto::StatusResponse").build())
        .build();
    tonic_build::manual::Builder::new().build_client(false).out_dir(&out_dir).compile(&[service]);
    Ok(())
}
