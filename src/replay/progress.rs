//! A replay's progress while it runs, read from each partition's stored progress
//! ([`Bounds::progress`]): on a terminal, progress bars (indicatif) per partition and in total
//! with rate and ETA; otherwise periodic log lines (done, total, rate, ETA).

use crate::engine::bounds::Bounds;
use crate::engine::stats::EngineStats;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressSettings {
    /// How often a progress line is logged (without bars).
    pub interval: Duration,
    /// Draw progress bars on stderr instead of logging progress lines.
    pub bars: bool,
}

impl Default for ProgressSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            bars: false,
        }
    }
}

/// How often the bars are redrawn.
const BAR_TICK: Duration = Duration::from_millis(200);

/// The progress of the whole range at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    /// Offsets of the range already done (committed progress).
    pub done: i64,
    /// Offsets of the range in this run.
    pub total: i64,
}

impl Totals {
    /// The offsets done per second since `start` (with `done_at_start` done then), and the time
    /// left at that rate (`None` before any progress).
    pub fn rate_and_eta(&self, done_at_start: i64, elapsed: Duration) -> (f64, Option<Duration>) {
        let secs = elapsed.as_secs_f64();
        let progressed = (self.done - done_at_start).max(0) as f64;
        let rate = if secs > 0.0 { progressed / secs } else { 0.0 };
        let left = (self.total - self.done).max(0) as f64;
        let eta = (rate > 0.0).then(|| Duration::from_secs_f64(left / rate));
        (rate, eta)
    }
}

/// Sums each partition's progress (`next` within `[start, end)`) against `starts`.
pub fn totals(progress: &[(i64, i64, i64)]) -> Totals {
    progress
        .iter()
        .fold(Totals { done: 0, total: 0 }, |t, (start, next, end)| {
            Totals {
                done: t.done + (next.min(end) - start).max(0),
                total: t.total + (end - start).max(0),
            }
        })
}

/// The running reporter; [`Reporter::finish`] stops it.
pub struct Reporter {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Reporter {
    pub fn finish(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Starts showing progress: bars, or a log line every `settings.interval`.
pub fn start(settings: ProgressSettings, bounds: Arc<Bounds>, stats: Arc<EngineStats>) -> Reporter {
    if settings.bars {
        return start_bars(bounds);
    }
    let starts: Vec<i64> = bounds.progress().iter().map(|(_, next, _)| *next).collect();
    let began = Instant::now();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(settings.interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now: Vec<(i64, i64, i64)> = bounds
                .progress()
                .iter()
                .zip(&starts)
                .map(|((_, next, end), start)| (*start, *next, *end))
                .collect();
            let t = totals(&now);
            let (rate, eta) = t.rate_and_eta(0, began.elapsed());
            let s = stats.snapshot();
            tracing::info!(
                done = t.done,
                total = t.total,
                rate_per_second = format!("{rate:.1}"),
                eta = eta.map(
                    |d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
                ),
                published = s.published,
                dead_lettered = s.dead_lettered_total(),
                filtered_by_time = s.filtered_by_time,
                "replay progress"
            );
        }
    });
    Reporter { task: Some(task) }
}

/// Bars on stderr: one per partition and one in total, updated from the stored progress.
fn start_bars(bounds: Arc<Bounds>) -> Reporter {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = |template: &str| {
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
    };
    let initial = bounds.progress();
    let bars: Vec<(ProgressBar, i64)> = initial
        .iter()
        .map(|(tp, next, end)| {
            let bar = multi.add(ProgressBar::new((end - next).max(0) as u64));
            bar.set_style(style(
                "{prefix:>28} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
            ));
            bar.set_prefix(tp.to_string());
            (bar, *next)
        })
        .collect();
    let total_len: i64 = initial
        .iter()
        .map(|(_, next, end)| (end - next).max(0))
        .sum();
    let total = multi.add(ProgressBar::new(total_len as u64));
    total.set_style(style(
        "{prefix:>28} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} ({elapsed})",
    ));
    total.set_prefix("total");
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(BAR_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = bounds.progress();
            let mut sum = 0;
            for ((bar, start), (_, next, end)) in bars.iter().zip(&now) {
                let len = (end - start).max(0) as u64;
                let done = (next - start).max(0) as u64;
                bar.set_length(len);
                bar.set_position(done);
                sum += done;
            }
            total.set_length(
                bars.iter()
                    .zip(&now)
                    .map(|((_, start), (_, _, end))| (end - start).max(0) as u64)
                    .sum(),
            );
            total.set_position(sum);
        }
    });
    Reporter { task: Some(task) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_each_partition_within_its_range() {
        let t = totals(&[(10, 15, 20), (0, 0, 0), (5, 9, 7)]);
        assert_eq!(t, Totals { done: 7, total: 12 });
    }

    #[test]
    fn rate_and_eta_follow_the_progress_since_the_start() {
        let t = Totals {
            done: 60,
            total: 100,
        };
        let (rate, eta) = t.rate_and_eta(20, Duration::from_secs(4));
        assert_eq!(rate, 10.0);
        assert_eq!(eta, Some(Duration::from_secs(4)));
        let (rate, eta) = t.rate_and_eta(60, Duration::from_secs(4));
        assert_eq!(rate, 0.0);
        assert_eq!(eta, None, "no progress yet: no estimate");
    }
}
