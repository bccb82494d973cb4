//! `redrive`'s log lines: one function per event. Dead letters are named by their dead-letter
//! partition and offset, error class and key (an id); never by their payload. `redrive` is a
//! batch command without an admin server, so it has no metrics: its summary is printed.

/// The redrive starts: the group, and per partition the range it reads (`(partition,
/// committed, start, end)`).
pub fn redrive_started(
    topic: &str,
    group: &str,
    dry_run: bool,
    ranges: &[(i32, Option<i64>, i64, i64)],
) {
    for (partition, committed, start, end) in ranges {
        tracing::info!(
            topic,
            group,
            dry_run,
            partition,
            committed,
            start,
            end,
            "redrive range resolved"
        );
    }
}

/// A dead letter was read and decided on (its republish, if any, is under way).
pub fn redrive_read(partition: i32, offset: i64, class: &str) {
    tracing::debug!(partition, offset, class, "dead letter read");
}

/// A dead letter was republished and acknowledged.
pub fn redriven(partition: i32, offset: i64, class: &str, target: &str, count: Option<u32>) {
    tracing::debug!(
        partition,
        offset,
        class,
        target,
        count,
        "dead letter redriven"
    );
}

/// A dead letter without a usable source topic was reported, not redriven.
pub fn redrive_no_source(partition: i32, offset: i64, class: &str, reason: &str) {
    tracing::warn!(
        partition,
        offset,
        class,
        reason,
        "dead letter not redriven: no source topic to send it back to"
    );
}

/// The loop guard refused a dead letter.
pub fn redrive_refused(partition: i32, offset: i64, class: &str, count: Option<u32>, max: u32) {
    tracing::warn!(
        partition,
        offset,
        class,
        count,
        max_redrives = max,
        "dead letter not redriven: its record was already redriven the maximum number of times"
    );
}

/// A republish failed: the redrive stops after the ones in flight.
pub fn redrive_failed(partition: i32, offset: i64, class: &str, target: &str, error: &str) {
    tracing::error!(partition, offset, class, target, error,
        "redrive failed: stopping; this dead letter and the later ones of its partition stay uncommitted");
}

/// Reading the dead-letter topic failed for good: the redrive stops after the ones in flight.
pub fn redrive_read_failed(topic: &str, error: &rdkafka::error::KafkaError) {
    tracing::error!(topic, error = %error, "redrive stopped: the dead-letter topic cannot be read");
}

/// A signal asked the redrive to stop.
pub fn redrive_interrupted(in_flight: usize) {
    tracing::info!(in_flight,
        "redrive interrupted: waiting for the republishes in flight, then committing; a second signal exits at once");
}

/// Committing the progress failed (retried at the next commit, and at the end).
pub fn redrive_commit_failed(group: &str, error: &rdkafka::error::KafkaError) {
    tracing::warn!(group, error = %error, "committing the redrive's progress failed");
}

/// The redrive finished.
pub fn redrive_finished(
    redriven: u64,
    filtered_out: u64,
    refused: u64,
    no_source: u64,
    errors: u64,
    interrupted: bool,
) {
    tracing::info!(
        redriven,
        filtered_out,
        refused,
        no_source,
        errors,
        interrupted,
        "redrive finished"
    );
}
