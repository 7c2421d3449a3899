//! The floor for `scripts/bench/compare`: a minimal tonic server answering
//! `veltrix.config.v1.ConfigService/Get` with one fixed reply of a given size, and nothing
//! else. Whatever the sidecar adds on top of this is its own cost.
//!
//! `cargo run --release --example floor -- 127.0.0.1:7400 200`

use std::{net::SocketAddr, pin::Pin};

use bytes::Bytes;
use prost::Message;
use tonic::{Request, Response, Status, transport::Server};
use veltrix_sidecar::api::{
    ConfigService, ConfigServiceServer,
    proto::{self, Entry},
    wire,
};

struct Floor {
    reply: wire::GetReply,
}

type Never = Pin<Box<dyn tokio_stream::Stream<Item = Result<wire::WatchReply, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigService for Floor {
    async fn get(&self, _: Request<proto::GetRequest>) -> Result<Response<wire::GetReply>, Status> {
        Ok(Response::new(self.reply.clone()))
    }
    async fn batch_get(&self, _: Request<proto::BatchGetRequest>) -> Result<Response<wire::BatchGetReply>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn list(&self, _: Request<proto::ListRequest>) -> Result<Response<proto::ListResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
    type WatchStream = Never;
    async fn watch(&self, _: Request<proto::WatchRequest>) -> Result<Response<Never>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn status(&self, _: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn explain(&self, _: Request<proto::ExplainRequest>) -> Result<Response<proto::ExplainResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().ok_or("usage: floor ADDR BYTES")?.parse()?;
    let size: usize = args.next().ok_or("usage: floor ADDR BYTES")?.parse()?;
    let json = format!("{{\"v\":\"{}\"}}", "x".repeat(size.saturating_sub(8)));
    let entry = Entry { key: "floor".into(), json: Bytes::from(json), value: None, mod_revision: 1 };
    let reply = wire::GetReply { entry: entry.encode_to_vec().into(), revision: 1, epoch: 1 };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder().add_service(ConfigServiceServer::new(Floor { reply })).serve_with_incoming(incoming).await?;
    Ok(())
}
