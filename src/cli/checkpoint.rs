//! `visage-dr checkpoint push|pull|list`: a client of the checkpoint API.
//!
//! The bearer token comes from the environment variable `VISAGE_DR_TOKEN` or
//! from `--token-file`, never from a flag value, so it stays out of shell
//! history and process listings.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, RANGE};
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::CliError;
use crate::id::{Digest, Hasher};
use crate::server::{FINAL_HEADER, SHA256_HEADER};
use crate::sources::checkpoint::{validate_name, validate_new_step, RESERVED_STEP};

/// Environment variable with the bearer token.
pub const TOKEN_ENV: &str = "VISAGE_DR_TOKEN";

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Upload a checkpoint file as one step of a job.
    Push(PushArgs),
    /// Download a checkpoint (the newest one without --step), resuming a partial file.
    Pull(PullArgs),
    /// List the checkpoints of a job.
    List(ListArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the checkpoint API, for example http://127.0.0.1:8080.
    #[arg(long, env = "VISAGE_DR_SERVER")]
    pub server: String,
    /// File holding the bearer token; without it the token is read from VISAGE_DR_TOKEN.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Training job name.
    #[arg(long)]
    pub job: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Step name to store the checkpoint under, for example step-1200.
    #[arg(long)]
    pub step: String,
    /// Checkpoint file to upload.
    #[arg(long)]
    pub file: PathBuf,
    /// Mark the checkpoint as the job's final one.
    #[arg(long = "final")]
    pub is_final: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Step to download; the newest checkpoint of the job when unset.
    #[arg(long)]
    pub step: Option<String>,
    /// File to write. A shorter existing file is taken as an interrupted download and continued.
    #[arg(long)]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the listing as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A checkpoint as the API describes it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
struct Checkpoint {
    step: String,
    size: u64,
    sha256: String,
    time: String,
    #[serde(rename = "final")]
    is_final: bool,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct Listing {
    job: String,
    checkpoints: Vec<Checkpoint>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    detail: String,
}

pub async fn run(command: CheckpointCommand) -> Result<ExitCode, CliError> {
    match command {
        CheckpointCommand::Push(a) => push(a).await,
        CheckpointCommand::Pull(a) => pull(a).await,
        CheckpointCommand::List(a) => list(a).await,
    }
}

/// Connection settings with the token read.
struct Client {
    http: reqwest::Client,
    base: String,
    job: String,
    token: String,
}

impl Client {
    fn new(args: &ServerArgs) -> Result<Client, CliError> {
        validate_name("job", &args.job).map_err(|e| CliError::usage(e.to_string()))?;
        let token = match &args.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| CliError::usage(format!("cannot read the token file {}: {e}", path.display())))?
                .trim()
                .to_owned(),
            None => std::env::var(TOKEN_ENV).map_err(|_| {
                CliError::usage(format!("no token: set {TOKEN_ENV} or pass --token-file PATH"))
            })?,
        };
        if token.is_empty() {
            return Err(CliError::usage("the token is empty"));
        }
        let base = args.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::usage(format!("invalid --server {base:?}: use an http:// or https:// URL")));
        }
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| CliError::failed(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client { http, base, job: args.job.clone(), token })
    }

    fn url(&self, step: Option<&str>) -> String {
        match step {
            Some(step) => format!("{}/v1/checkpoints/{}/{step}", self.base, self.job),
            None => format!("{}/v1/checkpoints/{}", self.base, self.job),
        }
    }

    fn auth(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.token)).expect("token is a valid header value");
        value.set_sensitive(true);
        h.insert(AUTHORIZATION, value);
        h
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, CliError> {
        let response = self.http.get(url).headers(self.auth()).send().await.map_err(|e| request_failed(url, e))?;
        if !response.status().is_success() {
            return Err(api_error(url, response).await);
        }
        response.json().await.map_err(|e| CliError::failed(format!("invalid response from {url}: {e}")))
    }
}

fn request_failed(url: &str, e: reqwest::Error) -> CliError {
    CliError::failed(format!("request to {url} failed: {e}"))
}

/// Builds the error for a non-success response, with the server's detail.
async fn api_error(url: &str, response: reqwest::Response) -> CliError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let detail = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => format!("{}: {}", body.error, body.detail),
        Err(_) => text,
    };
    CliError::failed(format!("{url} returned {status}: {detail}"))
}

