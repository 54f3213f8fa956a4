//! The pods of one tree: a pod started by an operator and the child pods it
//! (and they) spawned, all in this host process. This module owns who is
//! whose child, what each pod lends to its children, the read cursors of
//! `ReadPodOutput`, and the lifecycle notes children send their parents. It
//! implements [`PodControl`], so the pod tools reach it through
//! `yoi:plugin/pods`.
//!
//! Rules it keeps:
//! - A pod reaches only its own descendants, named relative to itself; any
//!   other name is "no such pod", so nothing leaks about other pods.
//! - A child's scope lies within its parent's current effective scope, and
//!   the parent's deny rules over that part come with it. While the child
//!   lives, its write targets are lent: the parent's scope is
//!   [`Scope::lending`] them (read-only in rules and preopens alike). They
//!   are given back when the child stops.
//! - Write targets are also claimed in the machine-wide scope lock, with the
//!   parent recorded, so no other pod on the machine can overlap them.
//! - A pod that stops stops its children first, unless the operator asked
//!   for detaching; detached children pass to the stopping pod's parent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use tokio::sync::mpsc;

use super::{Answer, Exposure, MemberSpec, PodHandle, RunEnded, WeakPod};
use crate::agent::Outcome;
use crate::identity::{Namespace, PodId};
use crate::lifecycle::Lifecycle;
use crate::manifest::{LoadedManifest, validate_pod_name};
use crate::plugin::{ChildOutput, ChildSummary, PluginSet, PodContext, PodControl, Refusal, SpawnRequest};
use crate::protocol::Method;
use crate::provider::{self, RetryPolicy};
use crate::scope::{Access, Permission, Rule, RuleSpec, Rules, Scope, describe_rule};
use crate::scope_lock::ScopeLock;
use crate::session::SessionStore;

/// What every pod of a family shares.
#[derive(Clone)]
pub struct FamilyConfig {
    /// The plugin runtime.
    pub plugins: Arc<PluginSet>,
    /// Where session logs go.
    pub sessions: SessionStore,
    /// Where runtime directories go.
    pub runtime_root: PathBuf,
    /// The machine-wide scope lock.
    pub scope_lock: ScopeLock,
    /// Where plugins' private data directories go (`$YOI_HOME/data`).
    pub data_root: PathBuf,
    /// The namespace of the family's names.
    pub namespace: Namespace,
    /// How clients reach the family's pods.
    pub exposure: Exposure,
    /// Where `env` grants and API keys are read from.
    pub env: super::Environment,
    /// Who pays for the family's calls and model requests.
    pub metering: Option<super::Metering>,
}

/// The system prompt of a child unless its spawner adds an instruction.
const CHILD_PROMPT: &str = "You are a child pod: another agent gave you a task and reads what you write. Use the \
     tools to do the task within your scope, then end with a short report of what you did and found.";

/// Longest name a spawner may give a child.
const MAX_CHILD_NAME: usize = 32;

/// One pod of the family, alive or stopped.
struct Member {
    pod: WeakPod,
    /// A child pod is kept alive by its family until it is stopped; the
    /// root pod lives while its operator holds a handle.
    _owned: Option<PodHandle>,
    parent: Option<String>,
    manifest: LoadedManifest,
    context: Arc<PodContext>,
    /// The scope the pod was given; its effective scope is this lending
    /// what its live children hold.
    granted: Scope,
    /// Its write targets (lent to it by its parent, if any).
    write: Vec<PathBuf>,
    /// For each reader (an ancestor), how far it has read the output.
    cursors: HashMap<String, u64>,
    /// The ancestor that asked it to stop, whose tool result says so.
    stopped_by: Option<String>,
    /// When it stopped, in the family's order of stops.
    stopped_seq: Option<u64>,
    retry: RetryPolicy,
}

/// A family of pods in this host process.
pub struct Family {
    config: FamilyConfig,
    members: Mutex<BTreeMap<String, Member>>,
    /// Full names of children being spawned (checked, not yet members).
    spawning: Mutex<HashSet<String>>,
    /// Counts stops, to tell the oldest stopped children.
    stops: std::sync::atomic::AtomicU64,
    me: Weak<Family>,
}

