//! The baselines, each run as its own process (this executable started again with `--child`),
//! so that their CPU is their own like the service's:
//!
//! - `passthrough`: consume the input topic and produce every record unchanged to another topic,
//!   with the service's own librdkafka settings, no enrichment;
//! - `http`: the simulator's raw request rate: the service's own ClearSale client fetching
//!   analyses at a fixed concurrency, without Kafka.

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webhook_enricher::config::KafkaSettings;
use webhook_enricher::engine::EngineSettings;
use webhook_enricher::kafka::client_config as kafka_config;
use webhook_enricher::provider::clearsale::ClearSaleClient;
use webhook_enricher::provider::settings::{ClearSaleSettings, RequestLimits};
use webhook_enricher::secret::Secret;

struct Acks(Arc<AtomicUsize>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Copies `count` records from `input` to `output`, then exits.
pub fn passthrough(
    bootstrap: &str,
    group: &str,
    input: &str,
    output: &str,
    count: usize,
) -> Result<(), String> {
    let kafka = KafkaSettings {
        bootstrap_servers: bootstrap.to_string(),
        ..Default::default()
    };
    let engine = EngineSettings::default();
    let consumer: BaseConsumer = kafka_config::consumer_config(
        &kafka,
        group,
        engine.commit_interval,
        Duration::from_secs(5),
    )
    .create()
    .map_err(|e| format!("passthrough consumer: {e}"))?;
    consumer
        .subscribe(&[input])
        .map_err(|e| format!("subscribe: {e}"))?;
    let acked = Arc::new(AtomicUsize::new(0));
    let producer: ThreadedProducer<Acks> = kafka_config::producer_config(&kafka)
        .create_with_context(Acks(acked.clone()))
        .map_err(|e| format!("passthrough producer: {e}"))?;
    let mut forwarded = 0;
    while forwarded < count {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(|e| format!("consume: {e}"))?;
        let mut headers = OwnedHeaders::new();
        if let Some(hs) = message.headers() {
            for h in hs.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(output).headers(headers);
        if let Some(k) = message.key() {
            record = record.key(k);
        }
        if let Some(p) = message.payload() {
            record = record.payload(p);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        forwarded += 1;
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("flush: {e}"))?;
    let acked = acked.load(Ordering::Relaxed);
    if acked != count {
        return Err(format!("{acked} of {count} records acknowledged"));
    }
    Ok(())
}

/// Fetches `count` analyses from the simulator at `concurrency`; prints
/// `{"elapsed_s":..,"ok":..,"errors":..}` on stdout.
pub fn http(base_url: &str, count: usize, concurrency: usize, http2: bool) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let settings = ClearSaleSettings {
            base_url: base_url.to_string(),
            user: "demo".into(),
            password: Secret::new("demo-password"),
            http: webhook_enricher::provider::settings::HttpSettings {
                http2_prior_knowledge: http2,
                ..Default::default()
            },
            limits: RequestLimits {
                rate_per_second: 0,
                burst: 0,
                max_concurrent: concurrency,
            },
            ..Default::default()
        };
        let client = Arc::new(ClearSaleClient::new(&settings).map_err(|e| format!("client: {e}"))?);
        // The token, outside the timing.
        client
            .get_analysis(uuid::Uuid::new_v4())
            .await
            .map_err(|e| format!("first request: {e}"))?;
        let started = Instant::now();
        let errors = futures::stream::iter(0..count)
            .map(|_| {
                let client = client.clone();
                async move { client.get_analysis(uuid::Uuid::new_v4()).await.is_err() }
            })
            .buffer_unordered(concurrency)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"elapsed_s": elapsed, "ok": count - errors, "errors": errors})
        );
        Ok(())
    })
}
