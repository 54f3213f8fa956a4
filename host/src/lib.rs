//! yoi-host runs LLM agents ("pods") whose every tool is a WebAssembly
//! component, confined to the pod's filesystem scope by WASI preopens.
//!
//! # Layout
//! - [`manifest`]: the pod manifest (TOML), parsed and validated.
//! - [`scope`]: allow/deny rules, path judgement, preopens.
//! - [`scope_lock`]: the machine-wide lock that keeps live pods' write scopes apart.
//! - [`plugin`]: the wasmtime runtime that loads tool plugins and runs calls.
//! - [`history`]: the conversation's items, shared by every layer.
//! - [`provider`]: LLM clients (Anthropic, OpenAI-compatible, Gemini, scripted).
//! - [`agent`]: the conversation loop (stream, tool calls, hooks, cancel).
//! - [`protocol`]: the pod socket's JSON-lines wire types.
//! - [`session`]: the append-only session log.
//! - [`identity`]: a pod's unique id and the namespace of its name.
//! - [`lifecycle`]: a pod's state (idle, running, paused, stopping, stopped).
//! - [`pod`]: a pod's controller, socket server, runtime directory, compaction.
//! - [`plugin_store`]: the per-pod key/value store plugins keep state in.
//! - [`home`]: where yoi-host keeps its files (`$YOI_HOME`).
//! - [`os`]: what the host asks of the operating system (the open-file limit).
//! - [`serve`]: `yoi-host serve`, many tenants' pods behind an HTTP API.
//! - [`cli`]: the `yoi-host` command line.
#![deny(missing_docs)]

pub mod agent;
pub mod cli;
pub mod history;
pub mod home;
pub mod identity;
pub mod lifecycle;
pub mod manifest;
pub mod mcp;
pub mod os;
pub mod plugin;
pub mod plugin_store;
pub mod pod;
pub mod protocol;
pub mod provider;
pub mod scope;
pub mod scope_lock;
pub mod serve;
pub mod session;
pub mod starter;
