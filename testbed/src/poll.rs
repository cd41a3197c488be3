//! The one way this workspace waits for something: poll until a deadline,
//! then fail saying what was awaited.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How often [`until`] checks.
const INTERVAL: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Some`, and returns that value; fails with
/// `what` once `timeout` has passed without it.
pub fn until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(INTERVAL);
    }
}

/// Like [`until`], for a check that can fail for good: an `Err` from `check`
/// ends the wait at once with that error.
pub fn until_ok<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(INTERVAL);
    }
}

/// Like [`until_ok`], for an async `check` (e.g. one that asks a gRPC
/// server); it sleeps without blocking the runtime's thread.
pub async fn until_async<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_and_fails_on_its_deadline() {
        let mut calls = 0;
        let value = until("the third call", Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        })
        .unwrap();
        assert_eq!(value, 3);

        let err = until::<()>("nothing", Duration::from_millis(120), || None).unwrap_err();
        assert_eq!(err.to_string(), "timed out after 120ms waiting for nothing");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_async_wait_fails_on_its_deadline_too() {
        let mut calls = 0;
        let value = until_async("the second call", Duration::from_secs(5), async || {
            calls += 1;
            Ok((calls == 2).then_some(calls))
        })
        .await
        .unwrap();
        assert_eq!(value, 2);
        let err =
            until_async::<()>("nothing", Duration::from_millis(120), async || Ok(None)).await.unwrap_err();
        assert_eq!(err.to_string(), "timed out after 120ms waiting for nothing");
    }

    #[test]
    fn a_failing_check_ends_the_wait_at_once() {
        let started = Instant::now();
        let err = until_ok::<()>("a broken thing", Duration::from_secs(30), || bail!("broken")).unwrap_err();
        assert_eq!(err.to_string(), "broken");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
