//! The signals the service answers: SIGHUP reloads the config, SIGTERM and SIGINT drain and exit.
//! They are registered before any thread starts, so no thread is ever killed by their default
//! action; a dedicated loop (the main thread) receives them one at a time.

use std::collections::VecDeque;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// What a received signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Reload,
    /// SIGTERM or SIGINT, named.
    Shutdown(&'static str),
}

/// The registered signals. Create it first thing in `main`, before any thread exists.
pub struct SignalSet {
    signals: Signals,
    /// Signals taken from the kernel together and not yet handed out (at most one per kind:
    /// repeats of a pending signal coalesce, as in the kernel).
    pending: VecDeque<Event>,
}

impl SignalSet {
    pub fn install() -> Result<SignalSet, String> {
        let signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        Ok(SignalSet {
            signals,
            pending: VecDeque::with_capacity(3),
        })
    }

    /// Block until the next signal. Signals that arrived together are handed out in order.
    pub fn wait(&mut self) -> Event {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            for event in self.signals.wait().filter_map(event_of) {
                if !self.pending.contains(&event) {
                    self.pending.push_back(event);
                }
            }
        }
    }
}

fn event_of(signal: i32) -> Option<Event> {
    match signal {
        SIGHUP => Some(Event::Reload),
        SIGTERM => Some(Event::Shutdown("SIGTERM")),
        SIGINT => Some(Event::Shutdown("SIGINT")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_events() {
        assert_eq!(event_of(SIGHUP), Some(Event::Reload));
        assert_eq!(event_of(SIGTERM), Some(Event::Shutdown("SIGTERM")));
        assert_eq!(event_of(SIGINT), Some(Event::Shutdown("SIGINT")));
        assert_eq!(event_of(libc::SIGUSR1), None);
    }
}
