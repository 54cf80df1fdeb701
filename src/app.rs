//! The composition root: builds the store, cache, crypto adapters and domain services from the
//! configuration, and serves the API on one listener.

use crate::api::client_address::TrustedProxies;
use crate::api::contract::Contract;
use crate::api::{self, ApiDependencies, CallerPolicy, RequestLimits};
use crate::cache::{Counted, MemoryCache, RedisCache};
use crate::config::Config;
use crate::dns::DnsTxt;
use crate::domain::apikey::ApiKeyService;
use crate::domain::audit::{AuditService, Dispatcher};
use crate::domain::auth::{self, AuthPorts, AuthService, AuthSettings, ThrottleSettings};
use crate::domain::cache::Cache;
use crate::domain::clock::Clock;
use crate::domain::dependencies::{DependencyService, Registry};
use crate::domain::files::{FilePorts, FileService, FileSettings, ObjectStore};
use crate::domain::flags::FeatureFlagService;
use crate::domain::health::HealthProbe;
use crate::domain::integrations::{IntegrationPorts, IntegrationService};
use crate::domain::jobs::{DeadLetterService, JobMonitorService};
use crate::domain::llm::{LlmPorts, LlmService};
use crate::domain::mail::Mailer;
use crate::domain::mail::Outbox;
use crate::domain::notifications::{NotificationService, SecurityNotices};
use crate::domain::page::PageTokens;
use crate::domain::rate::{Budget, RateLimits};
use crate::domain::realtime::{Announcer, Beacon, Hub};
use crate::domain::secret::Keyring;
use crate::domain::tenancy::access::{AccessControl, AccessPorts};
use crate::domain::tenancy::directory::UserDirectory;
use crate::domain::tenancy::invitations::{InvitationBudgets, InvitationPorts, InvitationService};
use crate::domain::tenancy::ip_rules::IpRestrictionService;
use crate::domain::tenancy::organizations::OrganizationService;
use crate::domain::tenancy::quotas::{QuotaPorts, QuotaService};
use crate::domain::tenancy::roles::RoleService;
use crate::domain::tenancy::sso::{SsoPorts, SsoService};
use crate::domain::tenancy::teams::TeamService;
use crate::domain::totp::TotpService;
use crate::domain::webhooks::{WebhookPorts, WebhookService};
use crate::jobs::{JobContext, JobStore, Queues, Requeue, Workers, WorkersProbe};
use crate::mail::{Delivery, MemoryOutbox};
use crate::oauth;
use crate::objects::{LocalObjects, S3Objects};
use crate::registry::SparseIndex;
use crate::security::breached::RangeFiles;
use crate::security::jwt::{JwtCodec, SigningKeys};
use crate::security::keyring::InstanceKeyring;
use crate::security::password::Argon2Hasher;
use crate::store::{DirectoryArchive, SqlStore};
use crate::webhooks::HttpSender;
use anyhow::Context;
use axum::serve::ListenerExt;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The domain services and the adapters behind them.
pub struct Services {
    contract: Arc<Contract>,
    pub auth: Arc<AuthService>,
    api_keys: Arc<ApiKeyService>,
    totp: Arc<TotpService>,
    access: Arc<AccessControl>,
    organizations: Arc<OrganizationService>,
    roles: Arc<RoleService>,
    invitations: Arc<InvitationService>,
    teams: Arc<TeamService>,
    directory: Arc<UserDirectory>,
    quotas: Arc<QuotaService>,
    sso: Arc<SsoService>,
    outbox: Option<Arc<dyn Outbox>>,
    store: SqlStore,
    jobs: JobStore,
    queues: Queues,
    dead_letters: Arc<DeadLetterService>,
    pub audit: Arc<AuditService>,
    dispatcher: Arc<Dispatcher>,
    webhooks: Arc<WebhookService>,
    integrations: Arc<IntegrationService>,
    llm: Arc<LlmService>,
    notifications: Arc<NotificationService>,
    files: Arc<FileService>,
    hub: Arc<Hub>,
    /// Where this process learns that events were dispatched (by any process).
    beacon: Beacon,
    dependencies: Arc<DependencyService>,
    flags: Arc<FeatureFlagService>,
    rate_limits: Arc<RateLimits>,
    ip_restrictions: Arc<IpRestrictionService>,
    hashing: Arc<dyn HealthProbe>,
    job_monitor: Arc<JobMonitorService>,
    delivery: Arc<Delivery>,
    redis: Option<Arc<RedisCache>>,
    jwt: Arc<JwtCodec>,
    probes: Vec<Arc<dyn HealthProbe>>,
    clock: Arc<dyn Clock>,
}

