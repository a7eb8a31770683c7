//! `visage-dr serve`: runs the checkpoint HTTP API on a repository and, with
//! `--policy`, the controller that fires the policy's jobs at their slots.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tracing::info;

use super::prune::load_policy;
use super::{CliError, RepoS3Args};
use crate::repository::{RepoOptions, RepoUrl, Repository};
use crate::server::auth::TokenSet;
use crate::server::metrics::Metrics;
use crate::server::{self, ListenConfig, ServerConfig, ServerError};
use crate::service::{Service, ServiceSettings};
use crate::units::ByteSize;

/// Time that requests in flight get to finish after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Policy file whose jobs serve runs at their slots; it names the repository. Reread when it changes (a ConfigMap update); an invalid new version is rejected and the old one stays in force.
    #[arg(long, env = "VISAGE_DR_POLICY", value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Repository URL, for serving checkpoints without a policy: `s3://bucket/prefix` or `file:///absolute/path`.
    #[arg(long, env = "VISAGE_DR_REPO", required_unless_present = "policy", conflicts_with = "policy")]
    pub repo: Option<String>,
    #[command(flatten)]
    pub repo_s3: RepoS3Args,
    /// Seconds to wait for a conflicting repository lock to be released.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub lock_wait: u64,
    /// File of bearer tokens, one `TOKEN SCOPE[,SCOPE]` per line (scopes: push, read, admin; `#` starts a comment).
    #[arg(long, value_name = "PATH")]
    pub tokens_file: PathBuf,
    /// Address and port to listen on. An address other than loopback needs --tls-cert and --tls-key, or --insecure-http.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Largest checkpoint accepted, in bytes or with a unit such as 20GiB; larger pushes get 413. Default: the policy's `checkpoints.max_size`, else 20GiB.
    #[arg(long, value_name = "BYTES")]
    pub max_size: Option<ByteSize>,
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
    /// Serve only the checkpoint API: the policy names the repository and the size limit, and its jobs are left to `visage-dr run` CronJobs.
    #[arg(long, requires = "policy")]
    pub api_only: bool,
    /// Seconds after a slot during which a missed run still starts late, after downtime; older missed slots are reported and skipped.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub starting_deadline: u64,
    /// Seconds between two reads of the policy file.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub reload_interval: u64,
    /// Seconds that a job in flight gets to finish after SIGTERM; a job still running then is abandoned, its locks released and its partial data left for garbage collection.
    #[arg(long, default_value_t = 25, value_name = "SECONDS")]
    pub shutdown_grace: u64,
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
    let policy = args.policy.as_deref().map(load_policy).transpose()?;
    let (url, s3) = match (&policy, &args.repo) {
        (Some(p), _) => (p.repository.url.parse::<RepoUrl>()?, p.repository.s3.clone().unwrap_or_default()),
        (None, Some(repo)) => (repo.parse::<RepoUrl>()?, args.repo_s3.s3()),
        (None, None) => return Err(CliError::usage("give --policy PATH, or --repo URL to serve checkpoints only")),
    };
    let options = RepoOptions { s3, lock_wait: Duration::from_secs(args.lock_wait), ..RepoOptions::default() };
    let repo = Arc::new(Repository::open_or_init(&url, options).await?);
    let max_size = args
        .max_size
        .or_else(|| policy.as_ref().and_then(|p| p.checkpoints.as_ref()).and_then(|c| c.max_size))
        .map_or(server::DEFAULT_MAX_SIZE, |s| s.bytes());
    let metrics = Arc::new(Metrics::new());
    // The controller starts before the server, so /readyz always finds the policy loaded.
    let service = match (policy, &args.policy) {
        (Some(policy), Some(path)) if !args.api_only => {
            let settings = ServiceSettings {
                policy_path: path.clone(),
                starting_deadline: Duration::from_secs(args.starting_deadline),
                reload_interval: Duration::from_secs(args.reload_interval),
                shutdown_grace: Duration::from_secs(args.shutdown_grace),
            };
            Some(Service::start(policy, repo.clone(), metrics.clone(), settings).await.map_err(|e| CliError::failed(e.to_string()))?)
        }
        (policy, _) => {
            metrics.set_policy_loaded(policy.is_some());
            None
        }
    };
    let config = ServerConfig {
        tokens,
        max_size,
        body_idle_timeout: Duration::from_secs(args.body_idle_timeout),
        metrics,
        require_policy: args.policy.is_some(),
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
    let (served, stopped) = match service {
        Some(service) => {
            let (served, stopped) = running.run_until_then(signal, SHUTDOWN_GRACE, service.shutdown()).await;
            (served, Some(stopped))
        }
        None => (running.run_until(signal, SHUTDOWN_GRACE).await, None),
    };
    served.map_err(|e| CliError::failed(format!("the server stopped with an error: {e}")))?;
    info!("checkpoint API stopped");
    if let Some(stopped) = stopped {
        let report = stopped.map_err(|e| CliError::failed(e.to_string()))?;
        info!(abandoned = report.abandoned.len(), finished = report.finished_after_shutdown.len(), "controller stopped");
    }
    Ok(ExitCode::SUCCESS)
}
