//! The commands beside `run`: `report`, `check` and `queue`, a module each.

mod check;
mod queue;
mod report;

pub use check::{check, checks_failed, looks_like_a_default_host_name};
pub use queue::{queue, QueueCommandError};
pub use report::{report, report_request, GaveUp, ReportError};

/// `1 check`, `2 checks`.
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}
