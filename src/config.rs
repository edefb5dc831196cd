//! Configuration: environment variables, each also a `serve` flag; every secret also
//! as `NAME_FILE`. A malformed value refuses start-up with a message naming the
//! variable; no secret value is ever printed.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use wabridge_handlers::vault::KeyRing;

/// Settings given as `serve` flags or environment variables (host commands read
/// the environment only, so their `--help` shows their own options).
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// Where the embedded log, the SQLite read models and the development key live.
    #[arg(long, env = "WABRIDGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address.
    #[arg(long, env = "WABRIDGE_LISTEN")]
    pub listen: Option<String>,
    /// `sqlite://…` or `postgres://…` (default: SQLite under the data dir).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// JetStream servers; unset means the embedded log.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificates for NATS TLS.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate for NATS TLS.
    #[arg(long, env = "NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key for NATS TLS.
    #[arg(long, env = "NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
    /// Require TLS to NATS (`true`/`false`).
    #[arg(long, env = "NATS_TLS_REQUIRED")]
    pub nats_tls_required: Option<String>,
    /// Stream replicas on JetStream (default 1).
    #[arg(long, env = "WABRIDGE_NATS_REPLICAS")]
    pub nats_replicas: Option<String>,
    /// Subject and stream namespace (default `wb`).
    #[arg(long, env = "WABRIDGE_NAMESPACE")]
    pub namespace: Option<String>,
    /// `api`, `workers` or `api,workers` (default both).
    #[arg(long, env = "WABRIDGE_ROLES")]
    pub roles: Option<String>,
    /// Request body limit: bytes, or with a KiB/MiB suffix (default 4MiB).
    #[arg(long, env = "WABRIDGE_MAX_BODY")]
    pub max_body: Option<String>,
    /// The log's duplicate window (e.g. `10m`, `600s`, `2h`; default 10m).
    #[arg(long, env = "WABRIDGE_DEDUP_WINDOW")]
    pub dedup_window: Option<String>,
    /// Max age of raw webhook bodies in the log (e.g. `30d`; default 30d): older
    /// ones expire; every read model rebuilds from the domain stream alone.
    #[arg(long, env = "WABRIDGE_RAW_RETENTION")]
    pub raw_retention: Option<String>,
    /// Audit retention in days (default 90).
    #[arg(long, env = "WABRIDGE_AUDIT_RETENTION_DAYS")]
    pub audit_retention_days: Option<String>,
    /// Proxies whose X-Forwarded-For is believed (comma-separated IPs).
    #[arg(long, env = "WABRIDGE_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Base URL of the Graph API (default `https://graph.facebook.com`).
    #[arg(long, env = "META_GRAPH_URL")]
    pub meta_graph_url: Option<String>,
    /// Graph API version segment (default `v25.0`).
    #[arg(long, env = "META_GRAPH_VERSION")]
    pub meta_graph_version: Option<String>,
    /// Messages per second the sender allows each phone number (Meta's default
    /// throughput 80; at most 1000).
    #[arg(long, env = "WABRIDGE_NUMBER_MPS")]
    pub number_mps: Option<String>,
    /// How long one call to the Graph API may take before it counts as a timeout
    /// (default 15s).
    #[arg(long, env = "WABRIDGE_GRAPH_TIMEOUT")]
    pub graph_timeout: Option<String>,
    /// Meta app id (Embedded Signup).
    #[arg(long, env = "META_APP_ID")]
    pub meta_app_id: Option<String>,
    /// How long a client may take to send a request's headers; also closes idle
    /// keep-alive connections (default 10s).
    #[arg(long, env = "WABRIDGE_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// Most connections open at once; more are closed at accept (default 1024).
    #[arg(long, env = "WABRIDGE_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Most connections open at once from one peer address (trusted proxies exempt;
    /// default half of `WABRIDGE_MAX_CONNECTIONS`).
    #[arg(long, env = "WABRIDGE_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<String>,
    /// How long shutdown waits for open connections (default 30s).
    #[arg(long, env = "WABRIDGE_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// How long the workers lease lasts unless renewed (default 15s).
    #[arg(long, env = "WABRIDGE_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// Let outbound webhook endpoints be loopback, link-local or private addresses
    /// (tests, local set-ups; default false).
    #[arg(long, env = "WABRIDGE_ALLOW_PRIVATE_ENDPOINTS")]
    pub allow_private_endpoints: Option<String>,
    /// How long one outbound webhook delivery may take (default 15s).
    #[arg(long, env = "WABRIDGE_DELIVERY_TIMEOUT")]
    pub delivery_timeout: Option<String>,
    /// The first pause before a failed delivery is tried again; it doubles, capped
    /// at an hour (default 1s).
    #[arg(long, env = "WABRIDGE_DELIVERY_RETRY_BASE")]
    pub delivery_retry_base: Option<String>,
    /// How long a delivery may keep failing before its endpoint is disabled
    /// (default 3d).
    #[arg(long, env = "WABRIDGE_DELIVERY_GIVE_UP_AFTER")]
    pub delivery_give_up_after: Option<String>,
}