/// A child checked and ready to start: its spec, its rules, its working
/// directory, and the hold on its name until it is a member.
struct ChildSpec<'a> {
    spec: MemberSpec,
    rules: Vec<Rule>,
    working_dir: PathBuf,
    reservation: Reservation<'a>,
}

/// Holds a child's name while it is being spawned.
struct Reservation<'a> {
    family: &'a Family,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.family.spawning.lock().remove(&self.name);
    }
}

/// [`PodControl`] for the pods of a family, without keeping it alive.
struct Link(Weak<Family>);

impl Family {
    /// An empty family.
    pub fn new(config: FamilyConfig) -> Arc<Family> {
        Arc::new_cyclic(|me| Family {
            config,
            members: Mutex::new(BTreeMap::new()),
            spawning: Mutex::default(),
            stops: Default::default(),
            me: me.clone(),
        })
    }

    /// Starts a pod with no parent.
    pub(crate) async fn start(&self, spec: MemberSpec) -> anyhow::Result<PodHandle> {
        self.start_member(spec, None).await
    }

    /// What every pod of the family shares.
    pub fn config(&self) -> &FamilyConfig {
        &self.config
    }

    async fn start_member(&self, mut spec: MemberSpec, parent: Option<String>) -> anyhow::Result<PodHandle> {
        let name = spec.manifest.manifest.pod.name.clone();
        let manifest = spec.manifest.clone();
        let retry = spec.retry;
        let granted = spec.manifest.scope.clone();
        let write = write_targets(&granted);
        let control: Arc<dyn PodControl> = Arc::new(Link(self.me.clone()));
        let mut context = super::pod_context(
            &manifest,
            &self.config.plugins,
            &self.config.data_root,
            &*self.config.env,
            Some(control),
        )?;
        if let Some(metering) = &self.config.metering {
            context.meter = Some(metering.calls.clone());
            spec.provider = spec.provider.map(|p| (metering.models)(p, &name));
        }
        let context = Arc::new(context);
        let (run_ends, ended) = mpsc::unbounded_channel();
        let family = self.me.upgrade().expect("a family lives in an Arc");
        let parent_id = parent.as_ref().and_then(|p| self.members.lock().get(p).map(|m| m.pod.id.clone()));
        let handle = super::start_pod(spec, &family, PodId::new(), context.clone(), parent_id, run_ends).await?;
        let member = Member {
            pod: handle.downgrade(),
            _owned: parent.is_some().then(|| handle.clone()),
            parent,
            manifest,
            context,
            granted,
            write,
            cursors: HashMap::new(),
            stopped_by: None,
            stopped_seq: None,
            retry,
        };
        self.members.lock().insert(name.clone(), member);
        let family = self.me.clone();
        tokio::spawn(watch(family, name, ended));
        Ok(handle)
    }

    /// Waits until every pod of the family has stopped (detached children
    /// outlive the pod that spawned them).
    pub async fn wait_all(&self) {
        loop {
            let live: Vec<WeakPod> = {
                let members = self.members.lock();
                members.values().filter(|m| m.pod.lifecycle() != Lifecycle::Stopped).map(|m| m.pod.clone()).collect()
            };
            if live.is_empty() {
                return;
            }
            for handle in live {
                handle.wait().await;
            }
        }
    }

    /// The lending scope of `name`: what it was granted, minus what its live
    /// children hold.
    fn refresh_scope(members: &BTreeMap<String, Member>, name: &str) {
        let Some(member) = members.get(name) else { return };
        let lent: Vec<PathBuf> = members
            .values()
            .filter(|m| m.parent.as_deref() == Some(name) && !m.pod.is_stopped())
            .flat_map(|m| m.write.iter().cloned())
            .collect();
        member.context.set_scope(member.granted.lending(&lent));
    }

