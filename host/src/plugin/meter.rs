//! What a call costs and who pays for it: a pod may carry a [`CallMeter`]
//! (a server gives each tenant's pods the tenant's), which admits each call
//! against its quotas before the call waits for its turn, and receives the
//! call's [`CallRecord`] when it ends: wall time, CPU time (the call
//! thread's CPU clock read around every poll of the call), peak linear
//! memory and outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use super::result::ToolError;

/// What one finished call measured.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// The calling pod.
    pub pod: String,
    /// The plugin.
    pub plugin: Arc<str>,
    /// The plugin's component's SHA-256.
    pub digest: String,
    /// The tool.
    pub tool: String,
    /// From admission to the end, waiting for a turn included.
    pub wall: Duration,
    /// CPU time the call's thread spent on it.
    pub cpu: Duration,
    /// The most linear memory the instance had, in bytes.
    pub peak_memory: u64,
    /// `ok`, or the error's kind.
    pub outcome: &'static str,
}

/// Admits a pod's calls against quotas and receives what they cost.
pub trait CallMeter: Send + Sync {
    /// Before a call of `tool` by `pod` waits for its turn: a refusal
    /// (a [`ToolError::quota`]) or a ticket held while the call runs.
    fn admit(&self, pod: &super::PodContext, tool: &str) -> Result<Box<dyn Send + Sync>, ToolError>;

    /// After the call, whatever its outcome.
    fn record(&self, record: CallRecord);
}

/// The CPU time this thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec.max(0) as u64, now.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// CPU time added up across threads, in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct CpuSpent(Arc<AtomicU64>);

impl CpuSpent {
    /// What has been spent so far.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// A future whose polls' CPU time is added to a [`CpuSpent`] as they
/// happen (each poll runs on one thread, so the thread's CPU clock around
/// it is what the poll cost). What a cancelled future spent is counted too.
pub struct CpuTimed<F> {
    inner: Pin<Box<F>>,
    spent: CpuSpent,
}

impl<F: Future> CpuTimed<F> {
    /// Times `inner` into `spent`.
    pub fn new(inner: F, spent: CpuSpent) -> CpuTimed<F> {
        CpuTimed { inner: Box::pin(inner), spent }
    }
}

impl<F: Future> Future for CpuTimed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = thread_cpu_time();
        let poll = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_time().saturating_sub(start);
        self.spent.0.fetch_add(spent.as_nanos().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_future_is_charged_its_cpu_time_and_a_sleeping_one_little() {
        let spent = CpuSpent::default();
        CpuTimed::new(
            async {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(30) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            },
            spent.clone(),
        )
        .await;
        assert!(spent.get() >= Duration::from_millis(20), "{:?}", spent.get());
        let idle = CpuSpent::default();
        CpuTimed::new(tokio::time::sleep(Duration::from_millis(30)), idle.clone()).await;
        assert!(idle.get() < Duration::from_millis(10), "{:?}", idle.get());
    }
}
