//! A client of the server's HTTP API with a tenant's token, for the tests
//! that treat `yoi-host serve` as a service.

use reqwest::StatusCode;
use serde_json::Value;

use super::server_process::ServerProcess as Server;

/// Adds tenant `name` with `quotas` (`KEY=VALUE`) and returns its token.
pub fn tenant_add(server: &Server, name: &str, quotas: &[&str]) -> String {
    let quota_args: Vec<&str> = quotas.iter().flat_map(|q| ["--quota", q]).collect();
    server.tenant(&[&["add", name][..], &quota_args].concat())
}

/// A client with a tenant's token.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub fn new(server: &Server, token: &str) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Api { http: reqwest::Client::new(), base: server.url.clone(), token: token.to_string() }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    pub async fn put_bytes(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let response = self.request(reqwest::Method::PUT, path).body(body).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn put_pod(&self, name: &str, toml: &str) -> (StatusCode, Value) {
        self.put_bytes(&format!("/v1/pods/{name}"), toml.to_string()).await
    }
}

pub async fn upload_plugin(
    api: &Api,
    name: &str,
    component: Vec<u8>,
    capabilities: Option<&str>,
) -> (StatusCode, Value) {
    let mut form = reqwest::multipart::Form::new().part("component", reqwest::multipart::Part::bytes(component));
    if let Some(text) = capabilities {
        form = form.text("capabilities", text.to_string());
    }
    let response =
        api.request(reqwest::Method::PUT, &format!("/v1/plugins/{name}")).multipart(form).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}
