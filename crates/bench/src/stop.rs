//! SIGINT, SIGTERM and SIGHUP end a run cleanly: a handler raises a flag and the sections
//! stop at their next step with an error, so every guard (pods, daemons, the lab) still
//! runs its cleanup. A handler, not a blocked mask: children inherit a signal mask across
//! exec (the OVS daemons the lab starts would then ignore SIGTERM), but not handlers.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    STOP.store(true, Ordering::SeqCst);
}

pub fn install() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(s, &action) }?;
    }
    Ok(())
}

/// Fails once a stop was asked for.
pub fn check() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted by a signal");
    }
    Ok(())
}
