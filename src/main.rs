//! The `wabridge` binary.

use clap::Parser;
use wabridge::{
    app::App,
    cli::{self, Cli, Command},
    config::Config,
    server,
};

/// mimalloc instead of glibc's allocator: allocation and free were about a fifth of
/// the instructions per webhook with glibc (README: Benchmarks, per stage).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            command => cli::run(command).await,
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(args: wabridge::config::ConfigArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(&args)?;
    cfg.ensure_dev_keys()?;
    let listen = cfg.listen;
    let backend = if cfg.nats.is_some() {
        "JetStream"
    } else {
        "embedded log"
    };
    let app = App::build(cfg).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("WABRIDGE_LISTEN {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "wabridge listening on http://{addr} ({backend}; roles: {:?})",
        app.cfg.roles
    );
    eprintln!("first key: `wabridge bootstrap --workspace my-team` (or `--operator`); API document: http://{addr}/openapi.json");
    server::run(app, listener, server::shutdown_signal()).await
}