    /// Called by the pod's teardown, before its handle reports it stopped:
    /// stops its children (or detaches them) and waits for them.
    pub(super) async fn stop_children(&self, name: &str, detach: bool) {
        let children: Vec<WeakPod> = {
            let mut members = self.members.lock();
            let Some(me) = members.get(name) else { return };
            let grandparent = me.parent.clone();
            let mut children = Vec::new();
            for (child_name, child) in members.iter_mut() {
                if child.parent.as_deref() != Some(name) || child.pod.is_stopped() {
                    continue;
                }
                if detach {
                    child.parent = grandparent.clone();
                } else {
                    child.stopped_by = Some(name.to_string());
                    children.push(child.pod.clone());
                }
                tracing::debug!(pod = name, child = %child_name, detach, "parent stopping");
            }
            if detach && let Some(grandparent) = grandparent {
                Self::refresh_scope(&members, &grandparent);
            }
            children
        };
        for child in &children {
            // A child that already stopped needs no asking.
            if let Ok(child) = child.upgrade() {
                let _ = child.request(Method::Shutdown { detach_children: false }).await;
            }
        }
        for child in &children {
            child.wait().await;
        }
    }

    /// Called by the pod's teardown once its scope claim is released: gives
    /// its write scope back to its parent and tells the parent, unless the
    /// parent asked for the stop.
    pub(super) async fn stopped(&self, name: &str) {
        let note = {
            let mut members = self.members.lock();
            let seq = self.stops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(me) = members.get_mut(name) else { return };
            me.stopped_seq = Some(seq);
            let Some(parent_name) = me.parent.clone() else { return };
            forget_oldest_stopped(&mut members, &parent_name);
            let Some(me) = members.get(name) else { return };
            Self::refresh_scope(&members, &parent_name);
            let Some(parent) = members.get(&parent_name) else { return };
            if parent.pod.is_stopped() || me.stopped_by.as_deref() == Some(parent_name.as_str()) {
                return;
            }
            let given_back = me.write.iter().map(|w| w.display().to_string()).collect::<Vec<_>>().join(", ");
            let back = if given_back.is_empty() { String::new() } else { format!("; {given_back} is yours again") };
            (parent.pod.clone(), format!("child pod {:?} stopped{back}", relative(name, &parent_name)))
        };
        // A parent that stopped meanwhile has no one to tell.
        if let Ok(parent) = note.0.upgrade() {
            let _ = parent.notify(note.1).await;
        }
    }

    async fn spawn_child(&self, caller: &str, request: SpawnRequest) -> Result<String, Refusal> {
        let ChildSpec { spec, rules, working_dir: cwd, reservation } = self.child_spec(caller, &request)?;
        let full = spec.manifest.manifest.pod.name.clone();
        let handle = self
            .start_member(spec, Some(caller.to_string()))
            .await
            .map_err(|e| Refusal::Failed(format!("cannot start pod {:?}: {e:#}", request.name)))?;
        // A member now: its name is held by the members map.
        drop(reservation);
        {
            let members = self.members.lock();
            Self::refresh_scope(&members, caller);
        }
        let refusal = match handle.request(Method::Run { input: request.task.clone() }).await {
            Ok(Answer::Refused { message, .. }) => Some(message),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        if let Some(message) = refusal {
            // A child without its task holds scope for nothing: stop it.
            if let Some(member) = self.members.lock().get_mut(&full) {
                member.stopped_by = Some(caller.to_string());
            }
            let _ = handle.request(Method::Shutdown { detach_children: false }).await;
            handle.wait().await;
            return Err(Refusal::Failed(format!(
                "pod {full:?} started but did not take its task ({message}); it was stopped"
            )));
        }
        let scope = rules.iter().map(describe_rule).collect::<Vec<_>>().join(", ");
        let lent: Vec<String> = rules
            .iter()
            .filter(|r| r.permission == Permission::Write)
            .map(|r| r.target.display().to_string())
            .collect();
        let lent = if lent.is_empty() {
            String::new()
        } else {
            format!(" Until it stops, {} is read-only for you.", lent.join(", "))
        };
        Ok(format!(
            "Started child pod {:?} in {} with scope: {scope}.{lent} You will get a note when it ends a run; \
             read what it wrote with ReadPodOutput.",
            request.name,
            cwd.display()
        ))
    }

    /// Checks a spawn request against the caller's effective scope and
    /// builds the child's spec: its rules, the deny rules it inherits, its
    /// manifest and provider.
    fn child_spec<'a>(&'a self, caller: &str, request: &SpawnRequest) -> Result<ChildSpec<'a>, Refusal> {
        let invalid = |m: String| Refusal::InvalidInput(m);
        let name = &request.name;
        let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if name.is_empty() || name.len() > MAX_CHILD_NAME || !plain {
            return Err(invalid(format!("{name:?} is not a valid child name (1-32 characters from A-Z a-z 0-9 _ -)")));
        }
        if request.task.trim().is_empty() {
            return Err(invalid("the task is empty".into()));
        }
        if request.scope.is_empty() {
            return Err(invalid("the scope is empty: give the child at least one rule".into()));
        }
        let full = format!("{caller}.{name}");
        validate_pod_name(&full).map_err(|e| invalid(format!("{e}; pick a shorter name")))?;

