#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets (fuzz/seeds/<target>/<name>).

Each target's input layout is described at the top of its source file. Run it from anywhere;
it rewrites the seeds it knows and leaves other files alone.
"""
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "seeds"
ID = "8263a268-5388-492a-bca2-28e1ff4a69f0"


def write(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# webhook_decode: flags, header count, headers (name index, length or 255, value), key, value.
def record(payload, topic=0, headers=(), key=None, no_value=False):
    flags = topic | (4 if no_value else 0) | (8 if key is not None else 0)
    out = bytes([flags, len(headers)])
    for name, value in headers:
        out += bytes([name]) + (bytes([255]) if value is None else bytes([len(value)]) + value)
    if key is not None:
        out += bytes([len(key)]) + key
    return out + (b"" if no_value else payload.encode())


clearsale = json.dumps({"analysisId": ID, "date": "2025-09-26T17:21:11.0367845Z", "type": "mfa"})
unico = json.dumps({"id": ID, "status": "3"})
decode_seeds = {
    "clearsale": record(clearsale),
    "clearsale-offset-date": record(json.dumps(
        {"analysisId": "{" + ID.upper() + "}", "date": "2025-09-26T17:21:11-03:00", "type": " biolink "})),
    "clearsale-no-offset": record(json.dumps(
        {"analysisId": ID.replace("-", ""), "date": "2025-09-26T17:21:11", "type": "decision"})),
    "unico": record(unico),
    "unico-number-status": record(json.dumps({"processId": ID, "status": 2})),
    "unico-skipped": record(json.dumps({"id": ID, "status": 1})),
    "unico-disagree": record(json.dumps({"id": ID, "processId": ID.replace("8", "9"), "status": 3})),
    "unico-unknown-status": record(json.dumps({"id": ID, "status": "7"})),
    "header-unico-on-mapped-topic": record(unico, topic=2, headers=[(0, b"unico")], key=ID.encode()),
    "header-unknown-provider": record(clearsale, headers=[(1, b"acme")]),
    "header-null-value": record(clearsale, topic=1, headers=[(2, None), (3, b"application/json")]),
    "mapped-topic": record(json.dumps({"id": ID, "status": 5}), topic=1),
    "bad-guid": record(json.dumps({"analysisId": "not-a-guid", "date": "2025-09-26T17:21:11Z", "type": "mfa"})),
    "bad-date": record(json.dumps({"analysisId": ID, "date": "26/09/2025", "type": "mfa"})),
    "not-json": record("not json", key=b"k1"),
    "not-object": record("[1,2,3]"),
    "no-value": record("", no_value=True, key=b"k2"),
}
for name, data in decode_seeds.items():
    write("webhook_decode", "seed-" + name, data)


# provider_response: selector, status (2 bytes), Retry-After length and value, body.
def answer(operation, status, body, pick=0, retry_after=b""):
    return bytes([operation | (pick << 2)]) + struct.pack(">H", status - 100) + \
        bytes([len(retry_after)]) + retry_after + body.encode()


analysis = json.dumps({
    "analysisId": ID, "transactionId": "tx-1",
    "decision": {"status": "approved", "score": 12.5, "result": "accept", "metadata": {"a": 1}},
    "insights": {"status": "done", "result": [{"code": 7, "description": "d", "type": "t",
                                               "category": "c", "relevance": "high", "relatedTo": ["x"]}]},
    "mfa": {"status": "pending", "option": "sms", "message": "m", "repliedAt": "2025-09-26T17:21:11.1234567"},
    "biolink": {"status": "done", "identifierId": "b-1", "score": "0.9"},
    "newModule": {"status": "x"},
})
process = json.dumps({
    "id": ID, "status": 3, "unicoId": {"result": "yes"}, "identityFraudsters": {"result": "inconclusive"},
    "government": {"serpro": 87}, "liveness": 1, "score": -40, "future": True,
})
response_seeds = {
    "clearsale-analysis": answer(0, 200, analysis),
    "clearsale-analysis-biolink": answer(0, 200, analysis, pick=1),
    "clearsale-analysis-empty": answer(0, 200, "{}", pick=2),
    "clearsale-not-found": answer(0, 404, json.dumps(
        {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "Analysis 'x' Not Found."})),
    "clearsale-rate-limited": answer(0, 429, "", retry_after=b"120"),
    "clearsale-unavailable-date": answer(0, 503, "<html>down</html>", retry_after=b"Wed, 21 Oct 2015 07:28:00 GMT"),
    "clearsale-authenticate": answer(1, 200, json.dumps({"token": "abc.def", "expirationDate": "2030-01-01T00:00:00.1234567"})),
    "clearsale-authenticate-refused": answer(1, 401, json.dumps("User or Password not authorized")),
    "unico-process": answer(2, 200, process),
    "unico-process-string-status": answer(2, 200, json.dumps({"id": ID, "status": "2", "liveness": "2"}), pick=1),
    "unico-gone": answer(2, 410, ""),
    "unico-error": answer(2, 404, json.dumps({"Error": {"code": "40004", "description": "Process not found"}})),
    "unico-token": answer(3, 200, json.dumps({"access_token": "eyJ.x.y", "expires_in": 3600})),
    "unico-token-no-expiry": answer(3, 200, json.dumps({"access_token": "eyJ.x.y"})),
    "unico-token-refused": answer(3, 400, json.dumps({"error": "invalid_grant", "error_description": "bad signature"})),
}
for name, data in response_seeds.items():
    write("provider_response", "seed-" + name, data)


# config_load: TOML, NUL, environment lines, NUL, --set lines.
readme_example = """[kafka]
bootstrap_servers = "broker-1:9092,broker-2:9092"
group_id = "webhook-enricher"

[input]
topics = ["webhooks.raw"]

[clearsale]
base_url = "https://homologapix.clearsale.com.br"
user = "my-api-user"

[unico]
enabled = false
"""
config_seeds = {
    "readme": readme_example,
    "readme-env": readme_example + "\0KAFKA__COMPRESSION=zstd\nWEBHOOK_ENRICHER_ENGINE__MAX_IN_FLIGHT=64\n"
                  "KAFKA__PRODUCER__LINGER_MS=10\nCLEARSALE__LIMITS__RATE_PER_SECOND=0\n",
    "readme-set": readme_example + "\0\0engine.drain_timeout=1m 30s\ninput.unico_statuses=[3]\n"
                  "output.clearsale_module_topics.mfa=clearsale.mfa\nkafka.security_protocol=sasl_ssl\n"
                  "kafka.sasl.username=svc\n",
    "everything": """[kafka]
security_protocol = "ssl"
compression = "gzip"
[kafka.tls]
ca_location = "/etc/ssl/ca.pem"
[kafka.consumer]
"fetch.max.bytes" = "1048576"
"sasl.password" = "x"
[kafka.producer]
"acks" = "1"
[input]
topics = ["a", "b"]
max_payload_bytes = 1024
topic_providers = { a = "unico", b = "clearsale" }
[output]
encoding = { format = "confluent", registry = { urls = ["http://registry:8081"], auto_register = false } }
[clearsale]
user = "u"
[unico]
account = "acc"
tenant = "t"
assertion_lifetime = "30m"
[enrich.retry]
initial = "100ms"
multiplier = 3.0
[engine]
max_in_flight = 10
provider_share = 0.5
[engine.dedupe]
max_entries = 0
[admin]
enabled = false
""",
    "unknown-keys": "[kafka]\nbootstrapservers = 1\n[nope]\nx = true\n\0NOPE=1\n\0engine.max_in_flight=many\n",
}
for name, data in config_seeds.items():
    write("config_load", "seed-" + name, data)
