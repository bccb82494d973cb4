//! The call log (bounded, in completion order) and the counters served at
//! `GET /_simulator/stats`.

use crate::provider::Provider;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// The provider operation a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// ClearSale `POST /connect/v1/authenticate`.
    Authenticate,
    /// ClearSale `GET /connect/v1/integration/analysis/{analysisId}`.
    GetAnalysis,
    /// Unico `POST /oauth2/token`.
    Token,
    /// Unico `GET /processes/v1/{id}`.
    GetProcess,
}

impl Operation {
    /// The provider serving this operation.
    pub fn provider(self) -> Provider {
        match self {
            Operation::Authenticate | Operation::GetAnalysis => Provider::ClearSale,
            Operation::Token | Operation::GetProcess => Provider::Unico,
        }
    }

    /// The fixed name used in logs (`authenticate`, `get_analysis`, `token`, `get_process`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Authenticate => "authenticate",
            Operation::GetAnalysis => "get_analysis",
            Operation::Token => "token",
            Operation::GetProcess => "get_process",
        }
    }

    fn is_auth(self) -> bool {
        matches!(self, Operation::Authenticate | Operation::Token)
    }
}

/// The status recorded for a request whose client went away before the answer was sent.
pub const CLIENT_CLOSED: u16 = 499;

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// Position in completion order, from 1; never reused, so gaps at the front show how many
    /// records the bounded log dropped.
    pub seq: u64,
    /// The provider whose endpoint was called.
    pub provider: Provider,
    /// The operation.
    pub operation: Operation,
    /// The analysis / process id from the path, as sent (truncated to 64 characters); `None`
    /// for auth calls.
    pub subject: Option<String>,
    /// The HTTP status answered ([`CLIENT_CLOSED`] when the client went away first).
    pub status: u16,
    /// When the request reached the handler.
    pub started: Instant,
    /// When the answer was ready.
    pub finished: Instant,
}

/// Counters of one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStats {
    /// Requests to the auth endpoint, whatever their answer.
    pub auth_calls: u64,
    /// Requests to the result endpoint, whatever their answer.
    pub result_calls: u64,
    /// Result-endpoint answers by HTTP status.
    pub result_statuses: BTreeMap<u16, u64>,
}

/// Counters since start, never reset and not bounded by the call log. Served as JSON at
/// `GET /_simulator/stats` (deserialize it back into this type).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatorStats {
    /// Requests recorded (both providers).
    pub total_calls: u64,
    /// ClearSale counters.
    pub clearsale: ProviderStats,
    /// Unico counters.
    pub unico: ProviderStats,
}

impl SimulatorStats {
    /// The counters of one provider.
    pub fn provider(&self, provider: Provider) -> &ProviderStats {
        match provider {
            Provider::ClearSale => &self.clearsale,
            Provider::Unico => &self.unico,
        }
    }

    fn provider_mut(&mut self, provider: Provider) -> &mut ProviderStats {
        match provider {
            Provider::ClearSale => &mut self.clearsale,
            Provider::Unico => &mut self.unico,
        }
    }
}

/// The bounded log and the counters, behind one lock so both stay consistent.
#[derive(Debug)]
pub(crate) struct CallLog {
    capacity: usize,
    records: VecDeque<CallRecord>,
    stats: SimulatorStats,
}

impl CallLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            records: VecDeque::with_capacity(capacity.min(1024)),
            stats: SimulatorStats::default(),
        }
    }

    /// Records one finished request; the oldest record is dropped beyond the capacity.
    pub(crate) fn record(
        &mut self,
        operation: Operation,
        subject: Option<String>,
        status: u16,
        started: Instant,
        finished: Instant,
    ) {
        self.stats.total_calls += 1;
        let provider = operation.provider();
        let counters = self.stats.provider_mut(provider);
        if operation.is_auth() {
            counters.auth_calls += 1;
        } else {
            counters.result_calls += 1;
            *counters.result_statuses.entry(status).or_default() += 1;
        }
        if self.capacity == 0 {
            return;
        }
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(CallRecord {
            seq: self.stats.total_calls,
            provider,
            operation,
            subject,
            status,
            started,
            finished,
        });
    }

    pub(crate) fn records(&self) -> Vec<CallRecord> {
        self.records.iter().cloned().collect()
    }

    pub(crate) fn stats(&self) -> SimulatorStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_records_and_counts_everything() {
        let mut log = CallLog::new(2);
        let now = Instant::now();
        log.record(Operation::Token, None, 200, now, now);
        log.record(Operation::GetProcess, Some("a".into()), 200, now, now);
        log.record(Operation::GetProcess, Some("b".into()), 429, now, now);
        log.record(Operation::GetAnalysis, Some("c".into()), 404, now, now);
        let records = log.records();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(records[1].provider, Provider::ClearSale);
        let stats = log.stats();
        assert_eq!(stats.total_calls, 4);
        assert_eq!(stats.unico.auth_calls, 1);
        assert_eq!(stats.unico.result_calls, 2);
        assert_eq!(stats.unico.result_statuses.get(&429), Some(&1));
        assert_eq!(stats.clearsale.result_calls, 1);
        assert_eq!(stats.provider(Provider::ClearSale).auth_calls, 0);
    }

    #[test]
    fn zero_capacity_keeps_only_counters() {
        let mut log = CallLog::new(0);
        let now = Instant::now();
        log.record(Operation::Authenticate, None, 401, now, now);
        assert!(log.records().is_empty());
        assert_eq!(log.stats().clearsale.auth_calls, 1);
    }

    #[test]
    fn stats_serialize_with_status_keys() {
        let mut log = CallLog::new(1);
        let now = Instant::now();
        log.record(Operation::GetProcess, None, 410, now, now);
        let json = serde_json::to_value(log.stats()).unwrap();
        assert_eq!(json["unico"]["result_statuses"]["410"], 1);
    }
}
