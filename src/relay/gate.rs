//! In front of every service on a relay's listener: the bearer token, and the long-poll
//! route beside the gRPC ones.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tonic::{
    Status,
    body::Body,
    codegen::http,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};
use tracing::warn;

use super::{Hub, http as long_poll};
use crate::metrics::Metrics;

/// A shared secret; never printed.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// `None` for an empty token, which would let anyone in.
    pub fn new(text: &str) -> Option<Token> {
        let text = text.trim_end_matches(['\r', '\n']);
        (!text.is_empty()).then(|| Token(text.into()))
    }

    /// The `authorization` header value that carries it.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether `header` carries this token, in time that does not depend on where the
    /// two first differ.
    fn admits(&self, header: Option<&http::HeaderValue>) -> bool {
        let Some(given) = header.and_then(|value| value.as_bytes().strip_prefix(b"Bearer ")) else { return false };
        bool::from(given.ct_eq(self.0.as_bytes()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(redacted)")
    }
}

#[derive(Clone)]
pub struct Gate {
    pub token: Option<Token>,
    /// Serves `/v1/watch` when set (the relay role).
    pub hub: Option<Arc<Hub>>,
    pub metrics: Arc<Metrics>,
    pub drain: CancellationToken,
}

impl<S> Layer<S> for Gate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated { gate: self.clone(), inner }
    }
}

#[derive(Clone)]
pub struct Gated<S> {
    gate: Gate,
    inner: S,
}

impl<S> Service<http::Request<Body>> for Gated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let long_poll = request.uri().path() == long_poll::WATCH_PATH;
        if let Some(token) = &self.gate.token {
            if !token.admits(request.headers().get(http::header::AUTHORIZATION)) {
                self.gate.metrics.unauthenticated.fetch_add(1, Ordering::Relaxed);
                let peer = peer(&request).map(|peer| peer.to_string()).unwrap_or_else(|| "unknown".to_owned());
                warn!(%peer, path = request.uri().path(), "refused a request without the right bearer token");
                let response = if long_poll {
                    let mut response =
                        long_poll::error(http::StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                    response
                        .headers_mut()
                        .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
                    response
                } else {
                    Status::unauthenticated("missing or wrong bearer token").into_http()
                };
                return Box::pin(async move { Ok(response) });
            }
        }
        if long_poll {
            if let Some(hub) = self.gate.hub.clone() {
                let drain = self.gate.drain.clone();
                let (parts, _) = request.into_parts();
                return Box::pin(async move { Ok(long_poll::watch(hub, parts, drain).await) });
            }
        }
        // The inner service was polled ready; the clone takes its place for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

fn peer<B>(request: &http::Request<B>) -> Option<std::net::SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.get_ref().remote_addr()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = Token::new("s3cret\n").expect("not empty");
        let header = |text: &str| http::HeaderValue::from_str(text).expect("valid header");
        assert!(token.admits(Some(&header("Bearer s3cret"))));
        assert!(!token.admits(Some(&header("Bearer s3cre"))));
        assert!(!token.admits(Some(&header("Bearer s3cret2"))));
        assert!(!token.admits(Some(&header("bearer s3cret"))));
        assert!(!token.admits(Some(&header("s3cret"))));
        assert!(!token.admits(None));
        assert!(Token::new("\n").is_none());
        assert_eq!(format!("{token:?}"), "Token(redacted)");
    }
}
