//! What the probes report: the service's liveness and readiness, fed by the engine (or the
//! receiver) and read by the admin server's `/healthz` and `/readyz`. Its own module so that
//! neither the engine nor the admin server depends on the other: the engine's circuit breakers
//! are seen through the [`Circuit`] trait.
//!
//! Liveness: the server answers (the runtime is responsive) and the engine's dispatcher loop has
//! ticked within the last `liveness_stall_after` (it ticks every 250 ms; a stall means a bug).
//!
//! Readiness, all of:
//! 1. librdkafka reported statistics within the last 3 statistics intervals;
//! 2. at least one broker connection is up;
//! 3. the consumer is a member of its group (group state `up`, join state `steady`);
//! 4. no provider circuit has been open (or half-open) for longer than
//!    `circuit_open_unready_after`, unless that provider's records are diverted to its wait
//!    topic (provider isolation): then the outage costs nothing but the provider's own delay,
//!    and the report only notes it;
//! 5. no input record batch failed to decode at the Kafka level (unsupported or corrupt
//!    compression, a corrupt record) within the last [`UNDECODABLE_UNREADY_FOR`]: its partition
//!    cannot advance, and librdkafka reports it again on every fetch, so this holds for as long
//!    as the partition is stuck;
//! 6. the service is not shutting down.
//!
//! The receiver (`webhook-enricher receive`) has no consumer and no circuits: it is ready when
//! its producer's statistics are fresh, at least one broker connection is up, and it is not
//! shutting down ([`Health::for_producer`]); it is live while its heartbeat task ticks.

use crate::provider::Provider;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an input record batch that could not be decoded keeps the service unready.
pub const UNDECODABLE_UNREADY_FOR: Duration = Duration::from_secs(60);

/// The probes' thresholds (from the `[admin]` settings).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// A provider circuit open for longer than this makes the service not ready.
    pub circuit_open_unready_after: Duration,
    /// The dispatcher (or the receiver's heartbeat) not ticking for this long makes the service
    /// not live.
    pub liveness_stall_after: Duration,
    /// librdkafka statistics interval: statistics older than three intervals make it not ready.
    pub statistics_interval: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            circuit_open_unready_after: Duration::from_secs(300),
            liveness_stall_after: Duration::from_secs(60),
            statistics_interval: Duration::from_secs(5),
        }
    }
}

/// A provider's circuit as readiness sees it (the engine's circuit breaker implements it).
pub trait Circuit: std::fmt::Debug + Send + Sync {
    /// How long the circuit has been open or half-open, if it is not closed.
    fn not_closed_for(&self) -> Option<Duration>;
}

#[derive(Debug, Default, Clone)]
struct KafkaView {
    brokers_up: usize,
    group_state: String,
    join_state: String,
    at: Option<Instant>,
}

/// Which Kafka client readiness rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `run`: the consumer, which must also be a settled member of its group.
    Consumer,
    /// `receive`: the producer, connected to the brokers.
    Producer,
}

/// What the probes look at. Shared by the engine (which updates it) and the admin server.
#[derive(Debug)]
pub struct Health {
    settings: HealthSettings,
    role: Role,
    started: Instant,
    kafka: Mutex<KafkaView>,
    /// Milliseconds since `started` of the dispatcher's last tick.
    heartbeat_ms: AtomicU64,
    shutting_down: AtomicBool,
    breakers: Mutex<Vec<(Provider, Arc<dyn Circuit>)>>,
    lag: Arc<crate::telemetry::ConsumerLag>,
    /// The last input record batch that could not be decoded: when, and why.
    undecodable: Mutex<Option<(Instant, String)>>,
    /// Per provider: how many of this instance's lanes are diverted to its wait topic.
    diverted_lanes: Mutex<[usize; Provider::ALL.len()]>,
}

