//! What `redrive` prints on stdout: the range read per partition, the dead letters redriven (or,
//! with `--dry-run`, that would be) grouped by class, those reported (refused by the loop guard,
//! without a source topic, failed), and the counts. Ids and offsets, never a payload.

use super::decide::FilteredBy;
use super::{Done, Outcome, RedriveSettings};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

/// At most this many lines are listed per group; the rest are counted.
pub const MAX_LINES_PER_GROUP: usize = 1000;

/// One partition of the dead-letter topic: what was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    /// The redrive group's committed offset at start, if it had one.
    pub committed: Option<i64>,
    /// The first offset read.
    pub start: i64,
    /// The end (exclusive): the end offset at start, or `--to-offset`.
    pub end: i64,
}

/// One dead letter, as listed: coordinates, class, id, never the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub partition: i32,
    pub offset: i64,
    /// Its error class as written in the dead letter.
    pub class: String,
    /// Its key when it is an id (a UUID), else a placeholder.
    pub key: String,
    /// The source topic it goes (or would go) back to.
    pub target: Option<String>,
    /// The redrive count: written (redriven, listed), or carried (reported; `None` unreadable).
    pub count: Option<u32>,
    /// Why it is reported.
    pub note: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition {} offset {}  {}  key {}",
            self.partition, self.offset, self.class, self.key
        )?;
        if let Some(target) = &self.target {
            write!(f, "  -> {target}")?;
        }
        match self.count {
            Some(c) => write!(f, "  redrive count {c}")?,
            None => write!(f, "  redrive count unreadable")?,
        }
        if !self.note.is_empty() {
            write!(f, "  ({})", self.note)?;
        }
        Ok(())
    }
}

/// A record key as listed: the id when it is a UUID (what the receiver and the providers use),
/// else a placeholder, so nothing else of a key (which could hold anything) is printed.
pub fn key_label(key: Option<&[u8]>) -> String {
    match key {
        None => "(none)".into(),
        Some(k) => std::str::from_utf8(k)
            .ok()
            .and_then(|s| uuid::Uuid::try_parse(s.trim()).ok())
            .map(|id| id.hyphenated().to_string())
            .unwrap_or_else(|| "(not an id)".into()),
    }
}

/// Lines of one group, the first [`MAX_LINES_PER_GROUP`] kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub count: u64,
    pub lines: Vec<Line>,
}

impl Group {
    fn add(&mut self, line: Line) {
        self.count += 1;
        if self.lines.len() < MAX_LINES_PER_GROUP {
            self.lines.push(line);
        }
    }
}

/// The outcome of a redrive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub topic: String,
    pub group: String,
    pub dry_run: bool,
    pub max_redrives: u32,
    pub ranges: Vec<PartitionRange>,
    /// Redriven and acknowledged (with `--dry-run`: would be), by error class.
    pub redriven: BTreeMap<String, Group>,
    pub filtered_out: BTreeMap<FilteredBy, u64>,
    /// Refused by the loop guard.
    pub refused: Group,
    /// Without a source topic to go back to.
    pub no_source: Group,
    /// Republishes that failed, with the reason.
    pub errors: Group,
    /// A signal stopped it before the end.
    pub interrupted: bool,
    /// The last progress commit failed (the next run redrives those again).
    pub commit_error: Option<String>,
    /// Reading the dead-letter topic failed for good (it was deleted, or access was revoked).
    pub read_error: Option<String>,
    /// The offsets committed to the redrive group, per partition.
    pub committed: BTreeMap<i32, i64>,
}

impl Summary {
    pub fn new(settings: &RedriveSettings, ranges: Vec<PartitionRange>) -> Self {
        Self {
            topic: settings.dead_letter_topic.clone(),
            group: settings.group_id.clone(),
            dry_run: settings.dry_run,
            max_redrives: settings.max_redrives,
            ranges,
            ..Self::default()
        }
    }

    /// Counts one dead letter's outcome.
    pub fn record(&mut self, done: Done) {
        match done.outcome {
            Outcome::FilteredOut(by) => *self.filtered_out.entry(by).or_default() += 1,
            Outcome::NoSource(line) => self.no_source.add(line),
            Outcome::Refused(line) => self.refused.add(line),
            Outcome::Listed(line) | Outcome::Redriven(line) => self
                .redriven
                .entry(line.class.clone())
                .or_default()
                .add(line),
            Outcome::Failed(mut line, error) => {
                line.note = error;
                self.errors.add(line)
            }
        }
    }

