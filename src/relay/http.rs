//! The long-poll twin of the relay's Watch, for networks whose proxies cut long-lived
//! HTTP/2 streams: `GET /v1/watch?prefix=P&since=REV&epoch=E&wait=30s` answers as soon as
//! there is something after REV, or with `no_change` when the wait ends.
//! docs/relay-protocol.md is the reference.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{body::Body, codegen::http};

use super::{ClientGuard, Hub, Position, Reply, ReplyKind};

pub const WATCH_PATH: &str = "/v1/watch";
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(300);
const UNREADY: &str = "the relay has not read its upstream yet; try another relay or again later";

#[derive(Debug, PartialEq, Eq)]
struct Query {
    prefix: String,
    at: Option<Position>,
    wait: Duration,
}

fn parse_query(query: &str) -> Result<Query, String> {
    let (mut prefix, mut since, mut epoch, mut wait) = (String::new(), 0, String::new(), DEFAULT_WAIT);
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(&value.replace('+', " "))
            .decode_utf8()
            .map_err(|_| format!("{name}: not UTF-8 once percent-decoded"))?
            .into_owned();
        match name {
            "prefix" => prefix = value,
            "since" => {
                since = value
                    .parse::<i64>()
                    .ok()
                    .filter(|since| *since >= 0)
                    .ok_or_else(|| format!("since: {value:?} is not a revision (0 or more)"))?;
            }
            "epoch" => epoch = value,
            "wait" => {
                wait = crate::config::duration("wait", &value).map_err(|error| error.to_string())?;
                if wait > MAX_WAIT {
                    return Err(format!("wait: {value} is longer than the limit of {}s", MAX_WAIT.as_secs()));
                }
            }
            other => return Err(format!("unknown parameter {other:?}; known: prefix, since, epoch, wait")),
        }
    }
    let at = (since > 0).then(|| Position { epoch: epoch.into(), revision: since });
    Ok(Query { prefix, at, wait })
}

/// Answers one long-poll.
pub async fn watch(hub: Arc<Hub>, request: http::request::Parts, drain: CancellationToken) -> http::Response<Body> {
    if request.method != http::Method::GET {
        return error(http::StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let query = match parse_query(request.uri.query().unwrap_or("")) {
        Ok(query) => query,
        Err(reason) => return error(http::StatusCode::BAD_REQUEST, &reason),
    };
    if !hub.state().ready {
        return error(http::StatusCode::SERVICE_UNAVAILABLE, UNREADY);
    }
    hub.long_polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _guard = ClientGuard::new(hub.clone());
    let deadline = Instant::now() + query.wait;
    let mut states = hub.subscribe();
    let mut at = query.at;
    loop {
        let state = states.borrow_and_update().clone();
        if state.ready {
            let reply = state.reply(&query.prefix, at.as_ref());
            if reply.kind != ReplyKind::NoChange {
                hub.count(&reply);
                return json_reply(&reply);
            }
            at = Some(reply.position());
        }
        tokio::select! {
            _ = drain.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            changed = states.changed() => if changed.is_err() { break },
        }
    }
    match at {
        Some(at) => json_reply(&Reply {
            kind: ReplyKind::NoChange,
            epoch: at.epoch,
            revision: at.revision,
            documents: Vec::new(),
        }),
        None => error(http::StatusCode::SERVICE_UNAVAILABLE, UNREADY),
    }
}

fn json_reply(reply: &Reply) -> http::Response<Body> {
    let kind = match reply.kind {
        ReplyKind::Snapshot => "snapshot",
        ReplyKind::Changes => "changes",
        ReplyKind::Resync => "resync",
        ReplyKind::NoChange => "no_change",
    };
    let documents: Vec<Value> = reply
        .documents
        .iter()
        .map(|(name, document)| match document {
            Some(Ok(content)) => match std::str::from_utf8(content) {
                Ok(text) => json!({ "name": name, "content": text }),
                Err(_) => json!({ "name": name, "error": "the document is not UTF-8 text" }),
            },
            Some(Err(reason)) => json!({ "name": name, "error": reason }),
            None => json!({ "name": name, "deleted": true }),
        })
        .collect();
    let body = json!({ "kind": kind, "epoch": &*reply.epoch, "revision": reply.revision, "documents": documents });
    respond(http::StatusCode::OK, body)
}

pub fn error(status: http::StatusCode, reason: &str) -> http::Response<Body> {
    respond(status, json!({ "error": reason }))
}

fn respond(status: http::StatusCode, body: Value) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_with_defaults_and_percent_decoding() {
        let query = parse_query("prefix=game%2Fmatch&since=42&epoch=etcd%3A%2F%2Fa&wait=500ms").expect("valid");
        assert_eq!(query.prefix, "game/match");
        assert_eq!(query.at, Some(Position { epoch: "etcd://a".into(), revision: 42 }));
        assert_eq!(query.wait, Duration::from_millis(500));
        assert_eq!(parse_query("").expect("valid"), Query { prefix: String::new(), at: None, wait: DEFAULT_WAIT });
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        assert!(parse_query("since=-1").unwrap_err().contains("since"));
        assert!(parse_query("since=abc").unwrap_err().contains("since"));
        assert!(parse_query("wait=1h").unwrap_err().contains("wait"));
        assert!(parse_query("wait=10m").unwrap_err().contains("limit"));
        assert!(parse_query("revision=3").unwrap_err().contains("unknown parameter"));
    }
}
