//! Measuring a process from outside: CPU and peak RSS from `/proc`, progress samples of the
//! output counts, and a SIGTERM stop.

use std::process::Child;
use std::time::{Duration, Instant};

/// Linux reports CPU times in clock ticks of `USER_HZ`, 100 on every Linux ABI in use.
const USER_HZ: f64 = 100.0;

/// A process's CPU (user + sys) and peak resident set so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub cpu: Duration,
    pub peak_rss_kib: u64,
}

impl ProcStats {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` once the process is gone.
    pub fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces), from field 3 (state).
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let peak_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Some(Self {
            cpu: Duration::from_secs_f64((utime + stime) / USER_HZ),
            peak_rss_kib,
        })
    }
}

/// Output counts over time.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub clearsale: i64,
    pub unico: i64,
    pub dead: i64,
}

impl Sample {
    fn total(&self) -> i64 {
        self.clearsale + self.unico + self.dead
    }
}

pub struct Progress {
    start: Instant,
    samples: Vec<Sample>,
}

impl Progress {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            samples: Vec::new(),
        }
    }

    pub fn sample(&mut self, clearsale: i64, unico: i64, dead: i64) {
        self.samples.push(Sample {
            at: self.start.elapsed(),
            clearsale,
            unico,
            dead,
        });
    }

    /// The samples, thinned to about four a second: `[seconds, clearsale, unico, dead]`.
    pub fn series(&self) -> Vec<[f64; 4]> {
        let mut out: Vec<[f64; 4]> = Vec::new();
        for s in &self.samples {
            let t = s.at.as_secs_f64();
            if out.last().is_none_or(|l| t - l[0] >= 0.25) {
                out.push([t, s.clearsale as f64, s.unico as f64, s.dead as f64]);
            }
        }
        out
    }

    /// When the first output appeared (start-up and the group join).
    pub fn first_output(&self) -> Option<Duration> {
        self.samples.iter().find(|s| s.total() > 0).map(|s| s.at)
    }

    /// When `of` reached `count`, interpolated between the two samples around it.
    fn time_at(&self, of: impl Fn(&Sample) -> i64, count: f64) -> Option<Duration> {
        let i = self.samples.iter().position(|s| of(s) as f64 >= count)?;
        let after = &self.samples[i];
        let Some(before) = i.checked_sub(1).map(|j| &self.samples[j]) else {
            return Some(after.at);
        };
        let (c0, c1) = (of(before) as f64, of(after) as f64);
        let share = if c1 > c0 {
            (count - c0) / (c1 - c0)
        } else {
            1.0
        };
        Some(before.at + (after.at - before.at).mul_f64(share.clamp(0.0, 1.0)))
    }

    /// Input events per second in the steady state: the time between 10% and 90% of the
    /// `landed` outputs, scaled to the `events` inputs they stand for.
    pub fn steady_rate(&self, landed: usize, events: usize) -> f64 {
        let total = |s: &Sample| s.total();
        let (Some(t10), Some(t90)) = (
            self.time_at(total, landed as f64 * 0.1),
            self.time_at(total, landed as f64 * 0.9),
        ) else {
            return f64::NAN;
        };
        let span = (t90 - t10).as_secs_f64().max(0.05);
        events as f64 * 0.8 / span
    }

    /// One provider's outputs per second, from the first output to its last.
    pub fn rate_of(&self, of: impl Fn(&Sample) -> i64 + Copy, expected: usize) -> f64 {
        let (Some(first), Some(last)) = (self.first_output(), self.time_at(of, expected as f64))
        else {
            return f64::NAN;
        };
        expected as f64 / (last - first).as_secs_f64().max(0.05)
    }
}

/// Sends SIGTERM and waits up to `grace` for the exit; returns the exit code (`None` when it
/// was killed by a signal or had to be killed at the deadline).
pub fn terminate(child: &mut Child, grace: Duration) -> Result<Option<i32>, String> {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.code()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            Err(e) => return Err(format!("waiting for the service: {e}")),
        }
    }
}
