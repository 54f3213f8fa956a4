//! Serves one pod over the Model Context Protocol: its tools, each call in a
//! fresh sandbox bound to the pod's scope and grants, and the pod itself as
//! the `ask_pod` tool. One handler, [`PodServer`], answers on stdio
//! (`yoi-host mcp`) and on Streamable HTTP (`yoi-host serve`), in both
//! protocol eras: 2025-11-25 with `initialize` and sessions, and the
//! stateless 2026-07-28 revision. The SDK (`rmcp`) owns the wire; this
//! module decides what a request does.
//!
//! Parts: `catalog` (the tool list and its annotations), `approval`
//! (`pause_before` tools asked of the user by elicitation), `ask` (runs of
//! the pod's agent loop), `http` (the server's endpoint).

mod approval;
mod ask;
mod catalog;
pub mod http;

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

use crate::plugin::{ToolError, ToolOutput};
use crate::pod::WeakPod;
pub use catalog::ASK_POD;

/// The MCP face of one pod. Cheap to clone: one per session or request.
#[derive(Clone)]
pub struct PodServer {
    pod: WeakPod,
    /// The tools as listed, in a stable order (by name), ask_pod first.
    tools: Arc<[Tool]>,
    /// What the calls of this server share: open approvals, cancels.
    asks: Arc<ask::Asks>,
}

impl PodServer {
    /// A server for `pod`; its tool list is fixed now (the pod's plugin set
    /// does not change while it lives).
    pub fn new(pod: WeakPod) -> PodServer {
        let tools = catalog::tools(&pod).into();
        PodServer { pod, tools, asks: Default::default() }
    }

    fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// Runs one plugin tool for the client, after the user's approval when
    /// the manifest puts the tool in `pause_before`.
    async fn call_plugin_tool(
        &self,
        params: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = params.name.to_string();
        let input = serde_json::Value::Object(params.arguments.clone().unwrap_or_default());
        if self.pod.pause_before.contains(&name) {
            let question = approval::Question::tool_call(&name, &input);
            match approval::ask(&context, &params, &question, &self.asks.asked).await {
                approval::Approval::Granted => {}
                approval::Approval::Refused(reason) => {
                    return Ok(error_result(format!("permission_denied: `{name}` was not run: {reason}")).into());
                }
                approval::Approval::Ask(input_required) => return Ok(input_required.into()),
            }
        }
        let input = input.to_string();
        let call = self.pod.call_tool(&name, &input);
        // Dropping the call on a cancel drops its instance at once.
        let result = tokio::select! {
            result = call => result,
            _ = context.ct.cancelled() => {
                return Err(ErrorData::internal_error("the call was cancelled by the client", None));
            }
        };
        Ok(tool_result(result).into())
    }
}

/// A tool's outcome as MCP content: its summary, then its content, as text;
/// every failure (the plugin's own error, a timeout, a trap, memory, a
/// quota) is `isError` with the reason a person can read.
pub fn tool_result(result: Result<ToolOutput, ToolError>) -> CallToolResult {
    match result {
        Ok(out) => {
            let mut content = vec![ContentBlock::text(out.summary)];
            content.extend(out.content.map(ContentBlock::text));
            CallToolResult::success(content)
        }
        Err(e) => error_result(e.to_string()),
    }
}

fn error_result(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

fn tool_result_text(text: String) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

impl ServerHandler for PodServer {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.protocol_version = ProtocolVersion::LATEST;
        info.server_info = Implementation::new(format!("yoi-host pod {}", self.pod.name), env!("CARGO_PKG_VERSION"));
        info.instructions = Some(format!(
            "Tools of the yoi-host pod `{}`. Each call runs in a fresh WebAssembly sandbox that reaches only \
             the pod's scope.{}",
            self.pod.name,
            if self.tool(ASK_POD).is_some() {
                " `ask_pod` hands a task to the pod's own agent and returns its answer."
            } else {
                ""
            }
        ));
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.to_vec()))
    }

    async fn call_tool(
        &self,
        params: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if self.tool(&params.name).is_none() {
            return Err(ErrorData::invalid_params(
                format!("there is no tool named `{}` in pod `{}`", params.name, self.pod.name),
                None,
            ));
        }
        if params.name == ASK_POD {
            return match self.pod.upgrade() {
                Ok(pod) => ask::ask_pod(&pod, params, context, &self.asks).await,
                Err(e) => Ok(error_result(format!("failed: {e}")).into()),
            };
        }
        self.call_plugin_tool(params, context).await
    }

    fn get_tool(&self, _name: &str) -> Option<Tool> {
        // Only for the SDK's check of `Mcp-Param-*` headers, which no tool
        // here declares.
        None
    }
}
