//! Configuration: one typed struct; every field is a flag and an `HERALD_*`
//! environment variable, and its doc comment is what `herald --help` shows.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Runs slow jobs from a durable queue and streams their progress and result over Server-Sent Events.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `herald` with no subcommand is `herald serve`.
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API and run the workers (the default).
    Serve(Box<Config>),
    /// Print the OpenAPI document (JSON) to standard output.
    Openapi,
    /// Submit a job, e.g. `herald submit demo '{"steps": 10, "step_ms": 300}' --follow`.
    Submit {
        /// The job kind.
        kind: String,
        /// The input, as JSON.
        input: String,
        /// Follow the job's progress until it ends (as `herald watch`).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a job's event stream with a progress bar until it ends.
    /// Exit code: 0 succeeded, 1 failed, 3 cancelled, 4 could not follow.
    Watch {
        /// The job id.
        job_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Where the client commands find herald.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A bearer token, when herald requires one.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A configuration value that must never be printed (keys, secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// What a node does (see `--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    All,
    Api,
    Worker,
}

/// Who may call the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// No credentials; one tenant. Only on a loopback address.
    None,
    /// `Authorization: Bearer <key>`, keys from HERALD_API_KEYS(_FILE).
    ApiKeys,
    /// `Authorization: Bearer <JWT>`, HS256 or RS256.
    Jwt,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Worker => "worker",
        }
    }

    /// Serves `/v1` and the streams.
    pub fn serves_api(self) -> bool {
        self != Role::Worker
    }

    /// Runs jobs (and the reconciler, the lease check and retention).
    pub fn runs_jobs(self) -> bool {
        self != Role::Api
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port (the log says which).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Connections the kernel holds for herald before it accepts them (the
    /// listen backlog; Linux caps it at `net.core.somaxconn`). A burst of
    /// streams opening at once (thousands of clients reconnecting after a
    /// restart) overflows a short one, and each connection dropped waits
    /// for its SYN to be sent again: a second or more.
    #[arg(long, env = "HERALD_LISTEN_BACKLOG", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub listen_backlog: u32,

    /// Database URL: `sqlite://PATH` (created if missing), or
    /// `postgres://USER@HOST:PORT/DB` for several nodes on one database.
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        default_value = "sqlite://herald.db"
    )]
    pub database_url: String,

    /// What this node does: `all` (API, streams and workers), `api` (API and
    /// streams only) or `worker` (runs jobs; answers only /healthz, /readyz
    /// and /metrics). Roles other than `all` need PostgreSQL.
    #[arg(long, env = "HERALD_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,

    /// This node's name among the nodes on one PostgreSQL database (the
    /// default is made up at start). A node restarted under the same name
    /// takes its interrupted jobs back at once instead of after the lease.
    #[arg(long, env = "HERALD_NODE_ID")]
    pub node_id: Option<String>,

    /// PostgreSQL: a node that has not heart-beaten for this long is
    /// considered gone, and its running jobs are run again by another node.
    #[arg(long, env = "HERALD_WORKER_LEASE_SECS", default_value_t = 15)]
    pub worker_lease_secs: u64,

    /// PostgreSQL: the most connections this node opens for herald's own
    /// queries (the batched writes, reads and submissions and the queue's
    /// claim take 4 more, and the listener one).
    #[arg(long, env = "HERALD_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: u32,

    /// How many jobs this process runs at once.
    #[arg(long, env = "HERALD_WORKER_CONCURRENCY", default_value_t = 32)]
    pub worker_concurrency: usize,

    /// Attempts a job gets when its submission does not say (1 to 20).
    #[arg(long, env = "HERALD_DEFAULT_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..=20))]
    pub default_max_attempts: i32,

    /// Pause before a job's second attempt; it doubles for each later one (at most 60 s).
    #[arg(long, env = "HERALD_RETRY_BACKOFF_MS", default_value_t = 1000)]
    pub retry_backoff_ms: u64,

    /// At shutdown, how long running jobs may take to finish before they are
    /// stopped and put back in the queue (same attempt) for the next start.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// How long a cancelled job's handler may go on before it is stopped.
    #[arg(long, env = "HERALD_CANCEL_GRACE_SECS", default_value_t = 10)]
    pub cancel_grace_secs: u64,

    /// After SIGTERM, how long to keep serving with /readyz at 503 so a load
    /// balancer can stop routing here.
    #[arg(long, env = "HERALD_DRAIN_DELAY_SECS", default_value_t = 0)]
    pub drain_delay_secs: u64,

    /// Largest file `POST /v1/uploads` accepts (413 above it; nothing is kept).
    #[arg(long, env = "HERALD_MAX_UPLOAD_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// Largest accepted request body, chunked or not (413 above it).
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest job result, as JSON; a bigger one fails the job with `result_too_large`.
    #[arg(long, env = "HERALD_MAX_RESULT_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_result_bytes: usize,

    /// Largest job item, as JSON; a bigger one fails the handler's call with
    /// `item_too_large`.
    #[arg(long, env = "HERALD_MAX_ITEM_BYTES", default_value_t = 1024 * 1024)]
    pub max_item_bytes: usize,

    /// Most items one job may append; past it the handler's call fails with
    /// `too_many_items`.
    #[arg(long, env = "HERALD_MAX_ITEMS_PER_JOB", default_value_t = 100_000)]
    pub max_items_per_job: i64,

    /// A client must send a request's line and headers whole within this many
    /// seconds of connecting (or of its previous response), else it is
    /// disconnected: slow partial requests (slowloris) hold no connection for long.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,

    /// A comment line goes down an idle event stream this often, so proxies keep it.
    #[arg(long, env = "HERALD_HEARTBEAT_SECS", default_value_t = 15)]
    pub heartbeat_secs: u64,

    /// The `retry:` an event stream opens with: how long a browser waits before reconnecting.
    #[arg(long, env = "HERALD_RETRY_MS", default_value_t = 2000)]
    pub retry_ms: u64,

    /// End every event stream after this many seconds (off when unset); clients
    /// resume with Last-Event-ID. For gateways that cap a response's duration.
    #[arg(long, env = "HERALD_MAX_STREAM_SECS")]
    pub max_stream_secs: Option<u64>,

    /// At most one progress event per job per this many milliseconds: a newer
    /// report replaces a pending one. Status and terminal events are never
    /// delayed. 0 writes every report.
    #[arg(long, env = "HERALD_PROGRESS_MIN_INTERVAL_MS", default_value_t = 50)]
    pub progress_min_interval_ms: u64,

    /// Named downstreams that jobs may call (`aggregate` sources, imports, your own kinds through `ctx.downstream(name)`): `name=url,name=url`
    /// (e.g. `crews=http://crews.internal:8081,permits=https://permits.internal`).
    #[arg(long, env = "HERALD_DOWNSTREAMS", value_delimiter = ',')]
    pub downstreams: Vec<String>,

    /// A JSON file of downstreams with static headers and default timeouts:
    /// `{"crews": {"url": "http://…", "headers": {"Authorization": "Bearer …"}, "timeout_ms": 5000}}`.
    #[arg(long, env = "HERALD_DOWNSTREAMS_FILE")]
    pub downstreams_file: Option<std::path::PathBuf>,

    /// Let `aggregate` sources give any `url` instead of a configured
    /// downstream. For development only: it makes herald an open proxy.
    #[arg(long, env = "HERALD_ALLOW_ANY_URL", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_any_url: bool,

    /// Largest downstream response body; a bigger one fails that source.
    #[arg(long, env = "HERALD_DOWNSTREAM_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub downstream_max_body_bytes: usize,

    /// Who may call: `none` (one tenant, loopback only), `api-keys` or `jwt`.
    #[arg(long, env = "HERALD_AUTH", value_enum, default_value = "none")]
    pub auth: AuthMode,

    /// API keys, `tenant:key,tenant:key` (keys of at least 16 characters).
    #[arg(
        long,
        env = "HERALD_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<Secret>,

    /// A file of API keys, one `tenant key` per line.
    #[arg(long, env = "HERALD_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// Job kinds run by workers outside herald over the worker API
    /// (`/v1/worker/*`), comma-separated (e.g. `crew_plan,render_report`).
    /// Their input is any JSON object. A name that is also a built-in (or
    /// your own) kind is a start-up error.
    #[arg(long, env = "HERALD_REMOTE_KINDS", value_delimiter = ',')]
    pub remote_kinds: Vec<String>,

    /// Remote workers' keys, `name:key,name:key` (keys of at least 16
    /// characters). Worker keys open only `/v1/worker/*`.
    #[arg(
        long,
        env = "HERALD_WORKER_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub worker_keys: Vec<Secret>,

    /// A JSON file of worker keys, `[{"name", "key", "kinds"?, "tenants"?}]`:
    /// a key with `kinds` or `tenants` claims only those kinds' or tenants' jobs.
    #[arg(long, env = "HERALD_WORKER_KEYS_FILE")]
    pub worker_keys_file: Option<std::path::PathBuf>,

    /// A remote worker's lease on a job lasts this long from its last
    /// report; a worker heartbeats at least every third of it. When it runs
    /// out, the job goes back to the queue as its next attempt.
    #[arg(long, env = "HERALD_REMOTE_LEASE_SECS", default_value_t = 30)]
    pub remote_lease_secs: u64,

    /// HS256 secret for `HERALD_AUTH=jwt`.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// RS256 public key (PEM) for `HERALD_AUTH=jwt`.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// When set, a JWT's `iss` must equal it.
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, a JWT's `aud` must contain it.
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// The JWT claim that names the tenant.
    #[arg(long, env = "HERALD_JWT_TENANT_CLAIM", default_value = "sub")]
    pub jwt_tenant_claim: String,

    /// Signs stream tokens; without it a random per-process secret is used
    /// (tokens then do not survive a restart or cross nodes).
    #[arg(long, env = "HERALD_STREAM_TOKEN_SECRET", hide_env_values = true)]
    pub stream_token_secret: Option<Secret>,

    /// How long a stream token (`?token=` on a job's events URL) is valid.
    #[arg(long, env = "HERALD_STREAM_TOKEN_TTL_SECS", default_value_t = 900)]
    pub stream_token_ttl_secs: u64,

    /// Origins allowed to call herald from a browser (exact, comma-separated);
    /// empty: no CORS headers.
    #[arg(long, env = "HERALD_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// When set, `GET /metrics` needs `Authorization: Bearer <this token>`.
    #[arg(long, env = "HERALD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<Secret>,

    /// Open event streams per tenant; more answer 429. Waiting long-polls of
    /// the event log's JSON pages (`wait=`) have a count of their own with the
    /// same maximum.
    #[arg(long, env = "HERALD_MAX_STREAMS_PER_TENANT", default_value_t = 1000)]
    pub max_streams_per_tenant: usize,

    /// Submissions per second per tenant (a token bucket; the burst equals the rate).
    #[arg(long, env = "HERALD_SUBMIT_RATE_PER_SEC", default_value_t = 100)]
    pub submit_rate_per_sec: u32,

    /// Finished jobs and their events are deleted this many hours after they
    /// ended (fractions allowed). Running and queued jobs are never deleted.
    #[arg(long, env = "HERALD_RETENTION_HOURS", default_value_t = 168.0)]
    pub retention_hours: f64,

    /// How often the retention sweep runs.
    #[arg(long, env = "HERALD_RETENTION_SWEEP_SECS", default_value_t = 60)]
    pub retention_sweep_secs: u64,

    /// How often a node that runs jobs checks for nodes whose lease ran out
    /// (PostgreSQL) and takes their running jobs over.
    #[arg(long, env = "HERALD_RECONCILE_SECS", default_value_t = 10)]
    pub reconcile_secs: u64,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// The defaults and `HERALD_*` variables, as if started with no flags.
    pub fn from_env() -> Config {
        Cli::parse_from(["herald"]).serve
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// `HERALD_REMOTE_LEASE_SECS`, at least a second.
    pub fn remote_lease(&self) -> Duration {
        Duration::from_secs(self.remote_lease_secs.max(1))
    }

    pub fn cancel_grace(&self) -> Duration {
        Duration::from_secs(self.cancel_grace_secs)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    pub fn drain_delay(&self) -> Duration {
        Duration::from_secs(self.drain_delay_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_and_subcommands() {
        let cli = Cli::parse_from(["herald", "serve", "--listen", "127.0.0.1:0"]);
        match cli.command {
            Some(Command::Serve(c)) => assert_eq!(c.listen.port(), 0),
            other => panic!("{other:?}"),
        }
        let cli = Cli::parse_from(["herald", "--worker-concurrency", "4"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.worker_concurrency, 4);
        assert!(Cli::try_parse_from(["herald", "--default-max-attempts", "21"]).is_err());
    }
}