impl ConfigArgs {
    /// The settings from the environment alone (for host commands).
    pub fn from_env() -> ConfigArgs {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct EnvOnly {
            #[command(flatten)]
            args: ConfigArgs,
        }
        let matches = <EnvOnly as clap::CommandFactory>::command()
            .no_binary_name(true)
            .get_matches_from(std::iter::empty::<String>());
        EnvOnly::from_arg_matches(&matches)
            .map(|e| e.args)
            .unwrap_or_default()
    }
}

/// Which parts this instance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The HTTP API (including Meta's webhooks).
    pub api: bool,
    /// Projections and reactors.
    pub workers: bool,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Read-model database URL.
    pub database_url: SecretString,
    /// JetStream settings, when `NATS_URL` is set.
    pub nats: Option<wabridge_events::backends::jetstream::JetStreamConfig>,
    /// The subject namespace.
    pub namespace: wabridge_events::Namespace,
    /// Roles.
    pub roles: Roles,
    /// Body limit in bytes.
    pub max_body: usize,
    /// Duplicate window.
    pub dedup_window: Duration,
    /// Audit retention.
    pub audit_retention: Duration,
    /// Max age of raw webhooks in the log (`WABRIDGE_RAW_RETENTION`).
    pub raw_retention: Duration,
    /// Trusted proxies.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Graph API base URL.
    pub meta_graph_url: String,
    /// Graph API version segment.
    pub meta_graph_version: String,
    /// Per-number sends per second.
    pub number_mps: u32,
    /// Graph API call timeout.
    pub graph_timeout: Duration,
    /// Meta app id.
    pub meta_app_id: Option<String>,
    /// `META_APP_SECRET` (a list, for rotation).
    pub meta_app_secrets: Vec<SecretString>,
    /// `META_VERIFY_TOKEN`.
    pub meta_verify_token: Option<SecretString>,
    /// `TOKEN_MASTER_KEYS` / `TOKEN_MASTER_KEY` (or the development key).
    pub token_keys: Option<KeyRing>,
    /// True when the token keys are the generated development key.
    pub dev_master_key: bool,
    /// `AUDIT_SIGNING_KEY`.
    pub audit_signing_key: Option<SecretString>,
    /// Header read timeout (and idle keep-alive timeout).
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one peer address (trusted proxies exempt).
    pub max_connections_per_address: usize,
    /// Shutdown deadline.
    pub shutdown_timeout: Duration,
    /// Workers lease period.
    pub lease_ttl: Duration,
    /// Outbound webhook deliveries.
    pub delivery: wabridge_handlers::delivery::DeliveryConfig,
}

/// Where secrets come from: the process environment (with `NAME_FILE`) in
/// production, a map in tests.
pub trait Secrets {
    /// The secret `name`, if set.
    fn secret(&self, name: &'static str) -> anyhow::Result<Option<SecretString>>;
}

/// Secrets from the environment: `NAME`, or the file named by `NAME_FILE`.
pub struct EnvSecrets;

impl Secrets for EnvSecrets {
    fn secret(&self, name: &'static str) -> anyhow::Result<Option<SecretString>> {
        secret(name)
    }
}

/// Secrets given directly (tests, embedding).
#[derive(Clone, Debug, Default)]
pub struct MapSecrets(pub std::collections::HashMap<&'static str, String>);

impl Secrets for MapSecrets {
    fn secret(&self, name: &'static str) -> anyhow::Result<Option<SecretString>> {
        Ok(self
            .0
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| SecretString::from(v.clone())))
    }
}

/// Reads a secret from `NAME` or the file named by `NAME_FILE` (not both).
pub fn secret(name: &'static str) -> anyhow::Result<Option<SecretString>> {
    let direct = std::env::var(name).ok().filter(|v| !v.is_empty());
    let file_var = format!("{name}_FILE");
    let file = std::env::var(&file_var).ok().filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => bail!("{name} and {file_var} are both set; set one"),
        (Some(v), None) => Ok(Some(SecretString::from(v))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{file_var}: cannot read {path}"))?;
            let text = text.trim_end_matches(['\n', '\r']).to_string();
            if text.is_empty() {
                bail!("{file_var}: {path} is empty");
            }
            Ok(Some(SecretString::from(text)))
        }
        (None, None) => Ok(None),
    }
}

