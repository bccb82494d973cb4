//! Shutdown signals: the first SIGTERM or SIGINT asks for a graceful drain; a second one forces
//! the exit (status 130) without waiting.

/// Resolves on the first SIGTERM or SIGINT, and arms a task that exits the process on the second.
pub async fn signal() {
    wait_one().await;
    tracing::info!("shutdown signal received; a second signal forces the exit");
    tokio::spawn(async {
        wait_one().await;
        tracing::error!("second shutdown signal: exiting now without draining");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn wait_one() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers we cannot drain on a signal; fall back to Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_one() {
    let _ = tokio::signal::ctrl_c().await;
}