impl Services {
    pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // One TLS backend for the process (sqlx, fred): aws-lc-rs. Installing twice is harmless.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

        if config.database_url.starts_with("sqlite:") || config.jwt_private_key_file.is_none() {
            crate::security::create_private_dir(&config.data_dir).with_context(|| {
                format!("KEEL_DATA_DIR: creating {}", config.data_dir.display())
            })?;
        }
        let store = SqlStore::connect(&config.database_url)
            .await
            .context("KEEL_DATABASE_URL: connecting to the database")?;
        if config.migrate_on_start {
            store
                .migrate()
                .await
                .context("applying database migrations")?;
        }

        let jobs = JobStore::connect(&config.database_url, &config.data_dir).await?;
        if config.migrate_on_start {
            jobs.migrate()
                .await
                .context("applying the job store's migrations")?;
        }
        let queues = Queues::new(&jobs, &config.jobs);

        let mut probes: Vec<Arc<dyn HealthProbe>> = vec![Arc::new(store.clone())];
        let (cache, redis): (Arc<dyn Cache>, Option<Arc<RedisCache>>) = match &config.redis_url {
            Some(url) => {
                let redis = Arc::new(
                    RedisCache::connect(url, &config.redis_prefix)
                        .await
                        .context("KEEL_REDIS_URL: connecting to Redis")?,
                );
                let counted = Arc::new(Counted::new(redis.clone()));
                probes.push(counted.clone());
                (counted, Some(redis))
            }
            None => {
                let memory = Arc::new(Counted::new(Arc::new(MemoryCache::new(
                    config.memory_cache_max_bytes,
                ))));
                probes.push(memory.clone());
                (memory, None)
            }
        };
        let objects: Arc<dyn ObjectStore> = match &config.s3 {
            Some(s3) => {
                let objects = Arc::new(S3Objects::connect(s3).await?);
                probes.push(objects.clone());
                objects
            }
            None => {
                let objects = Arc::new(
                    LocalObjects::open(&config.data_dir.join("files"))
                        .context("KEEL_DATA_DIR: creating the file storage directory")?,
                );
                probes.push(objects.clone());
                objects
            }
        };

