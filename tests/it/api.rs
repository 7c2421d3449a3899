//! Get, BatchGet, List, Status, health and reflection, and what bad requests get.

use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;
use veltrix_sidecar::{
    api::{
        proto::{self, ValueFormat},
        wire::from_proto_value,
    },
    store::StoreLimits,
};

use crate::support::*;

const FILES: &[(&str, &str)] = &[
    ("matchmaking/queues.yaml", "queues:\n  - id: solo\n    team_size: 1\n"),
    ("matchmaking/rules.json", r#"{"backfill": true, "max_party": 4}"#),
    ("economy/currencies.toml", "[gold]\ncap = 1000000\n"),
];

#[tokio::test]
async fn get_batch_get_and_list_answer_over_tcp_and_unix_socket() {
    let sidecar = Sidecar::start(FILES).await;
    for mut client in [sidecar.client().await, sidecar.unix_client().await] {
        let (value, mod_revision) = get_json(&mut client, "matchmaking/queues").await.expect("get");
        assert_eq!(value, json!({"queues": [{"id": "solo", "team_size": 1}]}));
        assert_eq!(mod_revision, 1);

        let batch = client
            .batch_get(proto::BatchGetRequest {
                keys: vec!["economy/currencies".into(), "nope".into(), "matchmaking/rules".into()],
                format: 0,
                ..Default::default()
            })
            .await
            .expect("batch get")
            .into_inner();
        assert_eq!(batch.revision, 1);
        assert_eq!(batch.missing, ["nope"]);
        let keys: Vec<&str> = batch.entries.iter().map(|entry| entry.key.as_str()).collect();
        assert_eq!(keys, ["economy/currencies", "matchmaking/rules"], "request order");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&batch.entries[0].json).ok(),
            Some(json!({"gold": {"cap": 1000000}}))
        );

        let list = client.list(proto::ListRequest { prefix: "matchmaking/".into() }).await.expect("list").into_inner();
        let listed: Vec<(&str, u64)> = list.keys.iter().map(|k| (k.key.as_str(), k.mod_revision)).collect();
        assert_eq!(listed, [("matchmaking/queues", 1), ("matchmaking/rules", 1)]);
        let all = client.list(proto::ListRequest { prefix: String::new() }).await.expect("list").into_inner();
        assert_eq!(all.keys.len(), 3);
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn values_come_as_protobuf_value_on_request() {
    let sidecar = Sidecar::start(FILES).await;
    let mut client = sidecar.client().await;
    let response = client
        .get(proto::GetRequest {
            key: "matchmaking/rules".into(),
            format: ValueFormat::Proto.into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    let entry = response.entry.expect("entry");
    assert!(entry.json.is_empty(), "only the format asked for is sent");
    let value = entry.value.as_ref().map(from_proto_value).expect("a value");
    assert_eq!(value, json!({"backfill": true, "max_party": 4.0}));
    sidecar.stop().await;
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_naming_the_rule() {
    let sidecar = Sidecar::start(FILES).await;
    let mut client = sidecar.client().await;
    let long = "k".repeat(513);
    let cases = [
        ("", "key is empty"),
        ("a/../b", "key has a '..' segment"),
        ("a//b", "empty segment"),
        ("/matchmaking/queues", "must not start with '/'"),
        (long.as_str(), "513 bytes long, over the limit of 512"),
        ("a b", "the character ' '"),
    ];
    for (key, rule) in cases {
        let status = get_json(&mut client, key).await.expect_err(key);
        assert_eq!(status.code(), Code::InvalidArgument, "{key:?}: {status:?}");
        assert!(status.message().contains(rule), "{key:?}: {:?} should name {rule:?}", status.message());
    }

    // Non-UTF-8 cannot be put in a proto string by a well-behaved client, so send the
    // raw bytes: field 1 (key), length 2, 0xff 0xfe.
    let status = raw_get(&sidecar.addr, &[0x0a, 0x02, 0xff, 0xfe]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");

    let status = get_json(&mut client, "no/such/key").await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("no/such/key"));

    let too_many = (0..1001).map(|n| format!("k{n}")).collect();
    let status = client
        .batch_get(proto::BatchGetRequest { keys: too_many, format: 0, ..Default::default() })
        .await
        .expect_err("limit");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("1001 keys in one request, over the limit of 1000"), "{status:?}");

    let status = client
        .batch_get(proto::BatchGetRequest {
            keys: vec!["ok".into(), "bad//key".into()],
            format: 0,
            ..Default::default()
        })
        .await
        .expect_err("bad key in a batch");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = client.list(proto::ListRequest { prefix: "../".into() }).await.expect_err("bad prefix");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = client
        .watch(proto::WatchRequest { prefixes: vec!["a//".into()], ..Default::default() })
        .await
        .expect_err("bad watch prefix");
    assert_eq!(status.code(), Code::InvalidArgument);
    sidecar.stop().await;
}

/// Sends a Get whose body is `message` as-is, bypassing the client's encoder.
async fn raw_get(addr: &str, message: &[u8]) -> tonic::Status {
    use tonic_prost::ProstCodec;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/veltrix.config.v1.ConfigService/Get");
    let request = tonic::Request::new(RawBytes(message.to_vec()));
    let result: Result<tonic::Response<proto::GetResponse>, _> =
        grpc.unary(request, path, ProstCodec::<RawBytes, proto::GetResponse>::default()).await;
    result.expect_err("rejected")
}

/// A message that encodes to exactly its bytes.
#[derive(Clone, Default, Debug)]
struct RawBytes(Vec<u8>);

impl prost::Message for RawBytes {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        _: u32,
        _: prost::encoding::WireType,
        _: &mut impl bytes::Buf,
        _: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        Ok(())
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

#[tokio::test]
async fn before_the_first_snapshot_reads_are_unavailable_and_health_is_not_serving() {
    let mut server = StoreServer::start(StoreLimits { history: 10, watch_backlog: 10 }, default_api_limits()).await;
    let mut client = server.client().await;
    let status = get_json(&mut client, "a").await.expect_err("no snapshot yet");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = client.list(proto::ListRequest::default()).await.expect_err("no snapshot yet");
    assert_eq!(status.code(), Code::Unavailable);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = |service: &str| tonic_health::pb::HealthCheckRequest { service: service.into() };
    use tonic_health::pb::health_check_response::ServingStatus;
    for service in ["", "veltrix.config.v1.ConfigService"] {
        let answer = health.check(check(service)).await.expect("health").into_inner();
        assert_eq!(answer.status(), ServingStatus::NotServing, "{service:?}");
    }
    let mut health_watch = health.watch(check("")).await.expect("health watch").into_inner();
    assert_eq!(health_watch.next().await.and_then(Result::ok).map(|m| m.status()), Some(ServingStatus::NotServing));

    server.publish(&[("a", Some(json!({"v": 1})))]);
    let serving = within("health to say SERVING", health_watch.next()).await.and_then(Result::ok);
    assert_eq!(serving.map(|m| m.status()), Some(ServingStatus::Serving));
    assert_eq!(get_json(&mut client, "a").await.expect("served").0, json!({"v": 1}));
}

#[tokio::test]
async fn status_reports_upstream_revision_and_labels() {
    let labels = [("region".to_owned(), "eu".to_owned())].into_iter().collect();
    let extra = veltrix_sidecar::config::RawSettings { labels: Some(labels), ..Default::default() };
    let sidecar = Sidecar::start_with(FILES, extra).await;
    let mut client = sidecar.client().await;
    let status = client.status(proto::StatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.upstream_kind, "file");
    assert!(status.upstream_healthy);
    assert!(status.last_sync.is_some());
    assert_eq!(status.revision, 1);
    assert_eq!(status.keys, 3);
    assert!(status.rejections.is_empty());
    assert_eq!(status.labels.get("region").map(String::as_str), Some("eu"));
    sidecar.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let sidecar = Sidecar::start(FILES).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", sidecar.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.expect("reflection").into_inner();
    let response = responses.next().await.expect("a response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
    assert!(names.contains(&"veltrix.config.v1.ConfigService".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
    sidecar.stop().await;
}
