//! `least-loaded`: the least loaded eligible worker; quality only matters
//! through the hints.

use super::screen::screen;
use super::{Decision, Policy, RouteInput, WorkerView, pick};

#[derive(Debug, Clone, Default)]
pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }

    fn decide(&self, input: &RouteInput<'_>, workers: &[WorkerView<'_>]) -> Decision {
        let mut candidates = screen(input, workers);
        for c in &mut candidates {
            c.score = -c.load;
        }
        pick(self.name(), candidates, |c| {
            format!("least loaded eligible worker (load {:.2})", c.load)
        })
    }
}
