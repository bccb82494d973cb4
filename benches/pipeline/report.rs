//! The results: a table on the terminal, a JSON file, and the README's results block.

use serde::Serialize;
use std::path::Path;

#[derive(Debug, Default, Serialize)]
pub struct Check {
    pub problems: Vec<String>,
}

impl Check {
    pub fn fail(&mut self, problem: String) {
        self.problems.push(problem);
    }

    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct Baselines {
    /// (a) consume → produce with the service's client settings, records/s.
    pub passthrough_eps: f64,
    pub passthrough_cpu_us: f64,
    /// (b) the simulator's raw rate through the service's client at the same concurrency.
    pub simulator_rps: f64,
    pub simulator_requests: usize,
}

impl Baselines {
    pub fn smaller(&self) -> f64 {
        self.passthrough_eps.min(self.simulator_rps)
    }
}

#[derive(Debug, Serialize)]
pub struct ProviderRates {
    pub clearsale_eps: f64,
    pub unico_eps: f64,
}

#[derive(Debug, Serialize)]
pub struct ScenarioResult {
    pub name: &'static str,
    pub latency_ms: u64,
    pub events: usize,
    pub unique_clearsale: usize,
    pub unique_unico: usize,
    pub duplicates: usize,
    pub malformed: usize,
    pub max_in_flight: usize,
    /// From the process start to the first output (start-up, group join, first fetch).
    pub startup_s: Option<f64>,
    /// From the process start to the last output.
    pub run_s: f64,
    pub steady_eps: f64,
    pub whole_eps: f64,
    pub cpu_us_per_event: f64,
    pub peak_rss_mib: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub providers: Option<ProviderRates>,
    /// Records written to the wait topics (ClearSale, Unico); `None` without isolation.
    pub diverted: Option<[i64; 2]>,
    pub baselines: Option<Baselines>,
    pub check: Check,
    pub log: String,
    /// Outputs over time: `[seconds since the service started, ClearSale, Unico, dead letters]`.
    pub progress: Vec<[f64; 4]>,
}

impl ScenarioResult {
    /// The pipeline's steady rate over the smaller baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baselines
            .as_ref()
            .map(|b| self.steady_eps / b.smaller())
    }

    /// The concurrency-bound ideal: in-flight ÷ latency.
    pub fn ideal_eps(&self) -> Option<f64> {
        (self.latency_ms > 0).then(|| self.max_in_flight as f64 * 1000.0 / self.latency_ms as f64)
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub date: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            cpu,
            date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        }
    }
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v >= 100.0 {
        let s = format!("{:.0}", v);
        // thousands separators
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.1}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), num)
}

pub fn print_one(r: &ScenarioResult) {
    eprintln!(
        "{}: {} ev/s steady, start-up {}s, {} µs CPU/event, peak RSS {} MiB, p50 {} ms, p99 {} ms — check {}",
        r.name,
        num(r.steady_eps),
        opt(r.startup_s),
        num(r.cpu_us_per_event),
        num(r.peak_rss_mib),
        opt(r.latency_p50_ms),
        opt(r.latency_p99_ms),
        if r.check.passed() { "passed".to_string() } else { format!("FAILED: {}", r.check.problems.join("; ")) }
    );
}