/// A probe's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeReport {
    pub ok: bool,
    /// Why not, one line per failed rule.
    pub reasons: Vec<String>,
    /// What an operator may want to know that needs no action (a diverted provider).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Health {
    /// The health of `run`: readiness follows the consumer (see the module docs).
    pub fn new(settings: impl Into<HealthSettings>) -> Self {
        let settings = settings.into();
        Self::with_role(settings, Role::Consumer)
    }

    /// The health of `receive`: readiness follows the producer's broker connections.
    pub fn for_producer(settings: impl Into<HealthSettings>) -> Self {
        let settings = settings.into();
        Self::with_role(settings, Role::Producer)
    }

    fn with_role(settings: HealthSettings, role: Role) -> Self {
        Self {
            settings,
            role,
            started: Instant::now(),
            kafka: Mutex::new(KafkaView::default()),
            heartbeat_ms: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            breakers: Mutex::new(Vec::new()),
            lag: Arc::default(),
            undecodable: Mutex::new(None),
            diverted_lanes: Mutex::new([0; Provider::ALL.len()]),
        }
    }

    /// The consumer-lag gauges `/metrics` serves (the consumer updates them).
    pub fn consumer_lag(&self) -> &Arc<crate::telemetry::ConsumerLag> {
        &self.lag
    }

    fn kafka(&self) -> std::sync::MutexGuard<'_, KafkaView> {
        self.kafka.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine's dispatcher loop (or the receiver's heartbeat task) is alive.
    pub fn heartbeat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Shutdown began: not ready any more.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The engine's circuit breakers, for the readiness rule.
    pub fn register_breaker(&self, provider: Provider, breaker: Arc<dyn Circuit>) {
        self.breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((provider, breaker));
    }

    /// librdkafka could not decode an input record batch (`error` says why; never payload).
    pub fn input_undecodable(&self, error: String) {
        *self.undecodable.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), error));
    }

    /// A librdkafka statistics report arrived (the consumer's for `run`, the producer's for
    /// `receive`).
    pub fn on_statistics(&self, stats: &rdkafka::Statistics) {
        let brokers_up = stats
            .brokers
            .values()
            .filter(|b| b.state == "UP" && b.nodeid >= 0)
            .count();
        let (group_state, join_state) = match &stats.cgrp {
            Some(g) => (g.state.clone(), g.join_state.clone()),
            None => (String::new(), String::new()),
        };
        *self.kafka() = KafkaView {
            brokers_up,
            group_state,
            join_state,
            at: Some(Instant::now()),
        };
    }

    /// Liveness.
    pub fn liveness(&self) -> ProbeReport {
        let last = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(last);
        let mut reasons = Vec::new();
        if since > self.settings.liveness_stall_after {
            let what = match self.role {
                Role::Consumer => "engine loop",
                Role::Producer => "receiver heartbeat",
            };
            reasons.push(format!("{what} has not ticked for {}s", since.as_secs()));
        }
        ProbeReport {
            ok: reasons.is_empty(),
            reasons,
            notes: Vec::new(),
        }
    }

    /// The engine's provider lanes: how many of this instance's lanes of `provider` are
    /// diverted to its wait topic.
    pub fn set_diverted_lanes(&self, provider: Provider, lanes: usize) {
        self.diverted_lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())[provider.index()] = lanes;
    }

    /// Readiness (see the module docs for the rules).
    pub fn readiness(&self) -> ProbeReport {
        let mut reasons = Vec::new();
        let mut notes = Vec::new();
        let diverted = *self
            .diverted_lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for provider in Provider::ALL {
            let n = diverted[provider.index()];
            if n > 0 {
                notes.push(format!(
                    "{provider}: {n} lane(s) diverted to its wait topic; the other provider and the input keep flowing, its records are processed when it recovers (nothing to do)"
                ));
            }
        }
        let kafka = self.kafka().clone();
        match kafka.at {
            None => reasons.push("no Kafka statistics yet".to_string()),
            Some(at) if at.elapsed() > self.settings.statistics_interval * 3 => reasons.push(
                format!("Kafka statistics are {}s old", at.elapsed().as_secs()),
            ),
            Some(_) => {
                if kafka.brokers_up == 0 {
                    reasons.push("no broker connection is up".into());
                }
                if self.role == Role::Consumer
                    && (kafka.group_state != "up" || kafka.join_state != "steady")
                {
                    reasons.push(format!(
                        "not a settled member of the consumer group (state {:?}, join state {:?})",
                        kafka.group_state, kafka.join_state
                    ));
                }
            }
        }
        for (provider, breaker) in self
            .breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if let Some(open) = breaker.not_closed_for() {
                if open > self.settings.circuit_open_unready_after {
                    let line = format!("{provider} circuit open for {}s", open.as_secs());
                    if diverted[provider.index()] > 0 {
                        notes.push(line);
                    } else {
                        reasons.push(line);
                    }
                }
            }
        }
        if let Some((at, error)) = &*self.undecodable.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < UNDECODABLE_UNREADY_FOR {
                reasons.push(format!(
                    "an input record batch cannot be decoded ({error}, {}s ago): its partition cannot advance",
                    at.elapsed().as_secs()
                ));
            }
        }
        if self.shutting_down.load(Ordering::Relaxed) {
            reasons.push("shutting down".into());
        }
        ProbeReport {
            ok: reasons.is_empty(),
            reasons,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A circuit readiness can be told about.
    #[derive(Debug, Default)]
    struct FakeCircuit(Mutex<Option<Duration>>);

    impl Circuit for FakeCircuit {
        fn not_closed_for(&self) -> Option<Duration> {
            *self.0.lock().unwrap()
        }
    }

    fn stats(json: &str) -> rdkafka::Statistics {
        serde_json::from_str(json).unwrap()
    }

    const READY: &str = r#"{"name":"c","client_id":"c","type":"consumer","ts":1,"time":1,"age":1,"replyq":0,"msg_cnt":0,"msg_size":0,"msg_max":0,"msg_size_max":0,"simple_cnt":0,"metadata_cache_cnt":0,"tx":0,"tx_bytes":0,"rx":0,"rx_bytes":0,"txmsgs":0,"txmsg_bytes":0,"rxmsgs":0,"rxmsg_bytes":0,
      "brokers":{},"topics":{},"cgrp":{"state":"up","stateage":1,"join_state":"steady","rebalance_age":1,"rebalance_cnt":1,"rebalance_reason":"","assignment_size":2}}"#;

    #[test]
    fn not_ready_until_statistics_arrive_and_the_group_is_joined() {
        let h = Health::new(HealthSettings::default());
        let r = h.readiness();
        assert!(!r.ok);
        assert!(r.reasons[0].contains("no Kafka statistics"));
        h.on_statistics(&stats(READY));
        let r = h.readiness();
        assert!(!r.ok, "no broker up yet");
        assert!(r.reasons.iter().any(|x| x.contains("broker")));
    }

    #[test]
    fn a_circuit_stuck_open_makes_it_unready() {
        let h = Health::new(HealthSettings {
            circuit_open_unready_after: Duration::from_secs(10),
            ..Default::default()
        });
        let c = Arc::new(FakeCircuit::default());
        h.register_breaker(Provider::Unico, c.clone());
        *c.0.lock().unwrap() = Some(Duration::from_secs(9));
        assert!(!h.readiness().reasons.iter().any(|r| r.contains("circuit")));
        *c.0.lock().unwrap() = Some(Duration::from_secs(11));
        assert!(h
            .readiness()
            .reasons
            .iter()
            .any(|r| r.contains("unico circuit open for 11s")));
        *c.0.lock().unwrap() = None;
        assert!(!h.readiness().reasons.iter().any(|r| r.contains("circuit")));
    }

    #[test]
    fn a_diverted_provider_with_a_long_outage_stays_ready_with_a_note() {
        let h = Health::new(HealthSettings {
            circuit_open_unready_after: Duration::from_secs(10),
            ..Default::default()
        });
        let c = Arc::new(FakeCircuit::default());
        h.register_breaker(Provider::ClearSale, c.clone());
        *c.0.lock().unwrap() = Some(Duration::from_secs(600));
        h.set_diverted_lanes(Provider::ClearSale, 3);
        let r = h.readiness();
        assert!(!r.reasons.iter().any(|r| r.contains("circuit")), "{r:?}");
        assert!(r
            .notes
            .iter()
            .any(|n| n.contains("clearsale circuit open for 600s")));
        assert!(r.notes.iter().any(|n| n.contains("nothing to do")));
        h.set_diverted_lanes(Provider::ClearSale, 0);
        let r = h.readiness();
        assert!(r
            .reasons
            .iter()
            .any(|r| r.contains("clearsale circuit open")));
        assert!(r.notes.is_empty());
    }

    #[test]
    fn the_receiver_is_ready_without_a_consumer_group() {
        const PRODUCER_UP: &str = r#"{"name":"p","client_id":"p","type":"producer","ts":1,"time":1,"age":1,"replyq":0,"msg_cnt":0,"msg_size":0,"msg_max":0,"msg_size_max":0,"simple_cnt":0,"metadata_cache_cnt":0,"tx":0,"tx_bytes":0,"rx":0,"rx_bytes":0,"txmsgs":0,"txmsg_bytes":0,"rxmsgs":0,"rxmsg_bytes":0,
          "brokers":{"b:9092/1":{"name":"b:9092/1","nodeid":1,"nodename":"b:9092","source":"configured","state":"UP","stateage":1,"outbuf_cnt":0,"outbuf_msg_cnt":0,"waitresp_cnt":0,"waitresp_msg_cnt":0,"tx":0,"txbytes":0,"txerrs":0,"txretries":0,"txidle":0,"req_timeouts":0,"rx":0,"rxbytes":0,"rxerrs":0,"rxcorriderrs":0,"rxpartial":0,"rxidle":0,"zbuf_grow":0,"buf_grow":0,"wakeups":0,"connects":1,"disconnects":0,"req":{},"toppars":{}}},"topics":{}}"#;
        let h = Health::for_producer(HealthSettings::default());
        assert!(!h.readiness().ok);
        h.on_statistics(&stats(PRODUCER_UP));
        assert_eq!(
            h.readiness(),
            ProbeReport {
                ok: true,
                reasons: vec![],
                notes: vec![]
            }
        );
        // The engine with the same statistics is not ready: it has no group.
        let engine = Health::new(HealthSettings::default());
        engine.on_statistics(&stats(PRODUCER_UP));
        assert!(engine
            .readiness()
            .reasons
            .iter()
            .any(|r| r.contains("consumer group")));
        h.set_shutting_down();
        assert!(!h.readiness().ok);
    }

    #[test]
    fn an_undecodable_input_batch_unreadies_while_it_recurs() {
        let h = Health::new(HealthSettings::default());
        h.input_undecodable("Message consumption error: NotImplemented".into());
        let reasons = h.readiness().reasons;
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("cannot be decoded (Message consumption error: NotImplemented")),
            "{reasons:?}"
        );
        // Older than the window: no longer a reason.
        *h.undecodable.lock().unwrap() = Instant::now()
            .checked_sub(UNDECODABLE_UNREADY_FOR)
            .map(|at| (at, "old".to_string()));
        assert!(!h
            .readiness()
            .reasons
            .iter()
            .any(|r| r.contains("cannot be decoded")));
    }

    #[test]
    fn liveness_follows_the_heartbeat_and_shutdown_unreadies() {
        let h = Health::new(HealthSettings {
            liveness_stall_after: Duration::from_millis(50),
            ..Default::default()
        });
        std::thread::sleep(Duration::from_millis(60));
        assert!(!h.liveness().ok);
        h.heartbeat();
        assert!(h.liveness().ok);
        h.set_shutting_down();
        assert!(h.readiness().reasons.iter().any(|r| r == "shutting down"));
    }
}
