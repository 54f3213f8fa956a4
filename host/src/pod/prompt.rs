//! The system prompt a pod's model sees: the manifest's prompt, then what
//! the pod is (working directory, scope, tools' rules), then the working
//! directory's AGENTS.md when there is one (cut to a bounded size).

use std::path::Path;

use crate::manifest::LoadedManifest;
use crate::plugin::truncate;
use crate::scope::describe_rule;

/// Most bytes of AGENTS.md included.
pub const MAX_AGENTS_MD_BYTES: usize = 32 * 1024;

/// Largest prompt file or AGENTS.md read at all.
const MAX_PROMPT_FILE_BYTES: u64 = 4 << 20;

const DEFAULT_PROMPT: &str = "You are a careful software agent. Use the tools to inspect and change files; \
     read a file before you edit it, and say briefly what you did when you are done.";

/// The system prompt of the pod described by `loaded`.
pub fn system_prompt(loaded: &LoadedManifest) -> anyhow::Result<String> {
    let agent = &loaded.manifest.agent;
    let base = loaded.path.parent().unwrap_or(Path::new("/"));
    let prompt = match (&agent.prompt, &agent.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) => {
            let path = base.join(file);
            let bytes = crate::os::read_file(&path, loaded.root.as_deref(), MAX_PROMPT_FILE_BYTES)
                .map_err(|e| anyhow::anyhow!("key `agent.prompt_file`: cannot read {}: {e}", path.display()))?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        (None, None) => DEFAULT_PROMPT.to_string(),
    };
    let mut text = prompt.trim_end().to_string();
    text.push_str(&format!(
        "\n\n# Environment\nYou are the pod {:?}. Your working directory is {}. File paths in tool calls must be \
         absolute.\nYou may reach only these paths:\n",
        loaded.manifest.pod.name,
        loaded.working_dir.display()
    ));
    for rule in &loaded.scope.allow {
        text.push_str(&format!("- {}\n", describe_rule(rule)));
    }
    for rule in &loaded.scope.deny {
        text.push_str(&format!("- not: {}\n", describe_rule(rule)));
    }
    let agents_md = loaded.working_dir.join("AGENTS.md");
    if let Ok(bytes) = crate::os::read_file(&agents_md, loaded.root.as_deref(), MAX_PROMPT_FILE_BYTES) {
        let content = String::from_utf8_lossy(&bytes);
        text.push_str(&format!(
            "\n# AGENTS.md ({})\n{}\n",
            agents_md.display(),
            truncate(content.trim(), MAX_AGENTS_MD_BYTES)
        ));
    }
    Ok(text)
}