        // Under the lock, only a snapshot and the name's reservation: the
        // file work (canonical paths) and the model's setup come after.
        let mut members = self.members.lock();
        let Some(parent) = members.get(caller) else {
            return Err(Refusal::Failed("the calling pod is not known to this host".into()));
        };
        if parent.pod.is_stopped() {
            return Err(Refusal::Failed("this pod is stopping".into()));
        }
        let limits = &parent.manifest.manifest.limits;
        let live = members.values().filter(|m| m.parent.as_deref() == Some(caller) && !m.pod.is_stopped()).count();
        if live >= limits.max_children {
            return Err(Refusal::Failed(format!(
                "this pod has {live} live child pods, its limit ([limits] max_children = {}); stop one first",
                limits.max_children
            )));
        }
        let depth = ancestors(&members, caller) + 1;
        if depth > limits.max_depth {
            return Err(Refusal::Failed(format!(
                "a child here would be {depth} levels below the operator's pod, deeper than [limits] max_depth = {}",
                limits.max_depth
            )));
        }
        let effective = parent.context.scope();
        let parent_dir = parent.context.working_dir.clone();
        let mut manifest = parent.manifest.clone();
        let retry = parent.retry;
        let writers: Vec<(String, Vec<PathBuf>)> = members
            .iter()
            .filter(|(_, m)| m.parent.as_deref() == Some(caller) && !m.pod.is_stopped())
            .map(|(n, m)| (relative(n, caller), m.write.clone()))
            .collect();
        // A stopped child of the same name makes room; a live one, or one
        // being spawned by a call running beside this one, does not.
        if members.get(&full).is_some_and(|old| !old.pod.is_stopped()) || !self.spawning.lock().insert(full.clone()) {
            return Err(Refusal::Failed(format!("a child named {name:?} is alive; stop it or pick another name")));
        }
        if members.get(&full).is_some() {
            members.remove(&full);
        }
        drop(members);
        let reservation = Reservation { family: self, name: full.clone() };

