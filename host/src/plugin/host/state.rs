//! `yoi:plugin/state`: the calling pod's store, in the plugin's namespace.

use crate::plugin::bindings::state;
use crate::plugin::call::CallState;

impl state::Host for CallState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.pod.state.get(&self.plugin, &key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.pod.state.set(&self.plugin, &key, value)
    }

    fn delete(&mut self, key: String) {
        self.pod.state.delete(&self.plugin, &key)
    }

    fn list_keys(&mut self, prefix: String) -> Vec<String> {
        self.pod.state.keys(&self.plugin, &prefix)
    }
}
