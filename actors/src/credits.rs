//! Credit-based flow control: a stage may hold at most `max_files` files and `max_bytes` bytes in flight.
//! Taking a credit waits while the budget is spent; dropping the [`Grant`] returns it. Because upstream waits
//! instead of queueing, peak memory is bounded by the limits whatever the size of the backlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Bytes are counted in units of this size so that budgets of many gigabytes fit a semaphore's `u32` permits.
const BYTE_UNIT: u64 = 1024;

/// The budget of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Files in flight at most.
    pub max_files: u32,
    /// Bytes in flight at most (a single file larger than this still passes, alone).
    pub max_bytes: u64,
}

/// The credits were closed (the pipeline is shutting down): no more work may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("flow credits closed: the pipeline is shutting down")]
pub struct CreditsClosed;

/// Shared by the producer that takes credits and the consumers whose grants return them.
#[derive(Debug, Clone)]
pub struct Credits {
    limits: FlowLimits,
    files: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    byte_units: u32,
    /// Whole grants out now (a waiter holding a file slot while it waits for bytes is not one).
    granted: Arc<AtomicU32>,
}

/// Credits for one file in flight; returned when dropped.
#[derive(Debug)]
pub struct Grant {
    _file: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    bytes: u64,
    granted: Arc<AtomicU32>,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.granted.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Grant {
    /// The bytes this grant accounts for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Credits {
    pub fn new(limits: FlowLimits) -> Self {
        let byte_units = limits.max_bytes.div_ceil(BYTE_UNIT).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        Credits {
            limits,
            files: Arc::new(Semaphore::new(limits.max_files.max(1) as usize)),
            bytes: Arc::new(Semaphore::new(byte_units as usize)),
            byte_units,
            granted: Arc::new(AtomicU32::new(0)),
        }
    }

    pub fn limits(&self) -> FlowLimits {
        self.limits
    }

    /// Waits for credit for one file of `bytes` bytes.
    pub async fn acquire(&self, bytes: u64) -> Result<Grant, CreditsClosed> {
        // Files first: a waiter holding byte credit while it waits for a file slot would starve the others.
        let file = self.files.clone().acquire_owned().await.map_err(|_| CreditsClosed)?;
        let units = self.units(bytes);
        let bytes_permit = self.bytes.clone().acquire_many_owned(units).await.map_err(|_| CreditsClosed)?;
        Ok(self.grant(file, bytes_permit, bytes))
    }

    /// Takes credit for one file if it is available now.
    pub fn try_acquire(&self, bytes: u64) -> Result<Option<Grant>, CreditsClosed> {
        let file = match self.files.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Ok(None),
            Err(TryAcquireError::Closed) => return Err(CreditsClosed),
        };
        match self.bytes.clone().try_acquire_many_owned(self.units(bytes)) {
            Ok(b) => Ok(Some(self.grant(file, b, bytes))),
            Err(TryAcquireError::NoPermits) => Ok(None),
            Err(TryAcquireError::Closed) => Err(CreditsClosed),
        }
    }

    fn grant(&self, file: OwnedSemaphorePermit, bytes_permit: OwnedSemaphorePermit, bytes: u64) -> Grant {
        self.granted.fetch_add(1, Ordering::SeqCst);
        Grant { _file: file, _bytes: bytes_permit, bytes, granted: self.granted.clone() }
    }

    /// Files holding a whole grant now: every file let into the pipeline and not yet written.
    pub fn granted(&self) -> u32 {
        self.granted.load(Ordering::SeqCst)
    }

    /// Files and bytes (rounded up to the accounting unit) in flight now.
    pub fn in_flight(&self) -> (u32, u64) {
        let files = self.limits.max_files.max(1) - self.files.available_permits() as u32;
        let units = u64::from(self.byte_units) - self.bytes.available_permits() as u64;
        (files, units * BYTE_UNIT)
    }

    /// Refuses all further credit; waiters wake with [`CreditsClosed`]. Grants already out stay valid.
    pub fn close(&self) {
        self.files.close();
        self.bytes.close();
    }

    /// A file larger than the whole budget takes the whole budget: it passes, but alone.
    fn units(&self, bytes: u64) -> u32 {
        (bytes.div_ceil(BYTE_UNIT).max(1)).min(u64::from(self.byte_units)) as u32
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn file_limit_is_never_exceeded() {
        let credits = Credits::new(FlowLimits { max_files: 3, max_bytes: 1 << 30 });
        let live = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let grant = credits.acquire(10).await.expect("open");
            let (live, peak) = (live.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                live.fetch_sub(1, Ordering::SeqCst);
                drop(grant);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert!(peak.load(Ordering::SeqCst) <= 3, "peak {}", peak.load(Ordering::SeqCst));
        assert_eq!(credits.in_flight(), (0, 0));
    }

    #[tokio::test]
    async fn byte_limit_blocks_until_a_grant_returns() {
        let credits = Credits::new(FlowLimits { max_files: 100, max_bytes: 100 * 1024 });
        let a = credits.acquire(60 * 1024).await.expect("a");
        assert!(credits.try_acquire(60 * 1024).expect("open").is_none(), "second 60 KiB must wait");
        assert_eq!(credits.in_flight(), (1, 60 * 1024));
        drop(a);
        assert!(credits.try_acquire(60 * 1024).expect("open").is_some());
    }

    #[tokio::test]
    async fn an_oversized_file_passes_alone() {
        let credits = Credits::new(FlowLimits { max_files: 10, max_bytes: 4096 });
        let big = credits.acquire(1 << 20).await.expect("big");
        assert_eq!(big.bytes(), 1 << 20);
        assert!(credits.try_acquire(1).expect("open").is_none());
        drop(big);
        assert!(credits.try_acquire(1).expect("open").is_some());
    }

    #[tokio::test]
    async fn close_wakes_waiters() {
        let credits = Credits::new(FlowLimits { max_files: 1, max_bytes: 1024 });
        let held = credits.acquire(1).await.expect("first");
        let waiter = {
            let c = credits.clone();
            tokio::spawn(async move { c.acquire(1).await })
        };
        tokio::task::yield_now().await;
        credits.close();
        assert_eq!(waiter.await.expect("join").err(), Some(CreditsClosed));
        drop(held);
        assert!(credits.try_acquire(1).is_err());
    }
}