/// Parses `4MiB`, `512KiB`, `4 MB` or a plain byte count.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok().filter(|n| *n > 0);
    }
    let size: bytesize::ByteSize = s.parse().ok()?;
    usize::try_from(size.as_u64()).ok().filter(|n| *n > 0)
}

/// Parses a duration: `90s`, `10m`, `2h`, `7d`, `1h 30m` (humantime), or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let d = if s.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(s.parse().ok()?)
    } else {
        humantime::parse_duration(s).ok()?
    };
    (!d.is_zero()).then_some(d)
}

/// A duration variable within bounds (start-up refuses anything else, naming it).
fn duration_var(
    var: &str,
    value: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> anyhow::Result<Duration> {
    let Some(v) = value else { return Ok(default) };
    let d =
        parse_duration(v).ok_or_else(|| invalid(var, "must be a duration like 10s, 10m or 2h"))?;
    if d < min || d > max {
        return Err(invalid(
            var,
            &format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

/// A count variable within bounds.
fn count_var(
    var: &str,
    value: Option<&str>,
    default: u64,
    min: u64,
    max: u64,
) -> anyhow::Result<u64> {
    let Some(v) = value else { return Ok(default) };
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| invalid(var, &format!("must be a whole number from {min} to {max}")))
}

fn invalid(var: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!("{var}: {why}")
}

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);

impl Config {
    /// Validates the arguments (flags over environment) and loads the secrets from
    /// the environment.
    pub fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
        Self::load_with(args, &EnvSecrets)
    }

    /// Validates the arguments and loads the secrets from `secrets`.
    pub fn load_with(args: &ConfigArgs, secrets: &dyn Secrets) -> anyhow::Result<Config> {
        let secret = |name| secrets.secret(name);
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./data"));
        let listen = args.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| invalid("WABRIDGE_LISTEN", "must be an address like 127.0.0.1:8080"))?;
        let database_url = match &args.database_url {
            Some(u)
                if u.starts_with("sqlite:")
                    || u.starts_with("postgres:")
                    || u.starts_with("postgresql:") =>
            {
                u.clone()
            }
            Some(_) => {
                return Err(invalid(
                    "DATABASE_URL",
                    "must start with sqlite:// or postgres://",
                ))
            }
            None => format!("sqlite://{}", data_dir.join("readmodels.db").display()),
        };
        let roles = match args
            .roles
            .as_deref()
            .unwrap_or("api,workers")
            .replace(' ', "")
            .as_str()
        {
            "api" => Roles {
                api: true,
                workers: false,
            },
            "workers" => Roles {
                api: false,
                workers: true,
            },
            "api,workers" | "workers,api" => Roles {
                api: true,
                workers: true,
            },
            _ => {
                return Err(invalid(
                    "WABRIDGE_ROLES",
                    "must be api, workers or api,workers",
                ))
            }
        };
        let max_body = match &args.max_body {
            Some(s) => parse_size(s)
                .filter(|n| (1024..=64 * 1024 * 1024).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "WABRIDGE_MAX_BODY",
                        "must be from 1KiB to 64MiB (bytes, or a number with KiB/MiB)",
                    )
                })?,
            None => 4 * 1024 * 1024,
        };
        let dedup_window = duration_var(
            "WABRIDGE_DEDUP_WINDOW",
            args.dedup_window.as_deref(),
            Duration::from_secs(600),
            SECOND,
            7 * DAY,
        )?;
        let raw_retention = duration_var(
            "WABRIDGE_RAW_RETENTION",
            args.raw_retention.as_deref(),
            30 * DAY,
            SECOND,
            3650 * DAY,
        )?;
        let days = count_var(
            "WABRIDGE_AUDIT_RETENTION_DAYS",
            args.audit_retention_days.as_deref(),
            90,
            1,
            36_500,
        )?;
        let header_timeout = duration_var(
            "WABRIDGE_HEADER_TIMEOUT",
            args.header_timeout.as_deref(),
            10 * SECOND,
            SECOND,
            300 * SECOND,
        )?;
        let shutdown_timeout = duration_var(
            "WABRIDGE_SHUTDOWN_TIMEOUT",
            args.shutdown_timeout.as_deref(),
            30 * SECOND,
            SECOND,
            600 * SECOND,
        )?;
        let lease_ttl = duration_var(
            "WABRIDGE_LEASE_TTL",
            args.lease_ttl.as_deref(),
            15 * SECOND,
            3 * SECOND,
            300 * SECOND,
        )?;
        let number_mps = count_var(
            "WABRIDGE_NUMBER_MPS",
            args.number_mps.as_deref(),
            80,
            1,
            1000,
        )? as u32;
        let graph_timeout = duration_var(
            "WABRIDGE_GRAPH_TIMEOUT",
            args.graph_timeout.as_deref(),
            15 * SECOND,
            SECOND,
            300 * SECOND,
        )?;
        let allow_private = match args.allow_private_endpoints.as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => {
                return Err(invalid(
                    "WABRIDGE_ALLOW_PRIVATE_ENDPOINTS",
                    "must be true or false",
                ))
            }
        };
        let delivery = wabridge_handlers::delivery::DeliveryConfig {
            timeout: duration_var(
                "WABRIDGE_DELIVERY_TIMEOUT",
                args.delivery_timeout.as_deref(),
                15 * SECOND,
                SECOND / 10,
                120 * SECOND,
            )?,
            policy: wabridge_handlers::delivery::retry::RetryPolicy {
                base: duration_var(
                    "WABRIDGE_DELIVERY_RETRY_BASE",
                    args.delivery_retry_base.as_deref(),
                    SECOND,
                    SECOND / 100,
                    3600 * SECOND,
                )?,
                cap: 3600 * SECOND,
                give_up_after: duration_var(
                    "WABRIDGE_DELIVERY_GIVE_UP_AFTER",
                    args.delivery_give_up_after.as_deref(),
                    3 * 86_400 * SECOND,
                    SECOND,
                    30 * 86_400 * SECOND,
                )?,
            },
            allow_private,
        };
        let meta_graph_version = args
            .meta_graph_version
            .clone()
            .unwrap_or_else(|| "v25.0".into());
        if !meta_graph_version.starts_with('v')
            || meta_graph_version.len() > 10
            || !meta_graph_version[1..]
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.')
        {
            anyhow::bail!("META_GRAPH_VERSION must look like v25.0, not {meta_graph_version:?}");
        }
        let max_connections = count_var(
            "WABRIDGE_MAX_CONNECTIONS",
            args.max_connections.as_deref(),
            1024,
            1,
            100_000,
        )? as usize;
        let max_connections_per_address = count_var(
            "WABRIDGE_MAX_CONNECTIONS_PER_ADDRESS",
            args.max_connections_per_address.as_deref(),
            (max_connections as u64 / 2).max(1),
            1,
            100_000,
        )?
        .min(max_connections as u64) as usize;
        let trusted_proxies = match &args.trusted_proxies {
            Some(s) => s
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| {
                    p.trim().parse().map_err(|_| {
                        invalid(
                            "WABRIDGE_TRUSTED_PROXIES",
                            "must be comma-separated IP addresses",
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            None => vec![],
        };
        let namespace = match &args.namespace {
            Some(ns) => wabridge_events::Namespace::new(ns)
                .map_err(|e| invalid("WABRIDGE_NAMESPACE", &e.to_string()))?,
            None => wabridge_events::Namespace::default(),
        };
        let nats = match &args.nats_url {
            None => None,
            Some(url) => {
                let mut js = wabridge_events::backends::jetstream::JetStreamConfig::new(url);
                js.creds_file = args.nats_creds.clone();
                js.tls_ca = args.nats_tls_ca.clone();
                js.tls_client = match (&args.nats_tls_cert, &args.nats_tls_key) {
                    (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                    (None, None) => None,
                    _ => {
                        return Err(invalid(
                            "NATS_TLS_CERT",
                            "NATS_TLS_CERT and NATS_TLS_KEY go together",
                        ))
                    }
                };
                js.tls_required = match args.nats_tls_required.as_deref() {
                    None | Some("false") | Some("0") => false,
                    Some("true") | Some("1") => true,
                    _ => return Err(invalid("NATS_TLS_REQUIRED", "must be true or false")),
                };
                js.replicas = count_var(
                    "WABRIDGE_NATS_REPLICAS",
                    args.nats_replicas.as_deref(),
                    1,
                    1,
                    5,
                )? as usize;
                js.duplicate_window = dedup_window;
                js.raw_max_age = Some(raw_retention);
                js.namespace = namespace.clone();
                Some(js)
            }
        };
        let meta_app_secrets = match secret("META_APP_SECRET")? {
            Some(s) => {
                let list: Vec<SecretString> = s
                    .expose_secret()
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| SecretString::from(p.to_string()))
                    .collect();
                if list.is_empty() {
                    return Err(invalid("META_APP_SECRET", "is empty"));
                }
                list
            }
            None => vec![],
        };
        let keys = secret("TOKEN_MASTER_KEYS")?;
        let key = secret("TOKEN_MASTER_KEY")?;
        let token_keys = KeyRing::from_vars(
            keys.as_ref().map(|k| k.expose_secret()),
            key.as_ref().map(|k| k.expose_secret()),
        )?;
        let cfg = Config {
            data_dir,
            listen,
            database_url: SecretString::from(database_url),
            nats,
            namespace,
            roles,
            max_body,
            dedup_window,
            audit_retention: Duration::from_secs(days * 86400),
            raw_retention,
            trusted_proxies,
            meta_graph_url: args
                .meta_graph_url
                .clone()
                .unwrap_or_else(|| "https://graph.facebook.com".into())
                .trim_end_matches('/')
                .to_string(),
            meta_graph_version,
            number_mps,
            graph_timeout,
            meta_app_id: args.meta_app_id.clone(),
            meta_app_secrets,
            meta_verify_token: secret("META_VERIFY_TOKEN")?,
            token_keys,
            dev_master_key: false,
            audit_signing_key: secret("AUDIT_SIGNING_KEY")?,
            header_timeout,
            max_connections,
            max_connections_per_address,
            shutdown_timeout,
            lease_ttl,
            delivery,
        };
        if cfg.nats.is_some() {
            cfg.require_production_secrets()?;
        }
        Ok(cfg)
    }

    /// With `NATS_URL` set (production), every secret must be given.
    fn require_production_secrets(&self) -> anyhow::Result<()> {
        let missing = [
            ("META_APP_SECRET", self.meta_app_secrets.is_empty()),
            ("META_VERIFY_TOKEN", self.meta_verify_token.is_none()),
            ("TOKEN_MASTER_KEYS", self.token_keys.is_none()),
            ("AUDIT_SIGNING_KEY", self.audit_signing_key.is_none()),
        ];
        for (name, absent) in missing {
            if absent {
                bail!("{name} must be set when NATS_URL is set (production); see README \"Configuration\"");
            }
        }
        Ok(())
    }

    /// As [`Config::ensure_dev_keys`], for host commands: only uses keys that
    /// `serve` generated, never creates them, and says nothing.
    pub fn ensure_dev_keys_quiet(&mut self) -> anyhow::Result<()> {
        if self.nats.is_some() {
            return Ok(());
        }
        let path = self.data_dir.join("dev-master-key");
        if self.token_keys.is_none() && path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            self.token_keys = Some(
                KeyRing::parse_keys(text.trim())
                    .with_context(|| format!("{} is not a valid key", path.display()))?,
            );
            self.dev_master_key = true;
        }
        let path = self.data_dir.join("dev-audit-key");
        if self.audit_signing_key.is_none() && path.exists() {
            self.audit_signing_key = Some(read_dev_secret(&path)?);
        }
        Ok(())
    }

    /// On the embedded default with no master key or audit key, generates (once)
    /// development keys into the data dir and says so loudly.
    pub fn ensure_dev_keys(&mut self) -> anyhow::Result<()> {
        if self.nats.is_some() {
            return Ok(());
        }
        if self.audit_signing_key.is_none() {
            let path = self.data_dir.join("dev-audit-key");
            if !path.exists() {
                std::fs::create_dir_all(&self.data_dir)
                    .with_context(|| format!("creating {}", self.data_dir.display()))?;
                let line = format!("{}\n", wabridge_handlers::vault::generate_key_hex());
                write_private(&path, line.as_bytes())?;
            }
            self.audit_signing_key = Some(read_dev_secret(&path)?);
            eprintln!(
                "!!! DEVELOPMENT AUDIT KEY in use: {} (generated; set AUDIT_SIGNING_KEY in production).",
                path.display()
            );
        }
        if self.token_keys.is_some() {
            return Ok(());
        }
        let path = self.data_dir.join("dev-master-key");
        if !path.exists() {
            std::fs::create_dir_all(&self.data_dir)
                .with_context(|| format!("creating {}", self.data_dir.display()))?;
            let line = format!("v1:{}\n", wabridge_handlers::vault::generate_key_hex());
            write_private(&path, line.as_bytes())?;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        self.token_keys = Some(
            KeyRing::parse_keys(text.trim())
                .with_context(|| format!("{} is not a valid key", path.display()))?,
        );
        self.dev_master_key = true;
        eprintln!(
            "\n!!! DEVELOPMENT MASTER KEY in use: {} (generated; NOT for production).\n!!! Set TOKEN_MASTER_KEYS (make one with `wabridge keys generate`) before storing real tokens.\n",
            path.display()
        );
        Ok(())
    }
}

fn read_dev_secret(path: &std::path::Path) -> anyhow::Result<SecretString> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let text = text.trim();
    anyhow::ensure!(!text.is_empty(), "{} is empty", path.display());
    Ok(SecretString::from(text.to_string()))
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4MiB"), Some(4 * 1024 * 1024));
        assert_eq!(parse_size("512KiB"), Some(512 * 1024));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("4MB"), Some(4_000_000));
        assert_eq!(parse_size("4MX"), None);
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("0s"), None);
    }

    #[test]
    fn out_of_range_values_refuse_start_up_naming_the_variable() {
        type Set = fn(&mut ConfigArgs, String);
        let cases: [(&str, Set); 7] = [
            ("WABRIDGE_DEDUP_WINDOW", |a, v| a.dedup_window = Some(v)),
            ("WABRIDGE_HEADER_TIMEOUT", |a, v| a.header_timeout = Some(v)),
            ("WABRIDGE_SHUTDOWN_TIMEOUT", |a, v| {
                a.shutdown_timeout = Some(v)
            }),
            ("WABRIDGE_LEASE_TTL", |a, v| a.lease_ttl = Some(v)),
            ("WABRIDGE_NUMBER_MPS", |a, v| a.number_mps = Some(v)),
            ("WABRIDGE_GRAPH_TIMEOUT", |a, v| a.graph_timeout = Some(v)),
            ("WABRIDGE_AUDIT_RETENTION_DAYS", |a, v| {
                a.audit_retention_days = Some(v)
            }),
        ];
        for (var, set) in cases {
            for bad in ["999999999d", "0", "-1", "soon", "18446744073709551616"] {
                let mut args = ConfigArgs::default();
                set(&mut args, bad.to_string());
                let err = Config::load_with(&args, &MapSecrets::default())
                    .expect_err(&format!("{var}={bad} must be refused"));
                assert!(err.to_string().starts_with(var), "{var}={bad}: {err}");
            }
        }
        let mut args = ConfigArgs {
            max_body: Some("999999999MiB".into()),
            ..Default::default()
        };
        let err = Config::load_with(&args, &MapSecrets::default()).unwrap_err();
        assert!(err.to_string().starts_with("WABRIDGE_MAX_BODY"), "{err}");
        args.max_body = None;
        args.max_connections = Some("0".into());
        let err = Config::load_with(&args, &MapSecrets::default()).unwrap_err();
        assert!(
            err.to_string().starts_with("WABRIDGE_MAX_CONNECTIONS"),
            "{err}"
        );
        let ok = Config::load_with(&ConfigArgs::default(), &MapSecrets::default()).unwrap();
        assert_eq!(ok.dedup_window, Duration::from_secs(600));
        assert_eq!(ok.header_timeout, Duration::from_secs(10));
        assert_eq!(ok.max_connections_per_address, 512, "half of 1024");
    }

    #[test]
    fn the_per_address_cap_defaults_to_half_and_never_exceeds_the_overall_cap() {
        let load = |overall: Option<&str>, per: Option<&str>| {
            let args = ConfigArgs {
                max_connections: overall.map(Into::into),
                max_connections_per_address: per.map(Into::into),
                ..Default::default()
            };
            let c = Config::load_with(&args, &MapSecrets::default()).unwrap();
            (c.max_connections, c.max_connections_per_address)
        };
        assert_eq!(load(Some("100"), None), (100, 50));
        assert_eq!(load(Some("1"), None), (1, 1));
        assert_eq!(load(Some("100"), Some("500")), (100, 100));
        assert_eq!(load(None, Some("8")), (1024, 8));
        let args = ConfigArgs {
            max_connections_per_address: Some("0".into()),
            ..Default::default()
        };
        let err = Config::load_with(&args, &MapSecrets::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("WABRIDGE_MAX_CONNECTIONS_PER_ADDRESS"),
            "{err}"
        );
    }
}
