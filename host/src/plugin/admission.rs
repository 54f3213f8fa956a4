//! Admission: who gets the next instance slot when tool calls outnumber the
//! instance pool.
//!
//! A call that finds the pool full waits instead of failing. Waiting calls
//! are queued per pod, and freed slots go round-robin across the pods that
//! wait, so one pod's burst of calls cannot starve another pod's single
//! call: each waiting pod gets one slot per round. A caller that gives up
//! (its deadline passed, its run was cancelled) simply drops its place.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Who waits: one key per pod (calls of one pod share it).
pub type PodKey = usize;

/// The slots of one instance pool.
#[derive(Debug)]
pub struct Admission {
    state: Mutex<State>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    free: usize,
    /// Waiters by pod, oldest first.
    queues: HashMap<PodKey, VecDeque<oneshot::Sender<()>>>,
    /// Pods with waiters, in the order their turns come.
    ring: VecDeque<PodKey>,
    /// The longest wait of any admitted call so far.
    longest_wait: Duration,
}

/// One admitted call's slot; dropping it frees the slot for the next waiter.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release();
    }
}

impl Admission {
    /// A pool of `capacity` slots.
    pub fn new(capacity: usize) -> Arc<Admission> {
        Arc::new(Admission { state: Mutex::new(State { free: capacity, ..State::default() }), capacity })
    }

    /// How many slots there are.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.state.lock().free
    }

    /// The longest any admitted call has waited.
    pub fn longest_wait(&self) -> Duration {
        self.state.lock().longest_wait
    }

    /// Waits for a slot for a call of `pod`. Cancel-safe: dropping the
    /// future gives up the place in the queue (a slot handed to a caller
    /// that has gone is passed on).
    pub async fn admit(self: &Arc<Self>, pod: PodKey) -> Slot {
        let started = std::time::Instant::now();
        let rx = {
            let mut state = self.state.lock();
            if state.free > 0 && state.ring.is_empty() {
                state.free -= 1;
                return Slot { admission: self.clone() };
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.queues.entry(pod).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                state.ring.push_back(pod);
            }
            rx
        };
        let mut handover = Handover { rx: Some(rx), admission: self.clone() };
        // The state keeps each sender until it sends on it, so the wait ends
        // with a slot handed over.
        let _ = handover.rx.as_mut().expect("set above").await;
        handover.rx = None;
        let waited = started.elapsed();
        let mut state = self.state.lock();
        state.longest_wait = state.longest_wait.max(waited);
        Slot { admission: self.clone() }
    }

    /// Frees one slot: hands it to the next waiting pod in the ring, or
    /// puts it back.
    fn release(&self) {
        let mut state = self.state.lock();
        while let Some(pod) = state.ring.pop_front() {
            let Some(queue) = state.queues.get_mut(&pod) else { continue };
            let Some(waiter) = queue.pop_front() else {
                state.queues.remove(&pod);
                continue;
            };
            if queue.is_empty() {
                state.queues.remove(&pod);
            } else {
                state.ring.push_back(pod);
            }
            if waiter.send(()).is_ok() {
                return;
            }
            // That caller gave up; the slot goes to the next one.
        }
        state.free += 1;
    }
}

/// A place in the queue. If the waiting future is dropped after a slot was
/// sent to it but before it took the slot, the slot is released here.
struct Handover {
    rx: Option<oneshot::Receiver<()>>,
    admission: Arc<Admission>,
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take()
            && rx.try_recv().is_ok()
        {
            self.admission.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With one slot, a pod that queued a burst of calls and a pod with a
    /// single call take turns: the single call is second, not last.
    #[tokio::test]
    async fn a_burst_of_one_pod_does_not_starve_another() {
        let admission = Admission::new(1);
        let first = admission.admit(1).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (pod, call) in [(1, "a1"), (1, "a2"), (1, "a3"), (2, "b1")] {
            let (shared, order) = (admission.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = shared.admit(pod).await;
                order.lock().push(call);
                tokio::task::yield_now().await;
            }));
            // Queue them in this order.
            while admission.state.lock().queues.values().map(VecDeque::len).sum::<usize>() < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock(), ["a1", "b1", "a2", "a3"]);
        assert_eq!(admission.in_use(), 0);
    }

    /// A caller that gives up while waiting loses its place, and a slot
    /// handed to it passes on; no slot leaks either way.
    #[tokio::test]
    async fn giving_up_frees_the_place_and_no_slot_leaks() {
        let admission = Admission::new(1);
        let held = admission.admit(1).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), admission.admit(2)).await;
        assert!(gave_up.is_err());
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { drop(admission.admit(3).await) }
        });
        tokio::task::yield_now().await;
        drop(held);
        waiting.await.unwrap();
        assert_eq!(admission.in_use(), 0);
        let again = admission.admit(4).await;
        assert_eq!(admission.in_use(), 1);
        drop(again);
    }
}
