//! Waiting for SIGTERM or SIGINT (Ctrl-C).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Which signal asked us to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// SIGTERM: a supervisor (the launcher, kubelet, systemd) stops us.
    Terminate,
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
}

impl ShutdownReason {
    /// The signal's name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terminate => "SIGTERM",
            Self::Interrupt => "SIGINT",
        }
    }
}

/// Handlers for SIGTERM and SIGINT, installed by [`ShutdownSignals::install`]:
/// from then on these signals no longer end the process, they are delivered
/// to [`ShutdownSignals::recv`].
pub struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers. Must be called inside a Tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> ShutdownReason {
        tokio::select! {
            _ = self.terminate.recv() => ShutdownReason::Terminate,
            _ = self.interrupt.recv() => ShutdownReason::Interrupt,
        }
    }
}