/// SHA-256 and size of a file.
async fn hash_file(path: &Path) -> Result<(Digest, u64), CliError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)
            .map_err(|e| CliError::failed(format!("cannot open {}: {e}", path.display())))?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| CliError::failed(format!("cannot read {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((hasher.finish(), size))
    })
    .await
    .expect("hash task panicked")
}

async fn push(args: PushArgs) -> Result<ExitCode, CliError> {
    validate_new_step(&args.step).map_err(|e| CliError::usage(e.to_string()))?;
    let client = Client::new(&args.server)?;
    let (sha256, size) = hash_file(&args.file).await?;
    let file = tokio::fs::File::open(&args.file)
        .await
        .map_err(|e| CliError::failed(format!("cannot open {}: {e}", args.file.display())))?;
    let url = client.url(Some(&args.step));
    let mut headers = client.auth();
    headers.insert(SHA256_HEADER, HeaderValue::from_str(&sha256.to_hex()).expect("hex is ASCII"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    if args.is_final {
        headers.insert(FINAL_HEADER, HeaderValue::from_static("true"));
    }
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    let response = client.http.put(&url).headers(headers).body(body).send().await.map_err(|e| request_failed(&url, e))?;
    if !response.status().is_success() {
        return Err(api_error(&url, response).await);
    }
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{text}");
    if status == StatusCode::OK {
        eprintln!("step {} was stored already with the same content", args.step);
    }
    Ok(ExitCode::SUCCESS)
}

async fn pull(args: PullArgs) -> Result<ExitCode, CliError> {
    let client = Client::new(&args.server)?;
    let checkpoint: Checkpoint = match &args.step {
        None => client.get_json(&client.url(Some(RESERVED_STEP))).await?,
        Some(step) => {
            validate_new_step(step).map_err(|e| CliError::usage(e.to_string()))?;
            let listing: Listing = client.get_json(&client.url(None)).await?;
            listing.checkpoints.into_iter().find(|c| &c.step == step).ok_or_else(|| {
                CliError::failed(format!("job {} has no checkpoint {step}", client.job))
            })?
        }
    };
    let have = match tokio::fs::metadata(&args.file).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(CliError::failed(format!("cannot read {}: {e}", args.file.display()))),
    };
    if have > checkpoint.size {
        return Err(CliError::failed(format!(
            "{} has {have} bytes, more than the {} bytes of checkpoint {}; remove it or choose another --file",
            args.file.display(),
            checkpoint.size,
            checkpoint.step
        )));
    }
    if have < checkpoint.size {
        download(&client, &checkpoint, &args.file, have).await?;
    }
    let (actual, _) = hash_file(&args.file).await?;
    if actual.to_hex() != checkpoint.sha256 {
        return Err(CliError::failed(format!(
            "{} hashes to {actual}, but checkpoint {} has SHA-256 {}; remove the file and pull again",
            args.file.display(),
            checkpoint.step,
            checkpoint.sha256
        )));
    }
    println!("{}", serde_json::to_string(&checkpoint).expect("output serialises"));
    Ok(ExitCode::SUCCESS)
}

/// Downloads the checkpoint into `path`, continuing after the first `have` bytes.
async fn download(client: &Client, checkpoint: &Checkpoint, path: &Path, have: u64) -> Result<(), CliError> {
    let url = client.url(Some(&checkpoint.step));
    let mut request = client.http.get(&url).headers(client.auth());
    if have > 0 {
        request = request.header(RANGE, format!("bytes={have}-"));
    }
    let response = request.send().await.map_err(|e| request_failed(&url, e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(api_error(&url, response).await);
    }
    // A 200 to a range request carries the whole content: start over.
    let append = have > 0 && status == StatusCode::PARTIAL_CONTENT;
    if have > 0 && !append {
        eprintln!("the server sent the whole checkpoint; rewriting {}", path.display());
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .await
        .map_err(|e| CliError::failed(format!("cannot open {}: {e}", path.display())))?;
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            CliError::failed(format!("download of {url} failed: {e}; run the same pull again to continue"))
        })?;
        file.write_all(&piece)
            .await
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
    }
    file.sync_all().await.map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}

async fn list(args: ListArgs) -> Result<ExitCode, CliError> {
    let client = Client::new(&args.server)?;
    let listing: Listing = client.get_json(&client.url(None)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listing).expect("output serialises"));
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24} {:>14} {:<25} {:<5} SHA-256", "STEP", "BYTES", "TIME", "FINAL");
    for c in &listing.checkpoints {
        println!("{:<24} {:>14} {:<25} {:<5} {}", c.step, c.size, c.time, c.is_final, c.sha256);
    }
    Ok(ExitCode::SUCCESS)
}
