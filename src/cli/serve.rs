//! `visage-dr serve`: runs the checkpoint HTTP API on a repository.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tracing::info;

use super::{CliError, RepoArgs};
use crate::repository::{RepoOptions, RepoUrl, Repository};
use crate::server::auth::TokenSet;
use crate::server::{self, ListenConfig, ServerConfig, ServerError};
use crate::units::ByteSize;

/// Time that requests in flight get to finish after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// File of bearer tokens, one `TOKEN SCOPE[,SCOPE]` per line (scopes: push, read, admin; `#` starts a comment).
    #[arg(long, value_name = "PATH")]
    pub tokens_file: PathBuf,
    /// Address and port to listen on. An address other than loopback needs --tls-cert and --tls-key, or --insecure-http.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Largest checkpoint accepted, in bytes or with a unit such as 20GiB; larger pushes get 413.
    #[arg(long, default_value = "20GiB", value_name = "BYTES")]
    pub max_size: ByteSize,
    /// Serve plain HTTP on a non-loopback address, for a network that is encrypted otherwise (VPN, port-forward).
    #[arg(long)]
    pub insecure_http: bool,
    /// PEM certificate chain for HTTPS.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a push may go without receiving body data before it is abandoned.
    #[arg(long, default_value_t = server::DEFAULT_BODY_IDLE_TIMEOUT.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub body_idle_timeout: u64,
}

fn usage_or_failed(e: ServerError) -> CliError {
    match e {
        ServerError::PlainHttpOnNetwork { .. } | ServerError::Tls { .. } | ServerError::Bind { .. } => {
            CliError::usage(e.to_string())
        }
        ServerError::Repository(e) => e.into(),
    }
}

pub async fn serve(args: ServeArgs) -> Result<ExitCode, CliError> {
    let listen = ListenConfig {
        addr: args.listen,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        insecure_http: args.insecure_http,
    };
    // Checked before the repository is opened, so a wrong flag fails fast.
    server::check_listen(&listen).map_err(usage_or_failed)?;
    let tokens = TokenSet::load(&args.tokens_file).map_err(|e| CliError::usage(e.to_string()))?;
    let url: RepoUrl = args.repo.repo.parse()?;
    let options = RepoOptions {
        s3: args.repo.s3(),
        lock_wait: Duration::from_secs(args.repo.lock_wait),
        ..RepoOptions::default()
    };
    let repo = Arc::new(Repository::open_or_init(&url, options).await?);
    let config = ServerConfig {
        tokens,
        max_size: args.max_size.bytes(),
        body_idle_timeout: Duration::from_secs(args.body_idle_timeout),
    };
    info!(tokens = config.tokens.len(), checkpoint.max_size = config.max_size, "starting the checkpoint API");
    let running = server::start(repo, config, &listen).await.map_err(usage_or_failed)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::failed(format!("cannot install the SIGTERM handler: {e}")))?;
    let signal = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    running
        .run_until(signal, SHUTDOWN_GRACE)
        .await
        .map_err(|e| CliError::failed(format!("the server stopped with an error: {e}")))?;
    info!("checkpoint API stopped");
    Ok(ExitCode::SUCCESS)
}
