//! What the collector's process tests share.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// A loopback address nothing listens on, never the same twice in a test
/// binary: the probe listener closes at once, so the kernel may hand its
/// port to the next probe, and a collector given one port for two
/// listeners fails to start.
pub(crate) fn free_port() -> SocketAddr {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let address = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("bind an ephemeral loopback port");
        if GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(address.port())
        {
            return address;
        }
    }
}
