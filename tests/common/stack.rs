//! Helpers of the whole-stack restore tests: checkpoints pushed through the
//! API, and the outcome of a restore read from its JSON.

use serde_json::Value;

use super::{sha256_hex, S3Server};

/// Pushes a checkpoint to the API at `addr` and expects 201.
pub async fn push_checkpoint(http: &reqwest::Client, addr: std::net::SocketAddr, token: &str, job: &str, step: &str, data: &[u8]) {
    let response = http
        .put(format!("http://{addr}/v1/checkpoints/{job}/{step}"))
        .bearer_auth(token)
        .header("X-Content-SHA256", sha256_hex(data))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "push of {job}/{step}");
}

/// Returns whether `bucket` exists on `s3`.
pub async fn bucket_exists(s3: &S3Server, bucket: &str) -> bool {
    s3.client().head_bucket().bucket(bucket).send().await.is_ok()
}

/// Returns (component, ok, detail) of each component of a restore outcome.
pub fn components(outcome: &Value) -> Vec<(String, bool, String)> {
    outcome["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["component"].as_str().unwrap().to_owned(), c["ok"].as_bool().unwrap(), c["detail"].as_str().unwrap().to_owned()))
        .collect()
}
