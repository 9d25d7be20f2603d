//! SIGINT and SIGTERM for a whole command, and a boot they can cut short.

use tokio::signal::unix::{SignalKind, signal};

use crate::cluster::{BootOptions, Cluster};
use crate::exit::Error;
use crate::profile::Profile;

/// SIGINT (Ctrl-C) and SIGTERM, registered once for the whole command:
/// a signal delivered while no one is waiting is kept for the next wait,
/// where re-registering per wait would drop it.
pub struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub fn new() -> Interrupts {
        // Registration fails only if the runtime has no signal driver, and
        // the runtime is built with `enable_all`.
        Interrupts {
            int: signal(SignalKind::interrupt()).expect("signal driver is enabled"),
            term: signal(SignalKind::terminate()).expect("signal driver is enabled"),
        }
    }

    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

impl Default for Interrupts {
    fn default() -> Self {
        Interrupts::new()
    }
}

/// Boots the cluster; `None` if Ctrl-C came first.
pub async fn boot_unless_interrupted(
    profile: &Profile,
    opts: &BootOptions,
    interrupts: &mut Interrupts,
) -> Result<Option<Cluster>, Error> {
    tokio::select! {
        c = profile.boot(opts) => Ok(Some(c?)),
        _ = interrupts.next() => {
            // Dropping the boot future drops its supervisor, which kills
            // every node started so far.
            crate::console::say("faultline: interrupted during boot; nothing is left running");
            Ok(None)
        }
    }
}
