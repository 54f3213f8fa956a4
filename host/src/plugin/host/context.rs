//! `yoi:plugin/context`: what a plugin may know about the calling pod.

use crate::plugin::bindings::{WitPermission, WitPodInfo, WitScopeRule, context};
use crate::plugin::call::CallState;
use crate::scope::{Permission, Rule};

pub(super) fn wit_rule(rule: &Rule) -> WitScopeRule {
    WitScopeRule {
        target: rule.target.to_string_lossy().into_owned(),
        permission: match rule.permission {
            Permission::Read => WitPermission::Read,
            Permission::Write => WitPermission::Write,
        },
        recursive: rule.recursive,
    }
}

impl context::Host for CallState {
    fn pod(&mut self) -> WitPodInfo {
        let pod = &self.pod;
        let scope = pod.scope();
        WitPodInfo {
            name: pod.name.clone(),
            working_dir: pod.working_dir.to_string_lossy().into_owned(),
            allow: scope.allow.iter().map(wit_rule).collect(),
            deny: scope.deny.iter().map(wit_rule).collect(),
        }
    }
}
