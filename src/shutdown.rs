//! Shutdown signals: the first SIGTERM or SIGINT asks for a graceful drain; a second one forces
//! the exit (status 130) without waiting.

use std::future::Future;

/// Registers the SIGTERM/SIGINT handlers now (call it inside the runtime, before starting work)
/// and returns a future that resolves on the first signal and then arms a task that exits the
/// process on the second.
///
/// The same listeners serve both signals, so a second signal that arrives before the exit task
/// starts waiting is still seen (a listener created later would miss it).
pub fn signal() -> impl Future<Output = ()> {
    let mut signals = Signals::register();
    async move {
        signals.recv().await;
        tracing::info!("shutdown signal received; a second signal forces the exit");
        tokio::spawn(async move {
            signals.recv().await;
            tracing::error!("second shutdown signal: exiting now without draining");
            std::process::exit(130);
        });
    }
}

#[cfg(unix)]
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

#[cfg(unix)]
impl Signals {
    fn register() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Self(Some((term, int))),
            _ => Self(None),
        }
    }

    async fn recv(&mut self) {
        match &mut self.0 {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without signal handlers we cannot drain on a signal; fall back to Ctrl-C.
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn register() -> Self {
        Self
    }

    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
