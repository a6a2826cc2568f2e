//! Turns SIGTERM and Ctrl-C into the application's shutdown token.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or Ctrl-C.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => tracing::info!(signal = "SIGINT", "signal received"),
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
            tracing::info!(signal = "ctrl-c", "signal received");
        }
        token.cancel();
    });
}
