//! `webhook-enricher demo`: in-process through `demo::run`, and as the built binary.

use std::collections::BTreeMap;
use webhook_enricher::demo::samples::{Expected, MIN_COUNT};
use webhook_enricher::demo::{self, report, DemoOptions, DemoReport, OutputFormat};
use webhook_enricher::failure::ErrorClass;
use webhook_enricher::provider::Provider;

async fn run(options: DemoOptions) -> (DemoReport, String) {
    let mut out = Vec::new();
    let report = demo::run(&options, &mut out).await.expect("demo runs");
    (report, String::from_utf8(out).expect("UTF-8 output"))
}

fn expected(report: &DemoReport, wanted: impl Fn(Expected) -> bool) -> u64 {
    report.samples.iter().filter(|s| wanted(s.expected)).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_gets_its_expected_outcome_and_the_table_shows_it() {
    let (report, text) = run(DemoOptions::default()).await;
    let stats = &report.stats;
    assert_eq!(report.inputs, 40);
    assert_eq!(report.samples.len(), 40);

    // Totals add up to the inputs, and the counters agree with the topics read back. A record
    // diverted to a wait topic is consumed twice (from the input, then from the wait topic) and
    // accounted once, by its outcome after it is read back.
    assert_eq!(report::accounted(stats), 40, "{stats:?}");
    assert_eq!(stats.consumed, 40 + stats.diverted, "{stats:?}");
    // The withheld webhook's result is published by a poll: not an input's outcome.
    assert_eq!(stats.resolved_by_poll, 1, "{stats:?}");
    assert_eq!(report.polled.len(), 1);
    let polled = &report.polled[0];
    assert_eq!(polled.record["provider"], "UNICO");
    assert_eq!(
        polled.record["lineage"]["topic"], "webhooks.expectations",
        "built from its expectation"
    );
    assert!(report
        .samples
        .iter()
        .all(|s| s.key.as_deref() != polled.key.as_deref()));
    assert!(text.contains("Recovered by polling: 1"), "{text}");
    assert_eq!(
        stats.finished(),
        40 + stats.diverted + stats.resolved_by_poll,
        "{stats:?}"
    );
    assert_eq!(
        stats.published,
        (report.records.len() + report.polled.len()) as u64
    );
    assert_eq!(
        stats.dead_lettered_total(),
        report.dead_letters.len() as u64
    );

    // Repeats were dropped, status 1 was skipped.
    let repeats = expected(&report, |e| e == Expected::Deduplicated);
    assert!(repeats >= 2);
    assert_eq!(stats.deduplicated, repeats);
    assert_eq!(stats.skipped, expected(&report, |e| e == Expected::Skipped));
    assert_eq!(stats.skipped, 1);

    // Both providers published, each record from a sample meant to be published by it.
    for provider in Provider::ALL {
        let wanted = expected(&report, |e| e == Expected::Published(provider));
        assert!(wanted > 0);
        assert_eq!(report.published_by(provider.as_str()) as u64, wanted);
    }
    for record in &report.records {
        let input = record.input.expect("record traced to its input");
        let provider = record.record["provider"].as_str().unwrap().to_lowercase();
        assert_eq!(
            report.samples[input - 1].expected,
            Expected::Published(Provider::parse(&provider).unwrap()),
            "input {input}"
        );
        assert_eq!(
            record.key,
            record.record["subject_id"].as_str().map(String::from)
        );
    }
    // The Unico 410 Gone process is published as FAILED.
    assert!(report.records.iter().any(|r| r.record["state"] == "FAILED"
        && r.record["unico"].is_null()
        && r.record["provider"] == "UNICO"));

    // Dead letters: the expected classes, each from the input meant to fail that way; none
    // because of the ClearSale outage, which did pause the circuit.
    let mut classes = BTreeMap::new();
    for dead in &report.dead_letters {
        let input = dead.input.expect("dead letter traced to its input");
        let class = report.samples[input - 1].expected;
        assert!(
            matches!(class, Expected::DeadLettered(c) if c.as_str() == dead.class),
            "input {input}: {class:?} vs {}",
            dead.class
        );
        *classes.entry(dead.class.as_str()).or_insert(0u64) += 1;
    }
    let wanted: BTreeMap<&str, u64> = [
        ("invalid_id", 1),
        ("malformed_payload", 1),
        ("not_found", 1),
        ("unsupported_event", 2),
    ]
    .into();
    assert_eq!(classes, wanted);
    let by_class: BTreeMap<&str, u64> = stats
        .dead_lettered
        .iter()
        .map(|(class, n)| (class.as_str(), *n))
        .collect();
    assert_eq!(by_class, wanted);
    assert!(!stats
        .dead_lettered
        .contains_key(&ErrorClass::RetriesExhausted));
    assert!(stats.systemic_pauses >= 1, "{stats:?}");

    // The ClearSale outage lasted until every sample calling ClearSale was in its wait topic
    // (nothing else was diverted, before or after) and every other input had its outcome: all
    // of Unico was published meanwhile, nothing of ClearSale; every diverted record was read
    // back and reached its outcome.
    let outage = report.outage.as_ref().expect("a ClearSale outage");
    assert!(outage.clearsale_records >= report.published_by("clearsale") as u64);
    assert_eq!(outage.diverted, outage.clearsale_records, "{outage:?}");
    assert_eq!(outage.other_inputs, 40 - outage.clearsale_records);
    assert_eq!(outage.finished, outage.other_inputs, "{outage:?}");
    assert!(stats.diverted > 0, "{stats:?}");
    assert_eq!(stats.diverted, outage.clearsale_records, "{stats:?}");
    assert_eq!(stats.returned, stats.diverted, "{stats:?}");
    assert!(outage.unico_published > 0, "{outage:?}");
    assert_eq!(
        outage.unico_published,
        report.published_by("unico") as u64,
        "{outage:?}"
    );
    assert_eq!(outage.clearsale_published, 0, "{outage:?}");

    // Each input has exactly one outcome: at most one record or dead letter, and the others
    // are the repeats and the skipped one.
    let mut seen = std::collections::HashSet::new();
    for input in report
        .records
        .iter()
        .map(|r| r.input)
        .chain(report.dead_letters.iter().map(|d| d.input))
    {
        assert!(seen.insert(input.expect("traced")), "input {input:?} twice");
    }
    assert_eq!(seen.len() as u64 + repeats + 1, 40);

    // The printed table: rows of both providers, the dead-letter classes, the summary.
    let rows = |provider: &str| {
        text.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(provider))
            .count() as u64
    };
    assert_eq!(rows("clearsale"), report.published_by("clearsale") as u64);
    // Unico's rows: its published inputs, and the withheld webhook's result under "Recovered by
    // polling".
    assert_eq!(
        rows("unico"),
        (report.published_by("unico") + report.polled.len()) as u64
    );
    for class in wanted.keys() {
        assert!(
            text.contains(&format!("  {class}  ")),
            "{class} missing:\n{text}"
        );
    }
    let summary = format!(
        "All 40 inputs accounted for: {} published + {repeats} deduplicated + 1 skipped + 5 dead-lettered.",
        stats.published - stats.resolved_by_poll
    );
    assert!(text.contains(&summary), "{text}");
    assert!(text.contains("ClearSale outage over at"), "{text}");
    let row = |name: &str, value: u64| {
        text.lines().any(|l| {
            l.starts_with(&format!("  {name} "))
                && l.split_whitespace().any(|w| w == value.to_string())
        })
    };
    assert!(row("diverted", stats.diverted), "{text}");
    assert!(row("read back", stats.returned), "{text}");
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let sentence = format!(
        "until all {} of its records were in webhooks.wait.clearsale and the {} other inputs had \
         their outcomes. Meanwhile {} Unico records were published.",
        outage.clearsale_records, outage.other_inputs, outage.unico_published
    );
    assert!(words.contains(&sentence), "{text}");
    assert!(words.contains("and none was dead-lettered."), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_format_prints_only_json_lines_that_match_the_report() {
    let options = DemoOptions {
        format: OutputFormat::Json,
        count: MIN_COUNT,
        seed: 11,
    };
    let (report, text) = run(options).await;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kind = |k: &str| lines.iter().filter(|l| l["kind"] == k).count();
    assert_eq!(kind("record"), report.records.len());
    assert_eq!(kind("dead_letter"), report.dead_letters.len());
    assert_eq!(kind("polled_record"), report.polled.len());
    assert_eq!(kind("polled_record"), 1);
    assert_eq!(kind("summary"), 1);
    assert_eq!(
        lines.len(),
        report.records.len() + report.polled.len() + report.dead_letters.len() + 1
    );

    let summary = lines.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    assert_eq!(summary["inputs"], MIN_COUNT);
    assert_eq!(summary["recovered_by_polling"], 1);
    let total = ["published", "deduplicated", "skipped"]
        .iter()
        .map(|k| summary[*k].as_u64().unwrap())
        .sum::<u64>()
        + summary["dead_lettered"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>();
    assert_eq!(total, MIN_COUNT as u64);

    // The ClearSale outage: every diverted record read back; Unico published meanwhile.
    let stats = &report.stats;
    let outage = report.outage.as_ref().expect("a ClearSale outage");
    assert_eq!(summary["diverted"], stats.diverted);
    assert!(stats.diverted > 0, "{stats:?}");
    assert_eq!(summary["returned"], summary["diverted"]);
    let o = &summary["clearsale_outage"];
    assert_eq!(o["wait_topic"], "webhooks.wait.clearsale");
    assert_eq!(o["clearsale_records"], outage.clearsale_records);
    assert_eq!(o["diverted"], o["clearsale_records"]);
    assert_eq!(o["finished"], o["other_inputs"]);
    assert_eq!(o["unico_published"], outage.unico_published);
    assert!(outage.unico_published > 0, "{outage:?}");
    assert_eq!(o["clearsale_published"], 0);
    assert!(o["ended_after_ms"].as_u64().unwrap() > 0);

    // Records are the decoded Avro value in full.
    let record = &lines[0]["record"];
    assert!(record["event_id"].is_string());
    assert!(record["lineage"]["offset"].is_number());
    assert_eq!(record["schema_version"], 1);
}

#[test]
fn the_binary_exits_zero_and_prints_the_summary() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-enricher"))
        .args(["demo", "--count", "18", "--seed", "3"])
        .output()
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("All 18 inputs accounted for: "))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    assert!(summary.ends_with(" dead-lettered."), "{summary}");
    assert!(
        stdout.contains("ClearSale outage: down (503) for the first "),
        "{stdout}"
    );
    // The per-record events are printed on stdout, not repeated in the logs.
    assert!(!stderr.contains("dead-lettered"), "{stderr}");
}
