//! The MCP endpoints of a server's pods, `/v1/pods/{name}/mcp`, on the
//! SDK's Streamable HTTP transport. The API has checked the tenant's token
//! and found the pod by (tenant, name) before a request gets here; each
//! pod has an endpoint of its own, with its own sessions, so a session id
//! of one pod means nothing to another pod, of this tenant or any other.
//! The transport checks `Host` (against DNS rebinding) and `Origin`, bounds
//! bodies, and serves both eras: sessions for 2025-11-25 clients (at most
//! `max_sessions_per_pod`, closed when idle), stateless requests for
//! 2026-07-28 ones.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::combinators::BoxBody;
use parking_lot::Mutex;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::ServerSseMessage;
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, LocalSessionManagerError};
use rmcp::transport::streamable_http_server::{
    RestoreOutcome, SessionId, SessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use tokio_util::sync::CancellationToken;

use super::PodServer;
use crate::identity::PodId;
use crate::pod::PodHandle;
use crate::serve::config::McpSection;

/// Largest MCP request body.
const MAX_BODY: usize = 1 << 20;

/// A tenant's MCP endpoints, one per pod, made on first use.
#[derive(Default)]
pub struct Endpoints {
    by_pod: Mutex<HashMap<String, Endpoint>>,
}

#[derive(Clone)]
struct Endpoint {
    pod: PodId,
    service: StreamableHttpService<PodServer, CappedSessions>,
    sessions: Arc<CappedSessions>,
    stop: CancellationToken,
}

impl Endpoint {
    fn new(settings: &McpSection, pod: &PodHandle) -> Endpoint {
        let stop = CancellationToken::new();
        let mut config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(settings.allowed_hosts.clone())
            .with_max_request_body_bytes(MAX_BODY)
            .with_cancellation_token(stop.clone());
        config = match settings.allowed_origins.as_deref() {
            None | Some([]) => config.enforce_origin_validation(),
            Some(origins) => config.with_allowed_origins(origins.to_vec()),
        };
        let mut sessions = LocalSessionManager::default();
        sessions.session_config.keep_alive = Some(Duration::from_secs(settings.session_idle_s));
        let sessions = Arc::new(CappedSessions { inner: sessions, max: settings.max_sessions_per_pod });
        // The tool list is made once; every session and request gets a copy.
        let server = PodServer::new(pod.downgrade());
        let service = StreamableHttpService::new(move || Ok(server.clone()), sessions.clone(), config);
        Endpoint { pod: pod.id.clone(), service, sessions, stop }
    }
}

impl Endpoints {
    /// Serves one HTTP request to `pod`'s endpoint; its body must arrive
    /// within `body_timeout`.
    pub async fn handle(
        &self,
        settings: &McpSection,
        pod: &PodHandle,
        request: http::Request<axum::body::Body>,
        body_timeout: Duration,
    ) -> http::Response<BoxBody<Bytes, Infallible>> {
        let endpoint = {
            let mut by_pod = self.by_pod.lock();
            match by_pod.get(&pod.name) {
                Some(endpoint) if endpoint.pod == pod.id => endpoint.clone(),
                _ => {
                    // A pod of that name made again gets a new endpoint; the
                    // old one's sessions end.
                    let endpoint = Endpoint::new(settings, pod);
                    if let Some(old) = by_pod.insert(pod.name.clone(), endpoint.clone()) {
                        old.stop.cancel();
                    }
                    endpoint
                }
            }
        };
        // A new session past the cap is refused here, with a status that
        // says so; the session manager's own cap is the backstop.
        let (parts, body) = request.into_parts();
        let body = match tokio::time::timeout(body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) if is_too_long(&e) => {
                return plain(http::StatusCode::PAYLOAD_TOO_LARGE, "the MCP message is over 1 MiB".into());
            }
            Ok(Err(e)) => return plain(http::StatusCode::BAD_REQUEST, format!("the request body broke off: {e}")),
            Err(_) => {
                return plain(http::StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time".into());
            }
        };
        if parts.method == http::Method::POST
            && !parts.headers.contains_key("mcp-session-id")
            && is_initialize(&body)
            && endpoint.sessions.full().await
        {
            let message = SessionsError::Full(endpoint.sessions.max).to_string();
            return plain(http::StatusCode::TOO_MANY_REQUESTS, message);
        }
        let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
        endpoint.service.handle(request).await
    }

    /// Ends the sessions of pod `name` (deleted).
    pub fn forget(&self, name: &str) {
        if let Some(endpoint) = self.by_pod.lock().remove(name) {
            endpoint.stop.cancel();
        }
    }

    /// Ends every session (the tenant's pods are stopping).
    pub fn close_all(&self) {
        for (_, endpoint) in self.by_pod.lock().drain() {
            endpoint.stop.cancel();
        }
    }
}

/// Whether reading a body failed on its length.
fn is_too_long(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether `body` is an `initialize` request (which opens a session).
fn is_initialize(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        method: Option<&'a str>,
    }
    serde_json::from_slice::<Message>(body).is_ok_and(|m| m.method == Some("initialize"))
}

fn plain(status: http::StatusCode, message: String) -> http::Response<BoxBody<Bytes, Infallible>> {
    let body = http_body_util::Full::new(Bytes::from(message));
    let mut response = http::Response::new(http_body_util::BodyExt::boxed(body));
    *response.status_mut() = status;
    response
}

/// The SDK's in-memory sessions, at most `max` at once.
struct CappedSessions {
    inner: LocalSessionManager,
    max: usize,
}

impl CappedSessions {
    async fn full(&self) -> bool {
        self.inner.sessions.read().await.len() >= self.max
    }
}

/// Why a session could not be served.
#[derive(Debug, thiserror::Error)]
enum SessionsError {
    #[error(transparent)]
    Local(#[from] LocalSessionManagerError),
    #[error("this pod has {0} MCP sessions open already: close one (DELETE) or let one expire")]
    Full(usize),
}

impl SessionManager for CappedSessions {
    type Error = SessionsError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        if self.full().await {
            return Err(SessionsError::Full(self.max));
        }
        Ok(self.inner.create_session().await?)
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.inner.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        Ok(self.inner.has_session(id).await?)
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        Ok(self.inner.close_session(id).await?)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_stream(id, message).await?)
    }

    async fn accept_message(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<(), Self::Error> {
        Ok(self.inner.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_standalone_stream(id).await?)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.resume(id, last_event_id).await?)
    }

    async fn restore_session(&self, id: SessionId) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        Ok(self.inner.restore_session(id).await?)
    }
}