        let keys = match (&config.jwt_hs256_secret, &config.jwt_private_key_file) {
            (Some(secret), _) => SigningKeys::Hs256Secret(secret.clone()),
            (None, Some(file)) => SigningKeys::Ed25519File(file.clone()),
            (None, None) => SigningKeys::Ed25519Directory(config.data_dir.join("keys")),
        };
        let jwt = Arc::new(
            JwtCodec::load(keys, &config.public_url, &config.jwt_audience)
                .context("loading the token signing keys")?,
        );
        let keyring: Arc<dyn Keyring> = Arc::new(match &config.secret_key {
            Some(secret) => InstanceKeyring::from_base64(secret)?,
            None => InstanceKeyring::load_or_create(&config.data_dir.join("instance-secret.key"))?,
        });
        let contract = Arc::new(Contract::load()?);
        let access = Arc::new(AccessControl::new(AccessPorts {
            store: Arc::new(store.clone()),
            cache: cache.clone(),
            ip_rules: Arc::new(store.clone()),
            events: Arc::new(store.clone()),
            clock: clock.clone(),
        }));
        let ip_restrictions = Arc::new(IpRestrictionService::new(
            Arc::new(store.clone()),
            access.clone(),
            clock.clone(),
        ));
        let api_keys = Arc::new(ApiKeyService::new(
            Arc::new(store.clone()),
            keyring.clone(),
            cache.clone(),
            clock.clone(),
            access.clone(),
        ));
        let pages = Arc::new(PageTokens::new(keyring.clone()));
        let rate_limits = Arc::new(RateLimits::new(cache.clone(), clock.clone()));
        let quotas = Arc::new(QuotaService::new(QuotaPorts {
            store: Arc::new(store.clone()),
            organizations: Arc::new(store.clone()),
            cache: cache.clone(),
            pages: pages.clone(),
            clock: clock.clone(),
            events: Arc::new(store.clone()),
        }));
        let organizations = Arc::new(OrganizationService::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            access.clone(),
            api_keys.clone(),
            quotas.clone(),
            pages.clone(),
            clock.clone(),
        ));
        let roles = Arc::new(RoleService::new(
            Arc::new(store.clone()),
            access.clone(),
            clock.clone(),
        ));
        let hasher = Arc::new(Argon2Hasher::new(
            config.argon2,
            config.hash_concurrency,
            config.hash_queue_limit,
        )?);
        let (delivery, outbox) = match &config.smtp_url {
            Some(url) => (Delivery::smtp(url, &config.mail_from)?, None),
            None => {
                let outbox = Arc::new(MemoryOutbox::default());
                (
                    Delivery::Outbox(outbox.clone()),
                    Some(outbox as Arc<dyn Outbox>),
                )
            }
        };
        let teams = Arc::new(TeamService::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            access.clone(),
            pages.clone(),
            clock.clone(),
        ));
        let directory = Arc::new(UserDirectory::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            pages.clone(),
        ));
        let mailer: Arc<dyn Mailer> = Arc::new(queues.clone());
        let webhooks = Arc::new(WebhookService::new(
            WebhookPorts {
                store: Arc::new(store.clone()),
                sender: Arc::new(HttpSender::new(
                    config.webhook_allow_private_targets,
                    config.webhook_timeout,
                )?),
                keyring: keyring.clone(),
                rate_limits: rate_limits.clone(),
                pages: pages.clone(),
                clock: clock.clone(),
            },
            config.webhooks.clone(),
        ));
        let integrations = Arc::new(IntegrationService::new(
            IntegrationPorts {
                store: Arc::new(store.clone()),
                keyring: keyring.clone(),
                pages: pages.clone(),
                clock: clock.clone(),
            },
            config.integration_max_payload_bytes,
        ));
        let llm = Arc::new(LlmService::new(
            LlmPorts {
                store: Arc::new(store.clone()),
                client: Arc::new(crate::llm::HttpLlmClient::new(
                    config.llm_allow_private_endpoints,
                    config.llm_timeout,
                )?),
                quotas: quotas.clone(),
                keyring: keyring.clone(),
                clock: clock.clone(),
            },
            config.llm_instance.clone(),
        ));
        let notifications = Arc::new(NotificationService::new(
            Arc::new(store.clone()),
            pages.clone(),
            clock.clone(),
        ));
        let dead_letters = Arc::new(DeadLetterService::new(
            Arc::new(store.clone()),
            Arc::new(Requeue {
                queues: queues.clone(),
                webhooks: webhooks.clone(),
            }),
            pages.clone(),
            clock.clone(),
        ));
        let registry = match &config.dependency_registry_url {
            Some(url) => Some(Arc::new(SparseIndex::new(url)?) as Arc<dyn Registry>),
            None => None,
        };
        let dependencies = Arc::new(DependencyService::new(
            crate::build_info::DEPENDENCIES,
            registry,
            Arc::new(store.clone()),
            clock.clone(),
        ));
        let flags = Arc::new(FeatureFlagService::new(
            Arc::new(store.clone()),
            access.clone(),
            cache.clone(),
            clock.clone(),
        ));
        let job_monitor = Arc::new(JobMonitorService::new(
            Arc::new(jobs.clone()),
            pages.clone(),
        ));
        let audit = Arc::new(AuditService::new(
            Arc::new(store.clone()),
            Arc::new(DirectoryArchive::new(config.data_dir.join("audit-exports"))),
            pages.clone(),
            clock.clone(),
        ));
        let beacon = Beacon::default();
        let announcer: Arc<dyn Announcer> = match &redis {
            Some(redis) => {
                redis
                    .relay_announcements(beacon.clone())
                    .await
                    .context("KEEL_REDIS_URL: subscribing to event announcements")?;
                redis.clone()
            }
            None => Arc::new(beacon.clone()),
        };
        let hub = Arc::new(Hub::new(
            Arc::new(store.clone()),
            access.clone(),
            clock.clone(),
            config.realtime.clone(),
        ));
        let dispatcher = Arc::new(Dispatcher::new(
            Arc::new(store.clone()),
            webhooks.clone(),
            SecurityNotices::new(Arc::new(store.clone())),
            announcer,
            clock.clone(),
        ));
        let files = Arc::new(FileService::new(
            FilePorts {
                store: Arc::new(store.clone()),
                objects,
                access: access.clone(),
                quotas: quotas.clone(),
                pages: pages.clone(),
                keyring: keyring.clone(),
                clock: clock.clone(),
            },
            FileSettings {
                max_file_bytes: config.max_file_bytes,
                max_user_storage_bytes: config.max_user_storage_bytes,
                allowed_types: config.file_allowed_types.clone(),
                public_url: config.public_url.clone(),
                images: config.images,
                thumbnail_sizes: config.thumbnail_sizes.clone(),
                retention: config.file_retention,
            },
        ));
        let invitations = Arc::new(InvitationService::new(
            InvitationPorts {
                store: Arc::new(store.clone()),
                users: Arc::new(store.clone()),
                organizations: Arc::new(store.clone()),
                access: access.clone(),
                quotas: quotas.clone(),
                mailer: mailer.clone(),
                pages,
                rate_limits: rate_limits.clone(),
                clock: clock.clone(),
            },
            InvitationBudgets {
                per_organization: Budget::per_hour(config.rate_limit_invitations_per_hour),
                per_recipient: Budget::per_hour(config.rate_limit_mail_per_recipient_per_hour),
            },
            config.public_url.clone(),
        ));
        let totp = Arc::new(TotpService::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            hasher.clone(),
            keyring.clone(),
            clock.clone(),
        ));
        let sso = Arc::new(SsoService::new(SsoPorts {
            store: Arc::new(store.clone()),
            organizations: Arc::new(store.clone()),
            access: access.clone(),
            quotas: quotas.clone(),
            providers: Arc::new(oauth::OrganizationOidc::new(
                config.sso_allow_private_issuers,
                clock.clone(),
            )?),
            dns: Arc::new(DnsTxt::new(config.dns_nameserver)?),
            keyring: keyring.clone(),
            clock: clock.clone(),
        }));
        let auth = Arc::new(
            AuthService::new(
                AuthPorts {
                    users: Arc::new(store.clone()),
                    sessions: Arc::new(store.clone()),
                    api_keys: api_keys.clone(),
                    totp: totp.clone(),
                    one_time_tokens: Arc::new(store.clone()),
                    identities: Arc::new(store.clone()),
                    identity_providers: oauth::identity_providers(
                        &config.oauth_providers,
                        config.oauth_redirect_allowlist.clone(),
                        clock.clone(),
                    )?,
                    organization_providers: sso.clone(),
                    passkeys: Arc::new(store.clone()),
                    webauthn: match &config.passkeys {
                        Some(passkeys) => Some(Arc::new(auth::relying_party(
                            &passkeys.rp_id,
                            &passkeys.origins,
                        )?)),
                        None => {
                            tracing::warn!(
                                "passkeys are off: KEEL_PUBLIC_URL is on an IP address; set \
                                 KEEL_PASSKEY_RP_ID to a domain"
                            );
                            None
                        }
                    },
                    mailer,
                    hasher: hasher.clone(),
                    breaches: match &config.breached_passwords_dir {
                        Some(directory) => Some(Arc::new(RangeFiles::open(directory.clone())?)),
                        None => None,
                    },
                    tokens: jwt.clone(),
                    keyring: keyring.clone(),
                    cache,
                    rate_limits: rate_limits.clone(),
                    events: Arc::new(store.clone()),
                    clock: clock.clone(),
                },
                AuthSettings {
                    access_token_ttl: chrono::Duration::seconds(
                        config.access_token_ttl_seconds.into(),
                    ),
                    refresh_token_ttl: chrono::Duration::seconds(
                        config.refresh_token_ttl_seconds.into(),
                    ),
                    session_max_lifetime: chrono::Duration::seconds(
                        config.session_max_lifetime_seconds.into(),
                    ),
                    password_policy: config.password_policy.clone(),
                    throttle: ThrottleSettings {
                        lockout_threshold: config.lockout_threshold,
                        lockout_duration: chrono::Duration::minutes(config.lockout_minutes.into()),
                        attempts_per_minute: config.rate_limit_auth_per_minute,
                        mail_per_recipient_per_hour: config.rate_limit_mail_per_recipient_per_hour,
                    },
                    link_base_url: config.public_url.clone(),
                    require_verified_email: config.require_verified_email,
                },
            )
            .await?,
        );
        Ok(Self {
            contract,
            auth,
            api_keys,
            totp,
            access,
            organizations,
            roles,
            invitations,
            teams,
            directory,
            quotas,
            sso,
            outbox,
            store,
            jobs,
            queues,
            dead_letters,
            audit,
            dispatcher,
            webhooks,
            integrations,
            llm,
            notifications,
            files,
            hub,
            beacon,
            dependencies,
            flags,
            rate_limits,
            ip_restrictions,
            hashing: hasher.clone(),
            job_monitor,
            delivery: Arc::new(delivery),
            redis,
            jwt,
            probes,
            clock,
        })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        self.store.migrate().await?;
        self.jobs.migrate().await
    }

    /// The job workers, on these services.
    pub fn workers(&self, config: &Config) -> anyhow::Result<Workers> {
        Workers::new(
            &self.jobs,
            &config.jobs,
            JobContext {
                store: self.jobs.clone(),
                clock: self.clock.clone(),
                invitations: self.invitations.clone(),
                auth: self.auth.clone(),
                delivery: self.delivery.clone(),
                queues: self.queues.clone(),
                dead_letters: self.dead_letters.clone(),
                dispatcher: self.dispatcher.clone(),
                leases: Arc::new(self.store.clone()),
                webhooks: self.webhooks.clone(),
                integrations: self.integrations.clone(),
                files: self.files.clone(),
                audit: self.audit.clone(),
                audit_retention: config.audit_retention,
                dependencies: self.dependencies.clone(),
                check_dependencies: config.dependency_registry_url.is_some(),
            },
        )
    }

    pub async fn close(&self) {
        self.jobs.close().await;
        if let Some(redis) = &self.redis {
            redis.close().await;
        }
        self.store.close().await;
    }
}

