//! The threads tool calls run on: a runtime of their own, apart from the
//! threads that serve sockets, provider streams and pod controllers.
//!
//! A guest computes on its thread until its next epoch tick, and its WASI
//! file calls block that thread (they run inline, which is several times
//! faster than hopping to a blocking pool). Neither may hold up a pod's
//! socket or a provider's stream, so calls are spawned here and awaited
//! from wherever they were asked for. The call threads also run at a lower
//! priority than the rest of the process, so that when the cores are busy
//! the threads that serve clients get them first.

use std::future::Future;

use tokio::runtime::{Builder, Runtime};
use tokio_util::task::AbortOnDropHandle;

/// The call runtime; shut down in the background when dropped.
pub struct Workers {
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").finish_non_exhaustive()
    }
}

impl Workers {
    /// A runtime of `threads` threads (at least one).
    pub fn start(threads: usize) -> anyhow::Result<Workers> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("yoi-call")
            .on_thread_start(yield_to_serving_threads)
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the tool-call threads: {e}"))?;
        Ok(Workers { runtime: Some(runtime) })
    }

    /// Runs `call` on the call threads. Dropping the returned handle aborts
    /// the call (its instance is dropped at its next yield).
    pub fn spawn<F>(&self, call: F) -> AbortOnDropHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.runtime.as_ref().expect("present until dropped");
        AbortOnDropHandle::new(runtime.spawn(call))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Dropping a runtime from inside another one's task would panic;
        // this never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How much lower than the rest of the process call threads run (a nice
/// value): when the cores are busy, the threads that serve clients,
/// provider streams and controllers get them first.
const CALL_THREAD_NICENESS: libc::c_int = 10;

/// Lowers the calling thread's priority (Linux threads have their own
/// nice value).
fn yield_to_serving_threads() {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id
    // changes only this thread's nice value.
    let tid = unsafe { libc::gettid() };
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, CALL_THREAD_NICENESS) };
    if set != 0 {
        tracing::debug!("cannot lower a call thread's priority: {}", std::io::Error::last_os_error());
    }
}
