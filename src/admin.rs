//! The admin HTTP server: metrics, probes and debug views, on its own port.
//!
//! `/metrics`, `/healthz` and `/readyz` answer anyone who can reach the port (Prometheus
//! and the kubelet scrape the pod's address); `/debug/*` answers loopback clients only,
//! since it shows configuration.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc, sync::atomic::Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    app::Shared,
    metrics::{self, Gauges, RelayGauges},
    resolve::Resolver,
    telemetry::LogControl,
};

/// Field names whose values `/debug/config` never shows.
const SECRET_WORDS: [&str; 4] = ["secret", "password", "token", "key"];
/// Largest request body read (a log filter).
const MAX_BODY_BYTES: usize = 4096;

type Reply = Response<Full<Bytes>>;

/// Serves until `drain` fires.
pub async fn serve(listener: TcpListener, admin: Arc<Shared>, drain: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving the admin endpoints");
    }
    let mut connections = JoinSet::new();
    while let Some((stream, peer)) = crate::app::accept(&listener, &drain).await {
        let admin = admin.clone();
        let service = service_fn(move |request| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(handle(&admin, peer, request).await) }
        });
        connections.spawn(async move {
            if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(%error, "admin connection ended");
            }
        });
        // Reap finished connections so that the set does not grow.
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(admin: &Shared, peer: SocketAddr, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_owned();
    if path.starts_with("/debug/") && !peer.ip().is_loopback() {
        return text(StatusCode::FORBIDDEN, "debug endpoints answer loopback clients only\n");
    }
    match (request.method(), path.as_str()) {
        (&Method::GET, "/metrics") => {
            let body = metrics::render(&admin.metrics, &gauges(admin));
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if admin.store.snapshot().is_ready() && admin.relay.as_ref().is_none_or(|hub| hub.state().ready) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "no configuration loaded yet\n")
            }
        }
        (&Method::GET, "/debug/config") => {
            let body = serde_json::to_string_pretty(&debug_config(admin)).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body + "\n")
        }
        (&Method::GET, "/debug/graph") => reply(StatusCode::OK, "text/vnd.graphviz", debug_graph(admin)),
        (&Method::GET, "/debug/log-level") => match LogControl::get() {
            Some(control) => text(StatusCode::OK, &format!("{}\n", control.current())),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "logging is not controlled by this process\n"),
        },
        (&Method::PUT, "/debug/log-level") => set_log_level(request).await,
        (_, "/metrics" | "/healthz" | "/readyz" | "/debug/config" | "/debug/graph" | "/debug/log-level") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz, /debug/config, /debug/graph, /debug/log-level\n",
        ),
    }
}

async fn set_log_level(request: Request<Incoming>) -> Reply {
    let Some(control) = LogControl::get() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "logging is not controlled by this process\n");
    };
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return text(StatusCode::BAD_REQUEST, &format!("cannot read the body: {error}\n")),
    };
    let Ok(directives) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the body must be a log filter in UTF-8\n");
    };
    match control.set(directives) {
        Ok(()) => {
            info!(filter = %control.current(), "log filter changed");
            text(StatusCode::OK, &format!("{}\n", control.current()))
        }
        Err(reason) => text(StatusCode::BAD_REQUEST, &format!("{reason}\n")),
    }
}

fn gauges(admin: &Shared) -> Gauges {
    let snapshot = admin.store.snapshot();
    let upstream = admin.upstream.state();
    Gauges {
        revision: snapshot.revision,
        upstream_revision: upstream.revision,
        upstream_connected: upstream.healthy,
        last_sync: upstream.last_sync,
        modules_served: snapshot.entries.len(),
        modules_rejected: admin.store.rejections().len(),
        watch_streams: admin.store.watchers.load(Ordering::Relaxed),
        resyncs_sent: admin.store.resyncs_sent.load(Ordering::Relaxed),
        slow_reader_resyncs: admin.store.lagged_resyncs.load(Ordering::Relaxed),
        context_cache_entries: admin.context.entry_count(),
        serving_from_last_known_good: upstream.serving_from_last_known_good,
        relay: admin.relay.as_ref().map(|hub| {
            let state = hub.state();
            RelayGauges {
                revision: state.revision,
                documents: state.n_documents(),
                clients: hub.clients.load(Ordering::Relaxed),
                long_polls: hub.long_polls.load(Ordering::Relaxed),
                resyncs_sent: hub.resyncs_sent.load(Ordering::Relaxed),
            }
        }),
    }
}

/// The served snapshot, with secret-looking fields redacted at any depth.
fn debug_config(admin: &Shared) -> Value {
    let snapshot = admin.store.snapshot();
    let modules: Map<String, Value> =
        snapshot.entries.iter().map(|(key, entry)| (key.to_string(), redacted(&entry.value))).collect();
    let rejections: Vec<Value> = admin
        .store
        .rejections()
        .iter()
        .map(|rejection| json!({"key": rejection.key, "origin": rejection.origin, "line": rejection.line, "reason": rejection.reason}))
        .collect();
    json!({"revision": snapshot.revision, "labels": admin.labels, "modules": modules, "rejected": rejections})
}

fn redacted(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, field)| {
                    let lower = name.to_ascii_lowercase();
                    if SECRET_WORDS.iter().any(|word| lower.contains(word)) {
                        (name.clone(), Value::String("<redacted>".to_owned()))
                    } else {
                        (name.clone(), redacted(field))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

/// The graph of the served documents under the instance's labels.
fn debug_graph(admin: &Shared) -> String {
    let snapshot = admin.store.snapshot();
    let mut resolver = Resolver::new(admin.labels.clone());
    resolver.apply(snapshot.modules.documents().map(|(name, document)| (name, Some(document))));
    let rejected: BTreeMap<String, String> =
        admin.store.rejections().iter().map(|rejection| (rejection.key.clone(), rejection.reason.clone())).collect();
    crate::resolve::dot(&resolver, &rejected)
}

fn text(status: StatusCode, body: &str) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.to_owned())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::redacted;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let value = json!({
            "db": {"host": "h", "Password": "p", "api_key": "k", "tokens": ["t"]},
            "list": [{"client_secret": "s", "name": "n"}],
            "plain": 1
        });
        assert_eq!(
            redacted(&value),
            json!({
                "db": {"host": "h", "Password": "<redacted>", "api_key": "<redacted>", "tokens": "<redacted>"},
                "list": [{"client_secret": "<redacted>", "name": "n"}],
                "plain": 1
            })
        );
    }
}