/// A bound, ready-to-serve Keel.
pub struct Keel {
    services: Services,
    /// `None` when this process serves the API only (`keel serve --no-workers`).
    workers: Option<Workers>,
    router: axum::Router,
    listener: TcpListener,
    usage_flush_interval: std::time::Duration,
    sqlite_wal_max_bytes: u64,
    /// How often the hub looks for dispatched events it was not told of.
    realtime_poll: std::time::Duration,
    /// Set at shutdown: readiness turns 503 / NOT_SERVING.
    draining: tokio::sync::watch::Sender<bool>,
    /// How long requests, streams and jobs get to finish at shutdown.
    shutdown_timeout: std::time::Duration,
}

impl Keel {
    pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let services = Services::build(config, clock).await?;
        let workers = Some(services.workers(config)?);
        let (draining, draining_watch) = tokio::sync::watch::channel(false);
        let router = api::router(ApiDependencies {
            draining: draining_watch,
            contract: services.contract.clone(),
            auth: services.auth.clone(),
            api_keys: services.api_keys.clone(),
            totp: services.totp.clone(),
            access: services.access.clone(),
            organizations: services.organizations.clone(),
            roles: services.roles.clone(),
            invitations: services.invitations.clone(),
            teams: services.teams.clone(),
            directory: services.directory.clone(),
            quotas: services.quotas.clone(),
            sso: services.sso.clone(),
            outbox: services.outbox.clone(),
            dead_letters: services.dead_letters.clone(),
            audit: services.audit.clone(),
            webhooks: services.webhooks.clone(),
            integrations: services.integrations.clone(),
            llm: services.llm.clone(),
            notifications: services.notifications.clone(),
            files: services.files.clone(),
            hub: services.hub.clone(),
            dispatcher: services.dispatcher.clone(),
            dependencies: services.dependencies.clone(),
            flags: services.flags.clone(),
            ip_restrictions: services.ip_restrictions.clone(),
            job_monitor: Arc::new(services.jobs.clone()),
            jobs: services.job_monitor.clone(),
            jwks: services.jwt.jwks().clone(),
            probes: services.probes.clone(),
            hashing: services.hashing.clone(),
            workers_probe: Arc::new(WorkersProbe {
                leases: Arc::new(services.store.clone()),
                jobs: Arc::new(services.jobs.clone()),
                clock: services.clock.clone(),
            }),
            public_url: config.public_url.clone(),
            max_body_bytes: config.max_body_bytes,
            max_file_bytes: config.max_file_bytes,
            callers: CallerPolicy {
                rate_limits: services.rate_limits.clone(),
                budgets: config.caller_budgets.clone(),
                denied: config.ip_deny.clone(),
            },
            request_limits: RequestLimits {
                max_in_flight: config.max_concurrent_requests,
                timeout: std::time::Duration::from_secs(config.request_timeout_seconds.into()),
            },
            cors_allowed_origins: config.cors_allowed_origins.clone(),
            trusted_proxies: TrustedProxies::new(config.trusted_proxies.clone()),
            metrics_token: config.metrics_token.clone(),
            password_policy: config.password_policy.clone(),
        })
        .await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("KEEL_LISTEN: binding {}", config.listen))?;
        tracing::info!(
            address = %listener.local_addr()?,
            database = services.store.backend_name(),
            cache = if services.redis.is_some() { "redis" } else { "memory" },
            mail = if services.outbox.is_some() { "dev outbox (in memory, GET /api/v1/admin/outbox)" } else { "smtp" },
            "keel listening (gRPC, gRPC-web, REST, docs at /docs)"
        );
        Ok(Self {
            services,
            workers,
            router,
            listener,
            usage_flush_interval: std::time::Duration::from_secs(config.usage_flush_seconds.into()),
            sqlite_wal_max_bytes: config.sqlite_wal_max_bytes,
            realtime_poll: config.jobs.poll_interval,
            draining,
            shutdown_timeout: config.jobs.shutdown_timeout,
        })
    }

    /// Leaves the jobs to `keel worker` processes.
    pub fn without_workers(mut self) -> Self {
        self.workers = None;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves. Then, at once: readiness turns 503 (gRPC health
    /// NOT_SERVING), the listener stops accepting, realtime connections are closed and the
    /// workers take no new jobs; requests, streams and running jobs get the shutdown timeout
    /// to finish (past it, they are dropped: a job is picked up again once its heartbeat
    /// lapses). Last, the usage counters are written and the pools closed.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let workers = self.workers.map(|workers| {
            let mut stopping = stopping.clone();
            tokio::spawn(workers.run(async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            }))
        });
        let wal = tokio::spawn(bound_wal(
            self.services.store.clone(),
            self.sqlite_wal_max_bytes,
        ));
        let quotas = self.services.quotas.clone();
        let (stop_flushing, flushing_stopped) = tokio::sync::oneshot::channel::<()>();
        let flush = tokio::spawn(flush_usage(
            quotas.clone(),
            self.usage_flush_interval,
            flushing_stopped,
        ));
        // Realtime connections last until closed: at shutdown the hub closes them, or the
        // graceful shutdown below would wait for them.
        let (closing, closed) = tokio::sync::watch::channel(false);
        let hub = tokio::spawn(self.services.hub.clone().run(
            self.services.beacon.watch(),
            self.realtime_poll,
            closed,
        ));
        let draining = self.draining;
        let mut signalled = stopping.clone();
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: draining requests and jobs");
            draining.send_replace(true);
            let _ = closing.send(true);
            let _ = stop.send(true);
        };
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        // Without TCP_NODELAY a gRPC reply written as several small HTTP/2 frames waits for
        // the peer's delayed ACK (40 ms) between them.
        let listener = self.listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "setting TCP_NODELAY on a connection failed");
            }
        });
        let serving = axum::serve(listener, service)
            .with_graceful_shutdown(shutdown)
            .into_future();
        let timeout = self.shutdown_timeout;
        let deadline = async move {
            let _ = signalled.wait_for(|stop| *stop).await;
            tokio::time::sleep(timeout).await;
        };
        tokio::select! {
            served = serving => served?,
            () = deadline => tracing::warn!(
                timeout_seconds = timeout.as_secs(),
                "requests were still in flight at the shutdown timeout; they are dropped"
            ),
        }
        if let Err(error) = hub.await {
            tracing::warn!(%error, "the realtime hub panicked");
        }
        // The workers have the same timeout of their own, from the same moment.
        if let Some(workers) = workers {
            match workers.await {
                Ok(Err(error)) => tracing::warn!(%error, "the job workers failed"),
                Err(error) => tracing::warn!(%error, "the job workers panicked"),
                Ok(Ok(())) => {}
            }
        }
        // In order: let a flush under way finish (aborting it would lose the counts it took),
        // write what is left, close.
        wal.abort();
        let _ = stop_flushing.send(());
        if let Err(error) = flush.await {
            tracing::warn!(%error, "the usage flush task failed");
        }
        if let Err(error) = quotas.flush().await {
            tracing::warn!(%error, "writing usage counters at shutdown failed");
        }
        self.services.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Writes the usage counters from the cache to the database every `interval`, until `stop`
/// (never in the middle of a flush).
async fn flush_usage(
    quotas: Arc<QuotaService>,
    interval: std::time::Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut stop => return,
        }
        if let Err(error) = quotas.flush().await {
            tracing::warn!(%error, "writing usage counters failed; kept for the next flush");
        }
    }
}

/// How often the SQLite write-ahead log is measured against its bound.
const WAL_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

async fn bound_wal(store: SqlStore, limit: u64) {
    let mut ticks = tokio::time::interval(WAL_CHECK_INTERVAL);
    loop {
        ticks.tick().await;
        if let Err(error) = store.bound_wal(limit).await {
            tracing::warn!(%error, "bounding the SQLite write-ahead log failed");
        }
    }
}
