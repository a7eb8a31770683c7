//! Walks a bucket with ListObjectsV2 and prints the object count and total size
//! as JSON. The benchmark uses it as the floor for an incremental bucket
//! snapshot, and to add up the size of a repository under a prefix.
//!
//! Usage: list_walk BUCKET [PREFIX]
//!
//! The client comes from `S3Settings::client`, so it has the same endpoint,
//! credentials, path-style addressing, retries and timeouts as `visage-dr`.

use std::time::Instant;

use visage_dr::s3::{S3Overrides, S3Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bucket = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("missing bucket name. Usage: list_walk BUCKET [PREFIX]"))?;
    let prefix = args.next().unwrap_or_default();

    let settings = S3Settings::resolve("source", &S3Overrides::default())?;
    let client = settings.client();

    let started = Instant::now();
    let (mut objects, mut bytes, mut pages) = (0u64, 0u64, 0u64);
    let mut continuation: Option<String> = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(&bucket)
            .prefix(&prefix)
            .set_continuation_token(continuation.take())
            .send()
            .await
            .map_err(|e| settings.classify("ListObjectsV2", &bucket, "", e))?;
        pages += 1;
        for object in page.contents() {
            objects += 1;
            bytes += object.size().unwrap_or(0).max(0) as u64;
        }
        match page.next_continuation_token() {
            Some(token) if page.is_truncated().unwrap_or(false) => continuation = Some(token.to_owned()),
            _ => break,
        }
    }

    let summary = serde_json::json!({
        "bucket": bucket,
        "prefix": prefix,
        "objects": objects,
        "bytes": bytes,
        "pages": pages,
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{summary}");
    Ok(())
}