        let mut allow = Vec::new();
        for (index, spec) in request.scope.iter().enumerate() {
            allow.push(check_rule(index, spec, &parent_dir, &effective, &writers)?);
        }
        let deny: Vec<Rule> = effective
            .deny
            .iter()
            .filter(|d| allow.iter().any(|a| d.target.starts_with(&a.target) || a.target.starts_with(&d.target)))
            .cloned()
            .collect();
        let working_dir = if allow.iter().any(|r| r.covers(&parent_dir)) {
            parent_dir.clone()
        } else {
            let first = allow.iter().find(|r| r.permission == Permission::Write).unwrap_or(&allow[0]);
            first.target.clone()
        };
        let m = &mut manifest.manifest;
        m.pod.name = full.clone();
        m.pod.working_dir = Some(working_dir.clone());
        m.agent.prompt = Some(match &request.instruction {
            Some(extra) => format!("{CHILD_PROMPT}\n\n{extra}"),
            None => CHILD_PROMPT.to_string(),
        });
        m.agent.prompt_file = None;
        let spec_of =
            |r: &Rule| RuleSpec { target: r.target.clone(), permission: r.permission, recursive: r.recursive };
        m.scope.allow = allow.iter().map(spec_of).collect();
        m.scope.deny = deny.iter().map(spec_of).collect();
        if let (Some(model), Some(section)) = (&request.model, &mut m.provider) {
            section.model = model.clone();
        }
        manifest.scope = Scope::from_rules(Rules { allow: allow.clone(), deny });
        manifest.working_dir = working_dir.clone();
        let provider = match &manifest.manifest.provider {
            Some(section) => {
                let base = manifest.path.parent().unwrap_or(Path::new("/"));
                let root = manifest.root.as_deref();
                let p = provider::from_manifest(section, base, &working_dir, &full, &*self.config.env, root)
                    .map_err(|e| Refusal::Failed(format!("cannot set up the child's model: {e:#}")))?;
                Some(Arc::from(p))
            }
            None => None,
        };
        let spec = MemberSpec { manifest, provider, retry, resume: None };
        Ok(ChildSpec { spec, rules: allow, working_dir, reservation })
    }

    fn read_output(&self, caller: &str, name: &str) -> Result<ChildOutput, Refusal> {
        let mut members = self.members.lock();
        let full = descendant(&members, caller, name)?;
        let max = members.get(caller).map_or(16 * 1024, |c| c.context.limits.output_max_bytes).saturating_sub(512);
        let member = members.get_mut(&full).expect("resolved above");
        let cursor = member.cursors.get(caller).copied().unwrap_or(0);
        let (text, dropped, next) = member.pod.output.read(cursor, max.max(1024));
        member.cursors.insert(caller.to_string(), next);
        Ok(ChildOutput { text, dropped, state: member.pod.lifecycle() })
    }

    async fn stop_descendant(&self, caller: &str, name: &str) -> Result<String, Refusal> {
        let (handle, stopped, given_back, to) = {
            let mut members = self.members.lock();
            let full = descendant(&members, caller, name)?;
            if members[&full].pod.is_stopped() {
                return Ok(format!("pod {name:?} was already stopped"));
            }
            let stopped: Vec<String> = members
                .keys()
                .filter(|n| is_descendant(&members, n, &full) && !members[*n].pod.is_stopped())
                .map(|n| relative(n, caller))
                .collect();
            let member = members.get_mut(&full).expect("resolved above");
            member.stopped_by = Some(caller.to_string());
            let given_back: Vec<String> = member.write.iter().map(|w| w.display().to_string()).collect();
            let to = member.parent.as_deref().filter(|p| *p != caller).map(|p| relative(p, caller)).unwrap_or_default();
            (member.pod.clone(), stopped, given_back, to)
        };
        // A pod that stopped on its own between the check and here is
        // stopped all the same.
        if let Ok(live) = handle.upgrade() {
            let _ = live.request(Method::Shutdown { detach_children: false }).await;
        }
        handle.wait().await;
        let mut answer = format!("Stopped pod {name:?}");
        if !stopped.is_empty() {
            answer.push_str(&format!(" and its descendants {}", stopped.join(", ")));
        }
        if given_back.is_empty() {
            answer.push_str("; it held no write scope.");
        } else if to.is_empty() {
            answer.push_str(&format!("; write scope given back to you: {}.", given_back.join(", ")));
        } else {
            answer.push_str(&format!("; write scope given back to pod {to:?}: {}.", given_back.join(", ")));
        }
        Ok(answer)
    }

    fn list(&self, caller: &str) -> Vec<ChildSummary> {
        let members = self.members.lock();
        members
            .iter()
            .filter(|(n, _)| is_descendant(&members, n, caller))
            .map(|(n, m)| ChildSummary {
                name: relative(n, caller),
                state: m.pod.lifecycle(),
                scope: m.granted.allow.clone(),
            })
            .collect()
    }

    fn pod_of(&self, caller: &str, name: &str) -> Result<WeakPod, Refusal> {
        let members = self.members.lock();
        let full = descendant(&members, caller, name)?;
        Ok(members[&full].pod.clone())
    }
}