    /// How many were redriven (would be, with `--dry-run`).
    pub fn redriven_total(&self) -> u64 {
        self.redriven.values().map(|g| g.count).sum()
    }

    /// How many the filters left alone.
    pub fn filtered_out_total(&self) -> u64 {
        self.filtered_out.values().sum()
    }

    /// True when the command must exit non-zero: a republish failed or the progress could not
    /// be committed.
    pub fn failed(&self) -> bool {
        self.errors.count > 0 || self.commit_error.is_some() || self.read_error.is_some()
    }

    /// The printed report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> fmt::Result {
        let mode = if self.dry_run {
            "dry run: nothing produced, nothing committed"
        } else {
            "redrive"
        };
        writeln!(
            out,
            "{mode}: dead-letter topic {}, group {}, max redrives {}",
            self.topic, self.group, self.max_redrives
        )?;
        for r in &self.ranges {
            let committed = r.committed.map_or("none".to_string(), |c| c.to_string());
            writeln!(
                out,
                "  partition {}: offsets {}..{} ({} to read; committed before: {committed})",
                r.partition,
                r.start,
                r.end,
                r.end - r.start
            )?;
        }
        let verb = if self.dry_run {
            "would redrive"
        } else {
            "redriven"
        };
        writeln!(out, "{verb}: {}", self.redriven_total())?;
        for (class, group) in &self.redriven {
            writeln!(out, "  {class}: {}", group.count)?;
            write_lines(out, group)?;
        }
        let by: Vec<String> = self
            .filtered_out
            .iter()
            .map(|(by, n)| format!("{} {n}", by.as_str()))
            .collect();
        if by.is_empty() {
            writeln!(out, "filtered out: 0")?;
        } else {
            writeln!(
                out,
                "filtered out: {} (by {})",
                self.filtered_out_total(),
                by.join(", ")
            )?;
        }
        writeln!(
            out,
            "refused by the loop guard (already redriven {} times): {}",
            self.max_redrives, self.refused.count
        )?;
        write_lines(out, &self.refused)?;
        writeln!(out, "no source topic: {}", self.no_source.count)?;
        write_lines(out, &self.no_source)?;
        writeln!(out, "errors: {}", self.errors.count)?;
        write_lines(out, &self.errors)?;
        if let Some(error) = &self.read_error {
            writeln!(out, "reading the dead-letter topic failed: {error}")?;
        }
        if let Some(error) = &self.commit_error {
            writeln!(out, "committing the progress failed: {error}")?;
        }
        if !self.dry_run {
            let committed: Vec<String> = self
                .committed
                .iter()
                .map(|(p, o)| format!("{p}={o}"))
                .collect();
            writeln!(
                out,
                "committed: {}",
                if committed.is_empty() {
                    "nothing new".to_string()
                } else {
                    committed.join(",")
                }
            )?;
        }
        if self.interrupted {
            writeln!(
                out,
                "interrupted: run the same command again to resume from the committed offsets"
            )?;
        } else if self.errors.count > 0 {
            writeln!(
                out,
                "stopped at the first failed republish: fix the cause and run the same command again"
            )?;
        }
        Ok(())
    }
}

