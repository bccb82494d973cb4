//! What the demo prints: the published records (a table, or one JSON line each), the dead
//! letters, and the summary.

use super::samples::Sample;
use crate::engine::stats::StatsSnapshot;
use crate::failure::ErrorClass;
use serde_json::{json, Value};
use std::io::{self, Write};
use std::time::Duration;

/// How the demo prints its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Progress, then aligned tables of records and dead letters, then a summary.
    #[default]
    Table,
    /// JSON lines only (for `jq`): one per record, one per dead letter, one summary.
    Json,
}

/// Everything the demo observed.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// How many webhooks were produced.
    pub inputs: usize,
    /// The webhooks produced, in order (input `n` is `samples[n - 1]`).
    pub samples: Vec<Sample>,
    /// The records on the output topics, in input order.
    pub records: Vec<PublishedRecord>,
    /// The records the polling fallback published (the withheld webhook's result): not the
    /// outcome of an input, so not in `records`.
    pub polled: Vec<PublishedRecord>,
    /// The records on the dead-letter topic, in input order.
    pub dead_letters: Vec<DeadLetter>,
    /// The engine's counters at the end of the run.
    pub stats: StatsSnapshot,
    /// The ClearSale outage (`None` when no sample calls ClearSale: there is none).
    pub outage: Option<Outage>,
    /// From the engine's start to the last final outcome (includes the consumer-group join).
    pub pipeline_time: Duration,
    /// The whole demo, from start to the report.
    pub total_time: Duration,
}

/// The ClearSale outage: ClearSale answers 503 from the start until every sample that calls it
/// was diverted to its wait topic and every other sample has its outcome. Measured just before
/// it came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// From the engine's start to ClearSale's return (includes the consumer-group join).
    pub ended_after: Duration,
    /// The samples that call ClearSale.
    pub clearsale_records: u64,
    /// Records written to a wait topic by then.
    pub diverted: u64,
    /// The samples that do not call ClearSale.
    pub other_inputs: u64,
    /// Inputs with a final outcome by then ([`accounted`]).
    pub finished: u64,
    /// Records on the ClearSale output topic by then (none: every ClearSale call failed).
    pub clearsale_published: u64,
    /// Records on the Unico output topic by then: Unico records published during the outage.
    pub unico_published: u64,
}

/// A record read back from an output topic.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedRecord {
    /// The input (1-based sample number) it came from, found through its lineage.
    pub input: Option<usize>,
    /// The output topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key (the provider's id).
    pub key: Option<String>,
    /// The Avro value decoded to readable JSON.
    pub record: Value,
}

/// A record read back from the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The input (1-based sample number) it came from.
    pub input: Option<usize>,
    /// The error class (`__connect.errors.class.name`).
    pub class: String,
    /// The stage that failed (`decode`, `enrich`, `encode`).
    pub stage: String,
    /// The reason (`__connect.errors.exception.message`).
    pub message: String,
    /// The source partition.
    pub source_partition: i32,
    /// The source offset.
    pub source_offset: i64,
    /// Its key, unchanged from the input.
    pub key: Option<String>,
}

/// Inputs with a final outcome: published, deduplicated, skipped or dead-lettered, each once.
///
/// With provider isolation a record may first be diverted to its provider's wait topic. The
/// engine counts that write as finished for the input offset ([`StatsSnapshot::finished`]
/// includes `diverted`), and the copy read back from the wait topic is consumed and finished
/// again, by one of the four outcomes. So a diverted input is accounted here by the outcome of
/// its copy, not twice; a divert alone is not an outcome.
///
/// A record the polling fallback published answers an expectation, not an input: it is not
/// counted ([`inputs_published`]).
pub fn accounted(s: &StatsSnapshot) -> u64 {
    inputs_published(s) + s.deduplicated + s.skipped + s.dead_lettered_total()
}

/// Records published for inputs (webhooks), without those the fallback's polls published.
pub fn inputs_published(s: &StatsSnapshot) -> u64 {
    s.published.saturating_sub(s.resolved_by_poll)
}

impl DemoReport {
    /// Published records of `provider` (`"clearsale"` or `"unico"`, any case).
    pub fn published_by(&self, provider: &str) -> usize {
        self.records
            .iter()
            .filter(|r| {
                r.record["provider"]
                    .as_str()
                    .is_some_and(|p| p.eq_ignore_ascii_case(provider))
            })
            .count()
    }
}