/// Checks one requested rule against the caller's effective scope.
fn check_rule(
    index: usize,
    spec: &RuleSpec,
    working_dir: &Path,
    effective: &Scope,
    writers: &[(String, Vec<PathBuf>)],
) -> Result<Rule, Refusal> {
    let perm = if spec.permission == Permission::Write { "write" } else { "read" };
    let label = format!("scope[{index}] ({perm} {})", spec.target.display());
    let target = std::fs::canonicalize(working_dir.join(&spec.target))
        .map_err(|e| Refusal::InvalidInput(format!("{label}: {e}")))?;
    if !target.is_dir() {
        return Err(Refusal::InvalidInput(format!("{label}: not a directory (rules grant directories)")));
    }
    let rule = Rule { target: target.clone(), permission: spec.permission, recursive: spec.recursive };
    let needed = if spec.permission == Permission::Write { Access::Write } else { Access::Read };
    let refuse = |why: String| Refusal::PermissionDenied(format!("{label}: {why}"));
    let granted_here = effective.access(&target);
    if granted_here < needed {
        let have = match granted_here {
            Access::None => "is outside your scope".to_string(),
            _ => format!("is read-only for you{}", lent_note(writers, &target)),
        };
        return Err(refuse(format!("{} {have}", target.display())));
    }
    // The whole tree the rule covers must be the caller's too.
    let covered = effective.allow.iter().any(|a| {
        a.permission >= spec.permission && (a.covers_tree(&target) || (!spec.recursive && a.target == target))
    });
    if !covered {
        return Err(refuse(format!("your scope covers {} only in part (use recursive = false?)", target.display())));
    }
    if spec.permission == Permission::Write {
        for tree in effective.lent() {
            if tree.starts_with(&target) {
                return Err(refuse(format!(
                    "{} holds {}, which a child of yours writes{}",
                    target.display(),
                    tree.display(),
                    lent_note(writers, tree)
                )));
            }
        }
    }
    Ok(rule)
}

/// " (child pod X writes there)" when one of `writers` (the caller's live
/// children, by relative name) writes at or around `path`.
fn lent_note(writers: &[(String, Vec<PathBuf>)], path: &Path) -> String {
    writers
        .iter()
        .find(|(_, write)| write.iter().any(|w| w.starts_with(path) || path.starts_with(w)))
        .map(|(name, _)| format!(" (child pod {name:?} writes there)"))
        .unwrap_or_default()
}

/// The targets of a scope's write rules: what a pod claims in the lock and
/// lends its parent's.
pub(super) fn write_targets(scope: &Scope) -> Vec<PathBuf> {
    scope.allow.iter().filter(|r| r.permission == Permission::Write).map(|r| r.target.clone()).collect()
}

/// Resolves `name`, relative to `caller`, to a descendant's full name; any
/// other name is "no such pod", whether or not it exists.
fn descendant(members: &BTreeMap<String, Member>, caller: &str, name: &str) -> Result<String, Refusal> {
    let full = format!("{caller}.{name}");
    if name.is_empty() || !members.contains_key(&full) || !is_descendant(members, &full, caller) {
        return Err(Refusal::NotFound(format!("no such pod: {name:?} (ListPods shows yours)")));
    }
    Ok(full)
}

/// Whether `name` is a descendant of `ancestor` (and not `ancestor` itself).
fn is_descendant(members: &BTreeMap<String, Member>, name: &str, ancestor: &str) -> bool {
    let mut parent = members.get(name).and_then(|m| m.parent.as_deref());
    while let Some(p) = parent {
        if p == ancestor {
            return true;
        }
        parent = members.get(p).and_then(|m| m.parent.as_deref());
    }
    false
}

/// Stopped children a pod still lists (and whose output it may read).
const KEPT_STOPPED_CHILDREN: usize = 16;

/// Forgets the oldest stopped children of `parent` past
/// [`KEPT_STOPPED_CHILDREN`], with their (stopped) descendants, so a pod
/// that spawns children for weeks does not keep every one's output.
fn forget_oldest_stopped(members: &mut BTreeMap<String, Member>, parent: &str) {
    let mut stopped: Vec<(u64, String)> = members
        .iter()
        .filter(|(_, m)| m.parent.as_deref() == Some(parent))
        .filter_map(|(n, m)| m.stopped_seq.map(|seq| (seq, n.clone())))
        .collect();
    if stopped.len() <= KEPT_STOPPED_CHILDREN {
        return;
    }
    stopped.sort();
    for (_, name) in &stopped[..stopped.len() - KEPT_STOPPED_CHILDREN] {
        let below: Vec<String> = members
            .keys()
            .filter(|n| is_descendant(members, n, name) && members[*n].stopped_seq.is_some())
            .cloned()
            .collect();
        for n in below.iter().chain([name]) {
            members.remove(n);
        }
    }
}