/// A group's lines by partition and offset (they arrive interleaved across partitions).
fn write_lines(out: &mut String, group: &Group) -> fmt::Result {
    let mut lines: Vec<&Line> = group.lines.iter().collect();
    lines.sort_by_key(|l| (l.partition, l.offset));
    for line in lines {
        writeln!(out, "    {line}")?;
    }
    let more = group.count.saturating_sub(group.lines.len() as u64);
    if more > 0 {
        writeln!(out, "    ... and {more} more")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(partition: i32, offset: i64, class: &str) -> Line {
        Line {
            partition,
            offset,
            class: class.into(),
            key: key_label(Some(b"8C6B0AC3-6C0F-4BA5-9E32-0D6A7F1E2B3C")),
            target: Some("webhooks.raw".into()),
            count: Some(1),
            note: String::new(),
        }
    }

    fn done(outcome: Outcome) -> Done {
        Done {
            partition: 0,
            offset: 0,
            outcome,
        }
    }

    #[test]
    fn keys_are_printed_only_when_they_are_ids() {
        assert_eq!(
            key_label(Some(b"8C6B0AC3-6C0F-4BA5-9E32-0D6A7F1E2B3C")),
            "8c6b0ac3-6c0f-4ba5-9e32-0d6a7f1e2b3c"
        );
        assert_eq!(key_label(Some(b"maria@example.com")), "(not an id)");
        assert_eq!(key_label(Some(&[0xff, 0xfe])), "(not an id)");
        assert_eq!(key_label(None), "(none)");
    }

    #[test]
    fn the_report_groups_by_class_and_lists_what_is_reported() {
        let mut s = Summary {
            topic: "dlq".into(),
            group: "g.redrive.0011aabb".into(),
            dry_run: true,
            max_redrives: 3,
            ranges: vec![PartitionRange {
                partition: 0,
                committed: None,
                start: 0,
                end: 6,
            }],
            ..Summary::default()
        };
        // Read interleaved across partitions, listed in partition and offset order.
        s.record(done(Outcome::Listed(line(0, 2, "not_found"))));
        s.record(done(Outcome::Listed(line(0, 1, "not_found"))));
        s.record(done(Outcome::Listed(line(0, 3, "retries_exhausted"))));
        s.record(done(Outcome::FilteredOut(FilteredBy::Time)));
        let mut refused = line(0, 4, "not_found");
        refused.target = None;
        refused.count = Some(3);
        s.record(done(Outcome::Refused(refused)));
        let mut orphan = line(0, 5, "malformed_payload");
        orphan.target = None;
        orphan.count = None;
        orphan.note = "no __connect.errors.topic header".into();
        s.record(done(Outcome::NoSource(orphan)));
        let text = s.render();
        let expected = "\
dry run: nothing produced, nothing committed: dead-letter topic dlq, group g.redrive.0011aabb, max redrives 3
  partition 0: offsets 0..6 (6 to read; committed before: none)
would redrive: 3
  not_found: 2
    partition 0 offset 1  not_found  key 8c6b0ac3-6c0f-4ba5-9e32-0d6a7f1e2b3c  -> webhooks.raw  redrive count 1
    partition 0 offset 2  not_found  key 8c6b0ac3-6c0f-4ba5-9e32-0d6a7f1e2b3c  -> webhooks.raw  redrive count 1
  retries_exhausted: 1
    partition 0 offset 3  retries_exhausted  key 8c6b0ac3-6c0f-4ba5-9e32-0d6a7f1e2b3c  -> webhooks.raw  redrive count 1
filtered out: 1 (by time 1)
refused by the loop guard (already redriven 3 times): 1
    partition 0 offset 4  not_found  key 8c6b0ac3-6c0f-4ba5-9e32-0d6a7f1e2b3c  redrive count 3
no source topic: 1
    partition 0 offset 5  malformed_payload  key 8c6b0ac3-6c0f-4ba5-9e32-0d6a7f1e2b3c  redrive count unreadable  (no __connect.errors.topic header)
errors: 0
";
        assert_eq!(text, expected);
        assert!(!s.failed());
    }

    #[test]
    fn failures_are_listed_with_their_reason_and_fail_the_command() {
        let mut s = Summary::default();
        s.record(done(Outcome::Redriven(line(0, 1, "not_found"))));
        s.record(done(Outcome::Failed(
            line(0, 2, "not_found"),
            "Message production error: TopicAuthorizationFailed".into(),
        )));
        s.committed.insert(0, 2);
        let text = s.render();
        assert!(text.contains("redriven: 1\n"), "{text}");
        assert!(
            text.contains("errors: 1\n    partition 0 offset 2  not_found"),
            "{text}"
        );
        assert!(text.contains("(Message production error: TopicAuthorizationFailed)"));
        assert!(text.contains("committed: 0=2\n"), "{text}");
        assert!(
            text.contains("stopped at the first failed republish"),
            "{text}"
        );
        assert!(s.failed());
        let commit_failed = Summary {
            commit_error: Some("broker down".into()),
            ..Summary::default()
        };
        assert!(commit_failed.failed());
        assert!(commit_failed
            .render()
            .contains("committing the progress failed: broker down"));
        let read_failed = Summary {
            read_error: Some("UnknownTopicOrPartition".into()),
            ..Summary::default()
        };
        assert!(read_failed.failed());
        assert!(read_failed
            .render()
            .contains("reading the dead-letter topic failed: UnknownTopicOrPartition"));
    }

    #[test]
    fn only_the_first_lines_of_a_group_are_listed() {
        let mut s = Summary::default();
        for offset in 0..(MAX_LINES_PER_GROUP as i64 + 5) {
            s.record(done(Outcome::Redriven(line(0, offset, "not_found"))));
        }
        let text = s.render();
        assert!(text.contains("    ... and 5 more\n"), "{text}");
        assert_eq!(s.redriven["not_found"].lines.len(), MAX_LINES_PER_GROUP);
    }
}
