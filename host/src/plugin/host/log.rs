//! `yoi:plugin/log`: plugin messages into the host's tracing log.

use crate::plugin::bindings::{WitLevel, log};
use crate::plugin::call::CallState;

impl log::Host for CallState {
    fn log(&mut self, level: WitLevel, message: String) {
        let plugin = &*self.plugin;
        let pod = &self.pod.name;
        match level {
            WitLevel::Trace => tracing::trace!(plugin, pod, "{message}"),
            WitLevel::Debug => tracing::debug!(plugin, pod, "{message}"),
            WitLevel::Info => tracing::info!(plugin, pod, "{message}"),
            WitLevel::Warn => tracing::warn!(plugin, pod, "{message}"),
            WitLevel::Error => tracing::error!(plugin, pod, "{message}"),
        }
    }
}
