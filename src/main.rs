//! The `keel` command: serve (the default), migrate, and operator tasks.

use anyhow::Context;
use clap::{Parser, Subcommand};
use keel::app::{Keel, Services};
use keel::config::{Config, LogFormat, Settings};
use keel::domain::audit::Verification;
use keel::domain::auth::Registration;
use keel::domain::clock::SystemClock;
use keel::oauth;
use keel::telemetry;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: accounts, tenants and permissions over gRPC, gRPC-web and REST"
)]
struct Cli {
    /// TOML config file; its keys are the long flag names with underscores
    #[arg(long, env = "KEEL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and run the job workers (the default)
    Serve {
        /// Serve the API only; `keel worker` processes run the jobs
        #[arg(long)]
        no_workers: bool,
    },
    /// Run the job workers only (to scale them out beside `keel serve --no-workers`)
    Worker,
    /// Apply pending database migrations and exit
    Migrate,
    /// Operator tasks
    Admin {
        #[command(subcommand)]
        task: AdminTask,
    },
}

#[derive(Subcommand)]
enum AdminTask {
    /// Create a platform superuser
    CreateSuperuser {
        #[arg(long)]
        email: String,
        /// The password; prefer KEEL_SUPERUSER_PASSWORD to keep it out of the shell history
        #[arg(long, env = "KEEL_SUPERUSER_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "")]
        full_name: String,
    },
    /// The audit log
    Audit {
        #[command(subcommand)]
        task: AuditTask,
    },
}

#[derive(Subcommand)]
enum AuditTask {
    /// Check the audit log's hash chain; exits 1 naming the first broken entry
    Verify,
}

/// Logs to stdout as text or JSON (`RUST_LOG` filters them); with an OTLP endpoint, traces
/// too. The trace spans stay out of the logs.
fn init_tracing(format: LogFormat, traces: Option<&SdkTracerProvider>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    // Traced, Keel's spans pass whatever the logs' level; untraced they cost nothing.
    let spans = match traces {
        Some(_) => [
            format!("{}=debug", telemetry::TRACE_TARGET),
            format!("{}=info", telemetry::JOBS_TARGET),
        ],
        None => [format!("{}=off", telemetry::TRACE_TARGET), String::new()],
    };
    for directive in spans.iter().filter(|directive| !directive.is_empty()) {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs.with_filter(telemetry::PerUse(telemetry::logged())))
        .with(traces.map(telemetry::layer))
        .init();
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return interrupt.await.unwrap_or(()),
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or(());
    tracing::info!("shutting down");
}

/// An error ends the process with one line naming its causes (never a backtrace: a bad
/// setting is no crash).
#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let file_settings = match &cli.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let environment = Settings {
        oauth: oauth::providers_from_env(std::env::vars()),
        ..cli.settings
    };
    let config = Config::from_settings(&environment.over(file_settings))?;
    let traces = (config.otlp_endpoint.as_deref())
        .map(telemetry::tracer_provider)
        .transpose()
        .context("KEEL_OTLP_ENDPOINT")?;
    init_tracing(config.log_format, traces.as_ref());
    let outcome = run_command(cli.command, config).await;
    if let Some(traces) = traces {
        // The last batch goes out before the process ends; the SDK blocks while it does.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    outcome
}

async fn run_command(command: Option<Command>, config: Config) -> anyhow::Result<()> {
    match command.unwrap_or(Command::Serve { no_workers: false }) {
        Command::Serve { no_workers } => {
            let keel = Keel::build(&config, Arc::new(SystemClock)).await?;
            let keel = if no_workers {
                keel.without_workers()
            } else {
                keel
            };
            keel.serve(shutdown_signal()).await
        }
        Command::Worker => {
            let services = Services::build(&config, Arc::new(SystemClock)).await?;
            let outcome = services.workers(&config)?.run(shutdown_signal()).await;
            services.close().await;
            outcome
        }
        Command::Migrate => {
            let services = Services::build(
                &Config {
                    migrate_on_start: false,
                    ..config
                },
                Arc::new(SystemClock),
            )
            .await?;
            services.migrate().await?;
            services.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Admin {
            task:
                AdminTask::CreateSuperuser {
                    email,
                    password,
                    full_name,
                },
        } => {
            let services = Services::build(&config, Arc::new(SystemClock)).await?;
            let created = services
                .auth
                .create_superuser(Registration {
                    email: &email,
                    password: &password,
                    full_name: &full_name,
                })
                .await;
            services.close().await;
            let user = created.context("creating the superuser")?;
            println!("created superuser {} ({})", user.email, user.id);
            Ok(())
        }
        Command::Admin {
            task: AdminTask::Audit {
                task: AuditTask::Verify,
            },
        } => {
            let services = Services::build(&config, Arc::new(SystemClock)).await?;
            let verified = services.audit.verify().await;
            services.close().await;
            match verified.context("reading the audit log")? {
                Verification::Intact { entries, head } => {
                    let head = keel::domain::secret::hex(&head);
                    println!("audit log intact: {entries} entries, last hash {head}");
                    Ok(())
                }
                Verification::Broken {
                    sequence,
                    id,
                    problem,
                } => {
                    let id = id.map(|id| format!(" ({id})")).unwrap_or_default();
                    anyhow::bail!("audit log broken at entry {sequence}{id}: {problem}")
                }
            }
        }
    }
}