/// The Markdown table (also the README block).
pub fn table(results: &[ScenarioResult]) -> String {
    let mut t = String::from(
        "| scenario | events | start-up s | steady events/s | CPU µs/event | peak RSS MiB | e2e p50 / p99 ms | passthrough (a) | simulator raw (b) | ratio to min(a, b) | check |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let name = match (r.name, r.latency_ms) {
            ("latency", ms) => format!("latency {ms} ms"),
            ("mixed", _) => "mixed, Unico at 10/s".into(),
            ("mixed-unlimited", _) => "mixed, Unico unlimited".into(),
            (n, _) => format!("{n} (0 ms)"),
        };
        let (a, b, ratio) = match &r.baselines {
            Some(b) => (
                num(b.passthrough_eps),
                num(b.simulator_rps),
                opt(r.ratio()).to_string(),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        t.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} / {} | {a} | {b} | {ratio} | {} |\n",
            num(r.events as f64),
            opt(r.startup_s),
            num(r.steady_eps),
            num(r.cpu_us_per_event),
            num(r.peak_rss_mib),
            opt(r.latency_p50_ms),
            opt(r.latency_p99_ms),
            if r.check.passed() { "passed" } else { "FAILED" }
        ));
    }
    let notes: Vec<String> = results
        .iter()
        .filter_map(|r| {
            let mut parts = Vec::new();
            if let Some(ideal) = r.ideal_eps() {
                parts.push(format!(
                    "{}: {:.0}% of in-flight ÷ latency ({} ÷ {} ms = {} events/s)",
                    r.name,
                    r.steady_eps / ideal * 100.0,
                    r.max_in_flight,
                    r.latency_ms,
                    num(ideal)
                ));
            }
            if let Some(p) = &r.providers {
                parts.push(format!(
                    "{}: ClearSale {} events/s, Unico {} events/s ({} and {} unique events)",
                    r.name,
                    num(p.clearsale_eps),
                    num(p.unico_eps),
                    num(r.unique_clearsale as f64),
                    num(r.unique_unico as f64)
                ));
                // ClearSale beside a provider slower than its arrivals, against the same
                // workload with no such provider (mixed-unlimited, measured the same way in
                // this run), and against the 0 ms scenario's steady rate.
                if r.name == "mixed" {
                    let unimpeded = results
                        .iter()
                        .find(|c| c.name == "mixed-unlimited")
                        .and_then(|c| c.providers.as_ref());
                    if let Some(u) = unimpeded {
                        parts.push(format!(
                            "ClearSale at {:.0}% of its unimpeded rate (mixed, Unico unlimited)",
                            p.clearsale_eps / u.clearsale_eps * 100.0
                        ));
                    }
                    if let Some(cpu) = results.iter().find(|c| c.name == "cpu") {
                        parts.push(format!(
                            "{:.0}% of the 0 ms scenario's steady rate",
                            p.clearsale_eps / cpu.steady_eps * 100.0
                        ));
                    }
                }
            }
            if let Some([cs, un]) = r.diverted {
                if cs + un > 0 {
                    parts.push(format!(
                        "diverted to the wait topics: ClearSale {}, Unico {}",
                        num(cs as f64),
                        num(un as f64)
                    ));
                }
            }
            (!parts.is_empty()).then(|| parts.join("; "))
        })
        .collect();
    for n in notes {
        t.push_str(&format!("\n- {n}"));
    }
    t
}

pub fn print_table(results: &[ScenarioResult], machine: &Machine) {
    println!(
        "\npipeline benchmark — {} cores ({}), {}\n",
        machine.cores, machine.cpu, machine.date
    );
    println!("{}", table(results));
}

pub fn write_json(
    path: &Path,
    results: &[ScenarioResult],
    machine: &Machine,
    command: &[String],
) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let value = serde_json::json!({
        "machine": machine,
        "command": command,
        "scenarios": results,
    });
    let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Replaces the block between the `block` markers of `readme`
/// (`<!-- bench:{block}:start -->` … `<!-- bench:{block}:end -->`) with this run's table.
pub fn update_readme(
    readme: &Path,
    block: &str,
    results: &[ScenarioResult],
    machine: &Machine,
    command: &str,
) -> Result<(), String> {
    let start_marker = format!("<!-- bench:{block}:start -->");
    let end_marker = format!("<!-- bench:{block}:end -->");
    let (start_marker, end_marker) = (start_marker.as_str(), end_marker.as_str());
    let text = std::fs::read_to_string(readme).map_err(|e| format!("{}: {e}", readme.display()))?;
    let (Some(start), Some(end)) = (text.find(start_marker), text.find(end_marker)) else {
        return Err(format!(
            "{} has no {start_marker} … {end_marker} block",
            readme.display()
        ));
    };
    let block = format!(
        "{start_marker}\nMeasured with `{command}` on {} ({} cores, {}), written by the harness:\n\n{}\n{end_marker}",
        machine.date,
        machine.cores,
        machine.cpu,
        table(results)
    );
    let updated = format!(
        "{}{}{}",
        &text[..start],
        block,
        &text[end + end_marker.len()..]
    );
    std::fs::write(readme, updated).map_err(|e| format!("{}: {e}", readme.display()))
}
