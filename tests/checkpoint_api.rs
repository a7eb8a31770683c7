//! The checkpoint HTTP API over real HTTP: a server bound on 127.0.0.1:0 in
//! this process, with its repository in a local directory and on Garage.
//! Raw TCP clients cover bodies that stop part-way.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{random_bytes, repo_places, sha256_hex, RepoPlace};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use visage_dr::repository::Repository;
use visage_dr::server::auth::TokenSet;
use visage_dr::server::{self, ListenConfig, RunningServer, ServerConfig};

const PUSH_TOKEN: &str = "push-read-token-0123456789";
const READ_TOKEN: &str = "read-only-token-0123456789";
const ADMIN_TOKEN: &str = "admin-only-token-0123456789";
const MAX_SIZE: u64 = 8 * 1024 * 1024;

struct Fixture {
    place: RepoPlace,
    repo: Arc<Repository>,
    server: Option<RunningServer>,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Fixture {
    async fn start(place: RepoPlace) -> Fixture {
        let repo = place.open().await;
        let tokens = TokenSet::parse(
            "test tokens",
            &format!("# test tokens\n{PUSH_TOKEN} push,read\n{READ_TOKEN} read\n{ADMIN_TOKEN} admin\n"),
        )
        .unwrap();
        let config = ServerConfig::new(tokens, MAX_SIZE, Duration::from_secs(10));
        let listen = ListenConfig { addr: "127.0.0.1:0".parse().unwrap(), tls: None, insecure_http: false };
        let server = server::start(repo.clone(), config, &listen).await.expect("server starts");
        let addr = server.addr;
        Fixture { place, repo, server: Some(server), addr, http: reqwest::Client::new() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn push(&self, job: &str, step: &str, data: &[u8]) -> (StatusCode, serde_json::Value) {
        self.push_with(job, step, data, &sha256_hex(data), PUSH_TOKEN).await
    }

    async fn push_with(&self, job: &str, step: &str, data: &[u8], sha: &str, token: &str) -> (StatusCode, serde_json::Value) {
        let response = self
            .http
            .put(self.url(&format!("/v1/checkpoints/{job}/{step}")))
            .bearer_auth(token)
            .header("X-Content-SHA256", sha)
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    /// Steps listed for `job`.
    async fn steps(&self, job: &str) -> Vec<String> {
        let response = self.get(&format!("/v1/checkpoints/{job}"), READ_TOKEN).await;
        assert_eq!(response.status(), StatusCode::OK);
        let listing: serde_json::Value = response.json().await.unwrap();
        listing["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_str().unwrap().to_owned()).collect()
    }

    async fn stop(mut self) {
        self.server.take().unwrap().shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

/// Sends `head` and `body` over a new TCP connection. With `read_response`
/// it returns the status code and body text; without, it closes the
/// connection right after writing.
async fn raw_request(addr: SocketAddr, head: &str, body: &[u8], read_response: bool) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let data = [head.as_bytes(), body].concat();
    // The server may respond before reading the whole body, so writing runs
    // beside reading and may fail once the server closes the connection.
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&data).await;
        let _ = writer.flush().await;
        writer
    });
    if !read_response {
        let writer = write.await.unwrap();
        drop(writer);
        drop(reader);
        return None;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut response)).await;
    let _ = write.await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

fn put_head(job: &str, step: &str, sha: &str, framing: &str) -> String {
    format!(
        "PUT /v1/checkpoints/{job}/{step} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {PUSH_TOKEN}\r\nX-Content-SHA256: {sha}\r\n{framing}Connection: close\r\n\r\n"
    )
}

/// Encodes `data` with chunked transfer encoding in pieces of `piece` bytes, with the
/// final zero-length chunk only when `terminate`.
fn chunked(data: &[u8], piece: usize, terminate: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for p in data.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    if terminate {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}

/// Runs `scenario` against a server on each repository place.
macro_rules! on_every_place {
    ($hint:literal, $scenario:ident) => {{
        for place in repo_places($hint).await {
            let name = place.name();
            eprintln!("{}: {name}", stringify!($scenario));
            let fixture = Fixture::start(place).await;
            $scenario(&fixture).await;
            fixture.stop().await;
        }
    }};
}

async fn round_trip(f: &Fixture) {
    let data = random_bytes(3 * 1024 * 1024 + 17, 1);
    let (status, body) = f.push("job-a", "step-100", &data).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["sha256"], sha256_hex(&data));
    assert_eq!(body["size"], data.len() as u64);

    let response = f.get("/v1/checkpoints/job-a/step-100", READ_TOKEN).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-content-sha256"], sha256_hex(&data).as_str());
    let got = response.bytes().await.unwrap();
    assert!(got == data, "downloaded content differs from the pushed content");

    let manifests = f.repo.load_manifests().await.unwrap();
    assert_eq!(manifests.len(), 1, "{} ({})", manifests.len(), f.place.name());
    assert_eq!(manifests[0].source, "checkpoints:job-a");
    assert_eq!(manifests[0].entries[0].key, "step-100");
}

#[tokio::test]
async fn push_then_get_returns_content() {
    on_every_place!("ckpt-roundtrip", round_trip);
}

async fn dropped_connection(f: &Fixture) {
    let data = random_bytes(4 * 1024 * 1024, 2);
    let sha = sha256_hex(&data);
    let head = put_head("job-d", "step-1", &sha, &format!("Content-Length: {}\r\n", data.len()));
    raw_request(f.addr, &head, &data[..data.len() / 2], false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(f.steps("job-d").await.is_empty(), "a half body became visible");

    let (status, body) = f.push("job-d", "step-1", &data).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(f.steps("job-d").await, vec!["step-1".to_owned()]);
    let got = f.get("/v1/checkpoints/job-d/step-1", READ_TOKEN).await.bytes().await.unwrap();
    assert!(got == data, "content after the retry differs");
}

#[tokio::test]
async fn dropped_push_leaves_nothing_then_retry_succeeds() {
    on_every_place!("ckpt-drop", dropped_connection);
}

async fn chunked_bodies(f: &Fixture) {
    let data = random_bytes(2 * 1024 * 1024, 3);
    let sha = sha256_hex(&data);
    let head = put_head("job-c", "step-1", &sha, "Transfer-Encoding: chunked\r\n");
    raw_request(f.addr, &head, &chunked(&data, 64 * 1024, false), false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(f.steps("job-c").await.is_empty(), "a chunked body without its final chunk became visible");

    let (status, body) = raw_request(f.addr, &head, &chunked(&data, 64 * 1024, true), true).await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(f.steps("job-c").await, vec!["step-1".to_owned()]);
}

#[tokio::test]
async fn chunked_push_needs_its_final_chunk() {
    on_every_place!("ckpt-chunked", chunked_bodies);
}

async fn wrong_hash(f: &Fixture) {
    let data = random_bytes(1024 * 1024, 4);
    let (status, body) = f.push_with("job-h", "step-1", &data, &sha256_hex(b"other"), PUSH_TOKEN).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "sha256_mismatch");
    assert!(f.steps("job-h").await.is_empty());

    for bad in ["", "ABCDEF", &sha256_hex(&data).to_uppercase()] {
        let (status, body) = f.push_with("job-h", "step-1", &data, bad, PUSH_TOKEN).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
    }
    let response = f.http.put(f.url("/v1/checkpoints/job-h/step-1")).bearer_auth(PUSH_TOKEN).body(data.clone()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "missing_sha256");
}

#[tokio::test]
async fn wrong_hash_is_rejected() {
    on_every_place!("ckpt-hash", wrong_hash);
}

async fn repeated_and_concurrent(f: &Fixture) {
    let data = random_bytes(2 * 1024 * 1024, 5);
    let same = futures::future::join_all((0..4).map(|_| f.push("job-r", "step-1", &data))).await;
    let mut codes: Vec<u16> = same.iter().map(|(s, _)| s.as_u16()).collect();
    codes.sort();
    assert_eq!(codes, vec![200, 200, 200, 201], "same content");

    let variants: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(1024 * 1024, 100 + i)).collect();
    let different = futures::future::join_all(variants.iter().map(|d| f.push("job-r", "step-2", d))).await;
    let mut codes: Vec<u16> = different.iter().map(|(s, _)| s.as_u16()).collect();
    codes.sort();
    assert_eq!(codes, vec![201, 409, 409, 409], "different content");

    let (status, _) = f.push("job-r", "step-1", &data).await;
    assert_eq!(status, StatusCode::OK, "repeated push");
    assert_eq!(f.steps("job-r").await.len(), 2);
    let checkpoints = f.repo.load_manifests().await.unwrap();
    assert_eq!(checkpoints.len(), 2, "manifests after repeated pushes");
}

#[tokio::test]
async fn repeated_pushes_store_one_checkpoint() {
    on_every_place!("ckpt-concurrent", repeated_and_concurrent);
}

async fn tokens_and_scopes(f: &Fixture) {
    let data = b"tiny checkpoint".to_vec();
    let sha = sha256_hex(&data);
    let (status, body) = f.push_with("job-t", "step-1", &data, &sha, "not-a-known-token-0000").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let response = f.http.get(f.url("/v1/checkpoints/job-t")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = f.push_with("job-t", "step-1", &data, &sha, READ_TOKEN).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("push"), "{body}");
    assert_eq!(f.get("/v1/checkpoints/job-t", ADMIN_TOKEN).await.status(), StatusCode::FORBIDDEN);

    let (status, _) = f.push("job-t", "step-1", &data).await;
    assert_eq!(status, StatusCode::CREATED);
    let delete = |token: &'static str| f.http.delete(f.url("/v1/checkpoints/job-t/step-1")).bearer_auth(token).send();
    assert_eq!(delete(PUSH_TOKEN).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(delete(ADMIN_TOKEN).await.unwrap().status(), StatusCode::OK);
    assert!(f.steps("job-t").await.is_empty());
    assert_eq!(delete(ADMIN_TOKEN).await.unwrap().status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tokens_need_their_scope() {
    on_every_place!("ckpt-auth", tokens_and_scopes);
}

async fn names_and_sizes(f: &Fixture) {
    let data = b"x".to_vec();
    for (job, step) in [("a%2Fb", "s"), ("job", "a%2Fb"), ("job", "latest"), ("job", "a%00b"), ("j%20b", "s")] {
        let (status, body) = f.push_with(job, step, &data, &sha256_hex(&data), PUSH_TOKEN).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{job}/{step}: {body}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{job}/{step}: {body}");
    }
    // reqwest resolves `..` and `%2E%2E` segments away, so send them raw.
    for (job, step) in [("job", ".."), ("..", "step"), ("job", "%2E%2E"), ("%2e%2e", "step")] {
        let head = put_head(job, step, &sha256_hex(&data), "Content-Length: 1\r\n");
        let (status, body) = raw_request(f.addr, &head, &data, true).await.unwrap();
        assert_eq!(status, 400, "{job}/{step}: {body}");
        assert!(body.contains("\"detail\""), "{job}/{step}: {body}");
    }

    let big = random_bytes(MAX_SIZE as usize + 1, 6);
    let (status, body) = f.push("job-big", "step-1", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let head = put_head("job-big", "step-2", &sha256_hex(&big), "Transfer-Encoding: chunked\r\n");
    let (status, body) = raw_request(f.addr, &head, &chunked(&big, 256 * 1024, true), true).await.unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(f.steps("job-big").await.is_empty());
}

#[tokio::test]
async fn invalid_names_and_oversize_are_rejected() {
    on_every_place!("ckpt-names", names_and_sizes);
}

async fn ranges_list_and_latest(f: &Fixture) {
    let first = random_bytes(2 * 1024 * 1024 + 5, 7);
    let second = random_bytes(1024 * 1024 + 3, 8);
    assert_eq!(f.push("job-g", "step-100", &first).await.0, StatusCode::CREATED);
    let response = f
        .http
        .put(f.url("/v1/checkpoints/job-g/step-200"))
        .bearer_auth(PUSH_TOKEN)
        .header("X-Content-SHA256", sha256_hex(&second))
        .header("X-Checkpoint-Final", "true")
        .body(second.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let ranged = |range: &'static str| {
        f.http.get(f.url("/v1/checkpoints/job-g/step-100")).bearer_auth(READ_TOKEN).header("Range", range).send()
    };
    let a = 1024 * 1024 - 10;
    let b = 1024 * 1024 + 700_000;
    let response = ranged(Box::leak(format!("bytes={a}-{b}").into_boxed_str())).await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.headers()["content-range"], format!("bytes {a}-{b}/{}", first.len()).as_str());
    assert!(response.bytes().await.unwrap() == first[a..=b], "bytes of a middle range");
    let response = ranged(Box::leak(format!("bytes={}-", first.len() - 5).into_boxed_str())).await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert!(response.bytes().await.unwrap() == first[first.len() - 5..], "bytes of an open range");
    let response = ranged(Box::leak(format!("bytes={}-", first.len()).into_boxed_str())).await.unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(response.headers()["content-range"], format!("bytes */{}", first.len()).as_str());

    let listing: serde_json::Value = f.get("/v1/checkpoints/job-g", READ_TOKEN).await.json().await.unwrap();
    let checkpoints = listing["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 2);
    assert_eq!(checkpoints[0]["step"], "step-100");
    assert_eq!(checkpoints[0]["final"], false);
    assert_eq!(checkpoints[1]["final"], true);
    assert!(checkpoints[1]["time"].as_str().unwrap().ends_with('Z'));
    let latest: serde_json::Value = f.get("/v1/checkpoints/job-g/latest", READ_TOKEN).await.json().await.unwrap();
    assert_eq!(latest["step"], "step-200");
    assert_eq!(latest["sha256"], sha256_hex(&second));
    assert_eq!(f.get("/v1/checkpoints/job-none/latest", READ_TOKEN).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ranges_listing_and_latest() {
    on_every_place!("ckpt-range", ranges_list_and_latest);
}

async fn shared_chunks(f: &Fixture) {
    let mut data = random_bytes(7 * 1024 * 1024, 9);
    let (status, body) = f.push("job-s", "step-1", &data).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["stored"]["bytes_new"], data.len() as u64, "first push stores everything");
    data[3 * 1024 * 1024..3 * 1024 * 1024 + 100].fill(0xAB);
    let (status, body) = f.push("job-s", "step-2", &data).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let new = body["stored"]["bytes_new"].as_u64().unwrap();
    // A 100-byte change touches one or two chunks of 0.5 to 8 MiB (1 MiB on
    // average), so far less than the whole content is new.
    assert!(new > 0, "{new} new bytes of {}", data.len());
    assert!(new <= 3 * 1024 * 1024, "{new} new bytes of {}", data.len());
    let got = f.get("/v1/checkpoints/job-s/step-2", READ_TOKEN).await.bytes().await.unwrap();
    assert!(got == data, "content of the second checkpoint differs");
}

#[tokio::test]
async fn similar_checkpoint_stores_changed_chunks() {
    on_every_place!("ckpt-dedup", shared_chunks);
}

#[tokio::test]
async fn metrics_and_health_from_start() {
    let place = RepoPlace::Local(tempfile::tempdir().unwrap());
    let f = Fixture::start(place).await;
    let text = f.http.get(f.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for result in ["created", "duplicate", "rejected", "failed"] {
        let series = format!("visage_dr_checkpoint_pushes_total{{result=\"{result}\"}} 0");
        assert!(text.contains(&series), "{series} missing in:\n{text}");
    }
    assert!(text.contains("visage_dr_checkpoint_push_bytes_total 0"), "{text}");

    assert_eq!(f.push("job-m", "step-1", b"abc").await.0, StatusCode::CREATED);
    let text = f.http.get(f.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("visage_dr_checkpoint_pushes_total{result=\"created\"} 1"), "{text}");
    assert!(text.contains("visage_dr_checkpoint_push_bytes_total 3"), "{text}");
    // The gauge has a series per job, so it appears with the first checkpoint.
    assert!(text.contains("# TYPE visage_dr_checkpoint_last_push_timestamp_seconds gauge"), "{text}");
    assert!(text.contains("visage_dr_checkpoint_last_push_timestamp_seconds{checkpoint_job=\"job-m\"}"), "{text}");

    assert_eq!(f.http.get(f.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(f.http.get(f.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    let response = f.http.get(f.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    f.stop().await;
}

#[tokio::test]
async fn plain_http_on_network_address_is_refused() {
    let listen = ListenConfig { addr: "0.0.0.0:0".parse().unwrap(), tls: None, insecure_http: false };
    let err = server::check_listen(&listen).unwrap_err().to_string();
    assert!(err.contains("--insecure-http"), "{err}");
    let allowed = ListenConfig { insecure_http: true, ..listen.clone() };
    assert!(server::check_listen(&allowed).is_ok());
    let loopback = ListenConfig { addr: "127.0.0.1:0".parse().unwrap(), ..listen };
    assert!(server::check_listen(&loopback).is_ok());
}