/// How many ancestors `name` has in the family.
fn ancestors(members: &BTreeMap<String, Member>, name: &str) -> usize {
    let mut count = 0;
    let mut parent = members.get(name).and_then(|m| m.parent.as_deref());
    while let Some(p) = parent {
        count += 1;
        parent = members.get(p).and_then(|m| m.parent.as_deref());
    }
    count
}

/// `name` as `ancestor` calls it.
fn relative(name: &str, ancestor: &str) -> String {
    name.strip_prefix(ancestor).and_then(|r| r.strip_prefix('.')).unwrap_or(name).to_string()
}

/// Tells a pod's parent, as a note, each time one of the pod's runs ends
/// (stopping is told by [`Family::stopped`]).
async fn watch(family: Weak<Family>, name: String, mut run_ends: mpsc::UnboundedReceiver<RunEnded>) {
    while let Some(ended) = run_ends.recv().await {
        let Some(family) = family.upgrade() else { return };
        let note = {
            let members = family.members.lock();
            let Some(me) = members.get(&name) else { continue };
            let Some(parent) = me.parent.as_ref().and_then(|p| members.get(p).map(|m| (p, m))) else { continue };
            // Whoever stops a pod hears of it from the stop itself.
            if parent.1.pod.is_stopped() || me.stopped_by.is_some() {
                continue;
            }
            let who = relative(&name, parent.0);
            let unread = me.pod.output.unread(me.cursors.get(parent.0).copied().unwrap_or(0));
            let what = match (ended.outcome, &ended.error) {
                (Outcome::Failed, Some(error)) => format!("failed its run: {error}"),
                (Outcome::Failed, None) => "failed its run".to_string(),
                (Outcome::Finished, _) => "finished its run".to_string(),
                (Outcome::Paused, _) => "paused before a tool call, waiting for an operator".to_string(),
                (Outcome::LimitReached, _) => "stopped at its turn limit".to_string(),
                (Outcome::Cancelled, _) => "had its run cancelled".to_string(),
                (Outcome::Interrupted, _) => "had its run cut short by the host".to_string(),
            };
            let text = format!("child pod {who:?} {what}; {unread} bytes of its output are unread (ReadPodOutput)");
            (parent.1.pod.clone(), text)
        };
        if let Ok(parent) = note.0.upgrade() {
            let _ = parent.notify(note.1).await;
        }
    }
}

#[async_trait::async_trait]
impl PodControl for Link {
    async fn spawn(&self, caller: &str, request: SpawnRequest) -> Result<String, Refusal> {
        self.family()?.spawn_child(caller, request).await
    }

    async fn send(&self, caller: &str, name: &str, message: String) -> Result<String, Refusal> {
        let stopped = || Refusal::Failed(format!("pod {name:?} is stopped; spawn it again to give it work"));
        let pod = self.family()?.pod_of(caller, name)?.upgrade().map_err(|_| stopped())?;
        match pod.request(Method::Run { input: message }).await {
            Ok(Answer::Refused { message, .. }) => {
                Err(Refusal::Failed(format!("pod {name:?} is busy ({message}); try again after its next note")))
            }
            Ok(_) => Ok(format!("Sent; pod {name:?} is running. You will get a note when it ends the run.")),
            Err(_) => Err(stopped()),
        }
    }

    async fn read_output(&self, caller: &str, name: &str) -> Result<ChildOutput, Refusal> {
        self.family()?.read_output(caller, name)
    }

    async fn stop(&self, caller: &str, name: &str) -> Result<String, Refusal> {
        self.family()?.stop_descendant(caller, name).await
    }

    async fn list(&self, caller: &str) -> Vec<ChildSummary> {
        self.family().map(|f| f.list(caller)).unwrap_or_default()
    }
}

impl Link {
    fn family(&self) -> Result<Arc<Family>, Refusal> {
        self.0.upgrade().ok_or_else(|| Refusal::Failed("the host is shutting down".into()))
    }
}
