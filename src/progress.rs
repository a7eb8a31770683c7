//! Progress of long work: a bar (objects, bytes, rate) on a terminal, and
//! nothing extra otherwise, where the `tracing` logs of each step suffice.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts objects and bytes done, and draws a bar when stderr is a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
    objects: AtomicU64,
    bytes: AtomicU64,
}

impl Progress {
    /// Creates a progress display for `total_objects` objects of `total_bytes` bytes.
    /// `enabled` turns the bar off even on a terminal (for `--json`).
    pub fn new(label: &str, total_objects: u64, total_bytes: u64, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_owned());
            bar.set_message(format!("0/{total_objects} objects"));
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Self { bar, objects: AtomicU64::new(0), bytes: AtomicU64::new(0) }
    }

    /// Creates a progress display that draws nothing.
    pub fn hidden() -> Self {
        Self::new("", 0, 0, false)
    }

    pub fn add(&self, objects: u64, bytes: u64, total_objects: u64) {
        let done = self.objects.fetch_add(objects, Ordering::Relaxed) + objects;
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
            bar.set_message(format!("{done}/{total_objects} objects"));
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
