//! Waiting with a deadline: poll a real check at an interval, report
//! progress, never sleep blindly.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// What one look at the thing being waited for found.
#[derive(Debug)]
pub enum Check<T, E> {
    Ready(T),
    NotYet,
    /// It will never become ready (e.g. the process died); stop waiting.
    Failed(E),
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError<E> {
    #[error("timed out after {waited:?}")]
    TimedOut { waited: Duration },
    #[error("{0}")]
    Failed(E),
}

/// Calls `check` every `interval` until it is ready, fails, or `deadline`
/// passes. `progress` is called after each unsuccessful look with the time
/// waited so far (for a spinner or a log line).
pub async fn wait_until<T, E, F, Fut>(
    deadline: Instant,
    interval: Duration,
    mut check: F,
    mut progress: impl FnMut(Duration),
) -> Result<T, WaitError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Check<T, E>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Check::Ready(v) => return Ok(v),
            Check::Failed(e) => return Err(WaitError::Failed(e)),
            Check::NotYet => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitError::TimedOut {
                waited: now - start,
            });
        }
        progress(now - start);
        tokio::time::sleep_until((now + interval).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_after_some_looks() {
        let mut looks = 0;
        let mut reports = 0;
        let got: Result<u32, WaitError<()>> = wait_until(
            Instant::now() + Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                looks += 1;
                let n = looks;
                async move {
                    if n == 3 {
                        Check::Ready(n)
                    } else {
                        Check::NotYet
                    }
                }
            },
            |_| reports += 1,
        )
        .await;
        assert_eq!(got.unwrap(), 3);
        assert_eq!(reports, 2);
    }

    #[tokio::test]
    async fn times_out_and_fails() {
        let r: Result<(), WaitError<String>> = wait_until(
            Instant::now() + Duration::from_millis(30),
            Duration::from_millis(5),
            || async { Check::NotYet },
            |_| {},
        )
        .await;
        assert!(matches!(r, Err(WaitError::TimedOut { .. })));
        let r: Result<(), WaitError<String>> = wait_until(
            Instant::now() + Duration::from_secs(5),
            Duration::from_millis(5),
            || async { Check::Failed("exited".to_string()) },
            |_| {},
        )
        .await;
        assert_eq!(r.unwrap_err().to_string(), "exited");
    }
}