/// One progress line (table format only), flushed so it shows at once.
pub(super) fn progress(out: &mut impl Write, format: OutputFormat, line: &str) -> io::Result<()> {
    if format == OutputFormat::Table {
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

/// Prints the records, the dead letters and the summary.
pub(super) fn write(
    out: &mut impl Write,
    format: OutputFormat,
    report: &DemoReport,
    topics: &Topics<'_>,
) -> io::Result<()> {
    match format {
        OutputFormat::Table => write_table(out, report, topics),
        OutputFormat::Json => write_json(out, report, topics),
    }?;
    out.flush()
}

/// The topic names, for the headings.
pub(super) struct Topics<'a> {
    /// The input topic.
    pub input: &'a str,
    /// The output topics.
    pub records: Vec<&'a str>,
    /// The dead-letter topic.
    pub dead_letter: &'a str,
    /// ClearSale's wait topic.
    pub clearsale_wait: &'a str,
}

fn write_json(out: &mut impl Write, report: &DemoReport, topics: &Topics<'_>) -> io::Result<()> {
    for r in &report.records {
        let line = json!({
            "kind": "record",
            "input": r.input,
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "key": r.key,
            "record": r.record,
        });
        writeln!(out, "{line}")?;
    }
    for r in &report.polled {
        let line = json!({
            "kind": "polled_record",
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "key": r.key,
            "record": r.record,
        });
        writeln!(out, "{line}")?;
    }
    for d in &report.dead_letters {
        let line = json!({
            "kind": "dead_letter",
            "input": d.input,
            "topic": topics.dead_letter,
            "class": d.class,
            "stage": d.stage,
            "message": d.message,
            "source": { "topic": topics.input, "partition": d.source_partition, "offset": d.source_offset },
            "key": d.key,
        });
        writeln!(out, "{line}")?;
    }
    let s = &report.stats;
    let line = json!({
        "kind": "summary",
        "inputs": report.inputs,
        "published": inputs_published(s),
        "recovered_by_polling": s.resolved_by_poll,
        "deduplicated": s.deduplicated,
        "skipped": s.skipped,
        "dead_lettered": s.dead_lettered,
        "circuit_pauses": s.systemic_pauses,
        "diverted": s.diverted,
        "returned": s.returned,
        "clearsale_outage": report.outage.as_ref().map(|o| json!({
            "wait_topic": topics.clearsale_wait,
            "ended_after_ms": o.ended_after.as_millis() as u64,
            "clearsale_records": o.clearsale_records,
            "diverted": o.diverted,
            "other_inputs": o.other_inputs,
            "finished": o.finished,
            "clearsale_published": o.clearsale_published,
            "unico_published": o.unico_published,
        })),
        "pipeline_ms": report.pipeline_time.as_millis() as u64,
        "total_ms": report.total_time.as_millis() as u64,
    });
    writeln!(out, "{line}")
}

fn write_table(out: &mut impl Write, report: &DemoReport, topics: &Topics<'_>) -> io::Result<()> {
    writeln!(
        out,
        "\nPublished records: {}  ({})",
        report.records.len(),
        topics.records.join(", ")
    )?;
    record_table(
        out,
        report
            .records
            .iter()
            .map(|r| (input_label(r.input), &r.record)),
    )?;

    writeln!(
        out,
        "\nRecovered by polling: {}  (webhook withheld; its expectation was polled, the record has trigger_source poll)",
        report.polled.len()
    )?;
    record_table(
        out,
        report.polled.iter().map(|r| ("-".to_string(), &r.record)),
    )?;

    writeln!(
        out,
        "\nDead letters: {}  ({}; original key, value and headers kept)",
        report.dead_letters.len(),
        topics.dead_letter
    )?;
    let rows: Vec<Vec<String>> = report
        .dead_letters
        .iter()
        .map(|d| {
            vec![
                input_label(d.input),
                d.class.clone(),
                format!(
                    "{}/{}@{}",
                    topics.input, d.source_partition, d.source_offset
                ),
                d.message.clone(),
            ]
        })
        .collect();
    table(out, &["#", "CLASS", "SOURCE", "MESSAGE"], &rows)?;
    write_summary(out, report, topics)
}

fn write_summary(out: &mut impl Write, report: &DemoReport, topics: &Topics<'_>) -> io::Result<()> {
    let s = &report.stats;
    let classes = s
        .dead_lettered
        .iter()
        .map(|(class, n)| format!("{class} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let lines = [
        ("inputs", report.inputs as u64, String::new()),
        (
            "published",
            inputs_published(s),
            format!(
                "clearsale {}, unico {}",
                report.published_by("clearsale"),
                report.published_by("unico")
            ),
        ),
        (
            "deduplicated",
            s.deduplicated,
            "exact repeats of published events, dropped".to_string(),
        ),
        (
            "skipped",
            s.skipped,
            "valid events not enriched (Unico status 1)".to_string(),
        ),
        ("dead-lettered", s.dead_lettered_total(), classes),
        (
            "circuit pauses",
            s.systemic_pauses,
            "records that paused behind their provider's open circuit".to_string(),
        ),
        (
            "diverted",
            s.diverted,
            "records set aside in their provider's wait topic while it could not be served"
                .to_string(),
        ),
        (
            "read back",
            s.returned,
            "of them read back once their provider was back; counted above by outcome".to_string(),
        ),
        (
            "polled",
            s.resolved_by_poll,
            "results of a withheld webhook, recovered by the polling fallback (not an input)"
                .to_string(),
        ),
    ];
    writeln!(out, "\nSummary")?;
    for (name, value, note) in lines {
        writeln!(
            out,
            "{}",
            format!("  {name:<15}{value:>5}   {note}").trim_end()
        )?;
    }
    writeln!(
        out,
        "  {:<15}{:>5.1}s  pipeline {:.1}s (includes the Kafka consumer-group join)",
        "time",
        report.total_time.as_secs_f64(),
        report.pipeline_time.as_secs_f64()
    )?;
    if let Some(o) = &report.outage {
        writeln!(out)?;
        write_outage(out, o, s, topics.clearsale_wait)?;
    }
    writeln!(out)?;
    let verdict = if accounted(s) == report.inputs as u64 {
        format!("All {} inputs accounted for", report.inputs)
    } else {
        format!("{} of {} inputs finished", accounted(s), report.inputs)
    };
    writeln!(
        out,
        "{verdict}: {} published + {} deduplicated + {} skipped + {} dead-lettered.",
        inputs_published(s),
        s.deduplicated,
        s.skipped,
        s.dead_lettered_total()
    )?;
    writeln!(
        out,
        "Every record in full: webhook-enricher demo --format json | jq ."
    )
}

/// The ClearSale outage in a few lines: how long and how far it went, what flowed meanwhile.
fn write_outage(
    out: &mut impl Write,
    o: &Outage,
    s: &StatsSnapshot,
    wait_topic: &str,
) -> io::Result<()> {
    let until = if o.diverted >= o.clearsale_records && o.finished >= o.other_inputs {
        format!(
            "until all {} of its records were in {wait_topic} and the {} other inputs had \
             their outcomes.",
            o.clearsale_records, o.other_inputs
        )
    } else {
        format!(
            "cut short with {} of its {} records in {wait_topic} and {} of the {} other inputs \
             finished.",
            o.diverted, o.clearsale_records, o.finished, o.other_inputs
        )
    };
    let lost = match s.dead_lettered.get(&ErrorClass::RetriesExhausted) {
        None | Some(0) => "none was dead-lettered".to_string(),
        Some(n) => format!("{n} were dead-lettered with retries exhausted"),
    };
    let text = format!(
        "ClearSale outage: down (503) for the first {:.1}s of the pipeline, {until} Meanwhile {} \
         Unico records were published. Then ClearSale came back, its records were read back from \
         the wait topic, and {lost}.",
        o.ended_after.as_secs_f64(),
        o.unico_published
    );
    for line in wrap(&text, WIDTH) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Where [`wrap`] breaks the summary's sentences.
const WIDTH: usize = 96;

/// Breaks `text` into lines of at most `width` characters, between words.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Prints an aligned table; the last column is not padded.
/// The table of published records: a label (input number or `-`) and the record.
fn record_table<'a>(
    out: &mut impl Write,
    records: impl Iterator<Item = (String, &'a Value)>,
) -> io::Result<()> {
    let rows: Vec<Vec<String>> = records
        .map(|(label, record)| {
            vec![
                label,
                text(&record["provider"]).to_lowercase(),
                short_id(&text(&record["subject_id"])),
                trigger(record),
                text(&record["state"]),
                details(record),
            ]
        })
        .collect();
    table(
        out,
        &["#", "PROVIDER", "SUBJECT", "TRIGGER", "STATE", "DETAILS"],
        &rows,
    )
}

fn table(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "  (none)");
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::from("  ");
        for (i, cell) in cells.enumerate() {
            if i + 1 == widths.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.trim_end().to_string()
    };
    writeln!(out, "{}", line(&mut headers.iter().copied()))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

fn input_label(input: Option<usize>) -> String {
    input.map_or_else(|| "?".to_string(), |n| n.to_string())
}

/// A JSON string's text, anything else as JSON, null as empty.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The first 8 hex digits of an id, enough to tell the samples apart.
fn short_id(id: &str) -> String {
    match id.get(..8) {
        Some(prefix) if id.len() > 8 => format!("{prefix}…"),
        _ => id.to_string(),
    }
}

fn trigger(record: &Value) -> String {
    let trigger = &record["trigger"];
    match (&trigger["type"], &trigger["status"]) {
        (Value::String(kind), _) => kind.clone(),
        (_, Value::Number(status)) => format!("status {status}"),
        _ => String::new(),
    }
}

/// The key facts of a record, in a few words.
fn details(record: &Value) -> String {
    match record["provider"].as_str() {
        Some("CLEARSALE") => clearsale_details(record),
        Some("UNICO") => unico_details(&record["unico"]),
        _ => String::new(),
    }
}

fn clearsale_details(record: &Value) -> String {
    let cs = &record["clearsale"];
    let mut parts = Vec::new();
    let first = record["trigger"]["type"].as_str().unwrap_or_default();
    // The module named by the webhook first, then the others.
    let mut modules = vec!["mfa", "biolink", "decision", "insights"];
    modules.sort_by_key(|m| *m != first);
    for module in modules {
        let m = &cs[module];
        if m.is_null() {
            continue;
        }
        let status = text(&m["status"]);
        parts.push(match module {
            "mfa" => match m["option"].as_str() {
                Some(option) => format!("mfa {status} via {option}"),
                None => format!("mfa {status}"),
            },
            "biolink" => match m["score"].as_f64() {
                Some(score) => format!("biolink {status} (score {score:.2})"),
                None => format!("biolink {status}"),
            },
            "decision" => match (m["result"].as_str(), m["score"].as_f64()) {
                (Some(result), Some(score)) => format!("decision {result} (score {score:.1})"),
                (Some(result), None) => format!("decision {result}"),
                (None, Some(score)) => format!("score {score:.1}"),
                (None, None) => format!("decision {status}"),
            },
            _ => match m["results"].as_array().map_or(0, Vec::len) {
                0 => continue,
                1 => "1 insight".to_string(),
                n => format!("{n} insights"),
            },
        });
    }
    parts.join("; ")
}

fn unico_details(unico: &Value) -> String {
    if unico.is_null() {
        return "410 Gone: the process ended in error".to_string();
    }
    match unico["process_status"].as_i64() {
        Some(3) => {}
        Some(2) => return "process status 2: divergence".to_string(),
        Some(4) => return "process status 4: cancelled".to_string(),
        Some(other) => return format!("process status {other}"),
        None => return String::new(),
    }
    let mut parts = vec![
        format!("unicoId {}", text(&unico["unico_id"])),
        format!("fraudsters {}", text(&unico["identity_fraudsters"])),
        format!("serpro {}", text(&unico["serpro"])),
        match unico["liveness"].as_i64() {
            Some(1) => "liveness passed".to_string(),
            Some(2) => "liveness failed".to_string(),
            _ => "liveness ?".to_string(),
        },
    ];
    if let Some(score) = unico["score"].as_i64() {
        parts.push(format!("score {score}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clearsale_record() -> Value {
        json!({
            "provider": "CLEARSALE",
            "subject_id": "8263a268-5388-492a-bca2-28e1ff4a69f0",
            "trigger": { "type": "biolink", "status": null, "date": "2025-09-26T17:21:11.036784Z" },
            "state": "COMPLETED",
            "clearsale": {
                "decision": { "status": "completed", "score": 72.35, "result": "approved", "metadata": null },
                "insights": { "status": "completed", "results": [{}, {}] },
                "mfa": { "status": "approved", "option": "sms", "message": null, "replied_at": null },
                "biolink": { "status": "denied", "identifier_id": "x", "score": 0.125 },
            },
            "unico": null,
        })
    }

    #[test]
    fn clearsale_details_lead_with_the_triggering_module() {
        assert_eq!(
            details(&clearsale_record()),
            "biolink denied (score 0.12); mfa approved via sms; decision approved (score 72.3); 2 insights"
        );
        assert_eq!(trigger(&clearsale_record()), "biolink");
    }

    #[test]
    fn unico_details_cover_gone_divergent_and_finished() {
        assert_eq!(
            unico_details(&Value::Null),
            "410 Gone: the process ended in error"
        );
        assert_eq!(
            unico_details(&json!({ "process_status": 2 })),
            "process status 2: divergence"
        );
        let finished = json!({ "process_status": 3, "unico_id": "inconclusive",
            "identity_fraudsters": "yes", "serpro": -1, "liveness": 2, "score": 42 });
        assert_eq!(
            unico_details(&finished),
            "unicoId inconclusive, fraudsters yes, serpro -1, liveness failed, score 42"
        );
        let record = json!({ "provider": "UNICO", "trigger": { "type": null, "status": 3 } });
        assert_eq!(trigger(&record), "status 3");
    }

    #[test]
    fn tables_align_columns_and_say_when_empty() {
        let mut out = Vec::new();
        let rows = vec![
            vec![
                "1".to_string(),
                "clearsale".to_string(),
                "long detail".to_string(),
            ],
            vec!["12".to_string(), "unico".to_string(), "d".to_string()],
        ];
        table(&mut out, &["#", "PROVIDER", "DETAILS"], &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "  #   PROVIDER   DETAILS\n  1   clearsale  long detail\n  12  unico      d\n"
        );
        let mut out = Vec::new();
        table(&mut out, &["#"], &[]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "  (none)\n");
    }

    #[test]
    fn a_diverted_input_is_accounted_once_by_its_final_outcome() {
        // Three inputs: one published directly, one diverted then published once read back,
        // one diverted then deduplicated once read back.
        let s = StatsSnapshot {
            consumed: 5,
            published: 2,
            deduplicated: 1,
            diverted: 2,
            returned: 2,
            ..StatsSnapshot::default()
        };
        assert_eq!(accounted(&s), 3);
        assert_eq!(s.finished(), 5, "the engine counts the divert as well");
    }

    #[test]
    fn the_outage_says_how_far_it_went() {
        let mut o = Outage {
            ended_after: Duration::from_millis(4_200),
            clearsale_records: 6,
            diverted: 6,
            other_inputs: 12,
            finished: 12,
            clearsale_published: 0,
            unico_published: 5,
        };
        let text = |o: &Outage, s: &StatsSnapshot| {
            let mut out = Vec::new();
            write_outage(&mut out, o, s, "wait.cs").unwrap();
            String::from_utf8(out).unwrap()
        };
        let mut s = StatsSnapshot::default();
        let full = text(&o, &s);
        assert!(full.lines().all(|l| l.chars().count() <= WIDTH), "{full}");
        assert_eq!(
            full.split_whitespace().collect::<Vec<_>>().join(" "),
            "ClearSale outage: down (503) for the first 4.2s of the pipeline, until all 6 of its \
             records were in wait.cs and the 12 other inputs had their outcomes. Meanwhile 5 Unico \
             records were published. Then ClearSale came back, its records were read back from the \
             wait topic, and none was dead-lettered."
        );
        o.diverted = 4;
        o.finished = 11;
        s.dead_lettered.insert(ErrorClass::RetriesExhausted, 2);
        let partial = text(&o, &s)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            partial.contains("cut short with 4 of its 6 records in wait.cs and 11 of the 12 other inputs finished."),
            "{partial}"
        );
        assert!(
            partial.contains("2 were dead-lettered with retries exhausted"),
            "{partial}"
        );
    }

    #[test]
    fn wrapping_breaks_between_words() {
        assert_eq!(wrap("a bb ccc dd", 6), vec!["a bb", "ccc dd"]);
        assert_eq!(wrap("toolongword x", 4), vec!["toolongword", "x"]);
        assert!(wrap("  ", 4).is_empty());
    }

    #[test]
    fn short_ids_keep_eight_digits() {
        assert_eq!(
            short_id("8263a268-5388-492a-bca2-28e1ff4a69f0"),
            "8263a268…"
        );
        assert_eq!(short_id("A-1029"), "A-1029");
    }
}
