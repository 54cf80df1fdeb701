//! Load tool: measures Keel's sign-in, refresh, authenticated `GetMe`, a state change with its
//! outbox event (`UpdateMe`) and an organization-permission call (`ListRoles`: guard, role
//! check, quota metering, no database read) over gRPC and REST, against a bare unary RPC
//! (`grpc.health.v1.Health/Check`) as the baseline; `GetMe` again while a flood of sign-ups
//! and sign-ins saturates password hashing (admission control keeps it from queueing behind
//! them); and a `ListOrganizations` page for a user with 10,000 memberships behind it (a list
//! costs its page, not its collection).
//!
//! ```sh
//! cargo build --release && KEEL_RATE_LIMIT_AUTH_PER_MINUTE=10000000 ./target/release/keel &
//! cargo bench --bench load -- --url http://127.0.0.1:8000 --server-pid $!
//! ```
//! Without `--url` it starts a server in-process (figures then include the client's own CPU).
//! With `--server-pid` it also reports the server's CPU time per request, read from /proc.

use keel::api::pb::keel::auth::v1::auth_service_client::AuthServiceClient;
use keel::api::pb::keel::auth::v1::{
    GetMeRequest, LoginRequest, RefreshRequest, RegisterRequest, RequestPasswordResetRequest,
};
use keel::api::pb::keel::organization::v1::organization_service_client::OrganizationServiceClient;
use keel::api::pb::keel::organization::v1::{CreateOrganizationRequest, ListOrganizationsRequest};
use keel::api::pb::keel::role::v1::ListRolesRequest;
use keel::api::pb::keel::role::v1::role_service_client::RoleServiceClient;
use keel::api::pb::keel::user::v1::UpdateMeRequest;
use keel::api::pb::keel::user::v1::user_service_client::UserServiceClient;
use keel::app::Keel;
use keel::config::{Config, Settings};
use keel::domain::clock::SystemClock;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PASSWORD: &str = "Str0ng!Passw0rd";
/// Concurrent callers of the sign-up and sign-in flood.
const FLOODERS: usize = 64;

/// A worker's client and the refresh token its next call spends.
type RefreshChain = (AuthServiceClient<Channel>, Arc<Mutex<String>>);

struct Options {
    url: Option<String>,
    server_pid: Option<u32>,
    seconds: u64,
    connections: usize,
    only: Option<String>,
    /// The memberships behind the `ListOrganizations` page.
    memberships: usize,
}

fn options() -> Options {
    let mut options = Options {
        url: None,
        server_pid: None,
        seconds: 5,
        connections: 32,
        only: None,
        memberships: 10_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => options.url = Some(value()),
            "--server-pid" => options.server_pid = Some(value().parse().expect("--server-pid")),
            "--seconds" => options.seconds = value().parse().expect("--seconds"),
            "--connections" => options.connections = value().parse().expect("--connections"),
            "--only" => options.only = Some(value()),
            "--memberships" => options.memberships = value().parse().expect("--memberships"),
            // cargo bench passes --bench; nothing else is ours.
            _ => {}
        }
    }
    options
}

/// User + system CPU time of a process, from /proc (Linux).
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

struct Report {
    requests: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

/// Whether the scenario `name` runs (`--only` picks by a part of the name).
fn wanted(options: &Options, name: &str) -> bool {
    options
        .only
        .as_deref()
        .is_none_or(|only| name.contains(only))
}

/// Runs `connections` workers, each repeating `call` on its own state for `seconds`.
async fn run<S, F, Fut>(options: &Options, name: &str, states: Vec<S>, call: F)
where
    S: Send + 'static,
    F: Fn(&mut S) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = bool> + Send,
{
    if !wanted(options, name) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let cpu_before = options.server_pid.and_then(process_cpu);
    let started = Instant::now();
    let mut workers = Vec::new();
    for mut state in states {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut report = Report {
                requests: 0,
                errors: 0,
                latencies: Vec::new(),
            };
            while Instant::now() < deadline {
                let begin = Instant::now();
                let ok = call(&mut state).await;
                report.latencies.push(begin.elapsed());
                report.requests += 1;
                report.errors += u64::from(!ok);
            }
            report
        }));
    }
    let mut total = Report {
        requests: 0,
        errors: 0,
        latencies: Vec::new(),
    };
    for worker in workers {
        let report = worker.await.expect("worker");
        total.requests += report.requests;
        total.errors += report.errors;
        total.latencies.extend(report.latencies);
    }
    let elapsed = started.elapsed();
    total.latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((total.latencies.len() as f64 - 1.0) * p).round() as usize;
        total.latencies.get(index).copied().unwrap_or_default()
    };
    let cpu = match (cpu_before, options.server_pid.and_then(process_cpu)) {
        (Some(before), Some(after)) if total.requests > 0 => format!(
            "{:>8.1} µs server CPU/req",
            (after - before).as_secs_f64() * 1e6 / total.requests as f64
        ),
        _ => String::new(),
    };
    println!(
        "{name:<22} {:>9.0} req/s  p50 {:>8.2?}  p99 {:>8.2?}  errors {:>5}{cpu}",
        total.requests as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        total.errors,
    );
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("gRPC connection")
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

#[tokio::main]
async fn main() {
    let options = options();
    // reqwest is built without a default TLS provider: the process uses aws-lc-rs throughout.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let url = match &options.url {
        Some(url) => url.clone(),
        None => start_in_process().await,
    };
    println!(
        "Keel load: {url}, {} connections, {} s per scenario",
        options.connections, options.seconds
    );

    let email = format!("load-{}@example.com", uuid::Uuid::now_v7().simple());
    let mut grpc = AuthServiceClient::new(channel(&url).await);
    grpc.register(RegisterRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        full_name: "Load".into(),
    })
    .await
    .expect("register the load user");
    let login = LoginRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        username: String::new(),
    };
    let access = grpc
        .login(login.clone())
        .await
        .expect("login")
        .into_inner()
        .access_token;

    let mut channels = Vec::new();
    for _ in 0..options.connections {
        channels.push(channel(&url).await);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.connections)
        .build()
        .expect("HTTP client");

    run(
        &options,
        "grpc health (baseline)",
        channels.clone(),
        |channel: &mut Channel| {
            let mut client = HealthClient::new(channel.clone());
            async move { client.check(HealthCheckRequest::default()).await.is_ok() }
        },
    )
    .await;

    let token = access.clone();
    run(
        &options,
        "grpc GetMe",
        channels.clone(),
        move |channel: &mut Channel| {
            let mut client = AuthServiceClient::new(channel.clone());
            let request = bearer(GetMeRequest {}, &token);
            async move { client.get_me(request).await.is_ok() }
        },
    )
    .await;

    // A state change: the profile row and its `user.updated` event, committed together.
    let token = access.clone();
    run(
        &options,
        "grpc UpdateMe (a change and its event)",
        channels.clone(),
        move |channel: &mut Channel| {
            let mut client = UserServiceClient::new(channel.clone());
            let request = bearer(
                UpdateMeRequest {
                    full_name: Some(format!("Load {}", uuid::Uuid::now_v7().simple())),
                },
                &token,
            );
            async move { client.update_me(request).await.is_ok() }
        },
    )
    .await;

    let me_url = format!("{url}/api/v1/auth/me");
    let states = vec![(http.clone(), me_url, access.clone()); options.connections];
    run(
        &options,
        "rest GetMe",
        states,
        |(http, me_url, token): &mut (reqwest::Client, String, String)| {
            let request = http.get(me_url.as_str()).bearer_auth(&*token);
            async move {
                request
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success())
            }
        },
    )
    .await;

    // One organization per worker, so no run reaches the default 10,000 calls a month.
    let mut organizations = Vec::new();
    for (index, channel) in channels.iter().enumerate() {
        let created = OrganizationServiceClient::new(channel.clone())
            .create_organization(bearer(
                CreateOrganizationRequest {
                    name: format!("Load {index}"),
                    slug: format!("load-{index}-{}", uuid::Uuid::now_v7().simple()),
                    settings: None,
                },
                &access,
            ))
            .await
            .expect("create an organization");
        let organization_id = created.into_inner().organization.expect("organization").id;
        organizations.push((channel.clone(), organization_id));
    }
    let token = access.clone();
    run(
        &options,
        "grpc ListRoles (org)",
        organizations.clone(),
        move |(channel, organization_id): &mut (Channel, String)| {
            let mut client = RoleServiceClient::new(channel.clone());
            let request = bearer(
                ListRolesRequest {
                    organization_id: organization_id.clone(),
                },
                &token,
            );
            async move { client.list_roles(request).await.is_ok() }
        },
    )
    .await;
    let states: Vec<_> = organizations
        .iter()
        .map(|(_, organization_id)| {
            let roles_url = format!("{url}/api/v1/organizations/{organization_id}/roles");
            (http.clone(), roles_url, access.clone())
        })
        .collect();
    run(
        &options,
        "rest ListRoles (org)",
        states,
        |(http, roles_url, token): &mut (reqwest::Client, String, String)| {
            let request = http.get(roles_url.as_str()).bearer_auth(&*token);
            async move {
                request
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success())
            }
        },
    )
    .await;

    // Each call stores a mail job (durably, before answering); the workers in the same
    // process then decide there is no account to mail.
    run(
        &options,
        "grpc RequestPasswordReset (queues a job)",
        channels.clone(),
        |channel: &mut Channel| {
            let mut client = AuthServiceClient::new(channel.clone());
            let request = RequestPasswordResetRequest {
                email: format!("nobody-{}@example.com", uuid::Uuid::now_v7().simple()),
            };
            async move { client.request_password_reset(request).await.is_ok() }
        },
    )
    .await;

    // GetMe while sign-ups and sign-ins flood password hashing for the whole run.
    if wanted(&options, "grpc GetMe (flood)") {
        let flood_deadline = Instant::now() + Duration::from_secs(options.seconds + 1);
        let flooders: Vec<_> = (0..FLOODERS)
            .map(|flooder| {
                let mut client = AuthServiceClient::new(channels[flooder % channels.len()].clone());
                let login = login.clone();
                tokio::spawn(async move {
                    let (mut calls, mut refused) = (0_u64, 0_u64);
                    while Instant::now() < flood_deadline {
                        let outcome = if calls % 2 == 0 {
                            client
                                .register(RegisterRequest {
                                    email: format!(
                                        "flood-{}@example.com",
                                        uuid::Uuid::now_v7().simple()
                                    ),
                                    password: PASSWORD.into(),
                                    full_name: "Flood".into(),
                                })
                                .await
                                .map(|_| ())
                        } else {
                            client.login(login.clone()).await.map(|_| ())
                        };
                        calls += 1;
                        refused += u64::from(outcome.is_err());
                    }
                    (calls, refused)
                })
            })
            .collect();
        let token = access.clone();
        run(
            &options,
            "grpc GetMe (flood)",
            channels.clone(),
            move |channel: &mut Channel| {
                let mut client = AuthServiceClient::new(channel.clone());
                let request = bearer(GetMeRequest {}, &token);
                async move { client.get_me(request).await.is_ok() }
            },
        )
        .await;
        let (mut calls, mut refused) = (0, 0);
        for flooder in flooders {
            let (flooder_calls, flooder_refused) = flooder.await.expect("flooder");
            calls += flooder_calls;
            refused += flooder_refused;
        }
        println!(
            "  the flood: {calls} sign-ups and sign-ins, {refused} refused (SERVER_BUSY or limits)"
        );
    }

    // One user in 10,000 organizations (`--memberships`) lists a page of them.
    if wanted(&options, "grpc ListOrganizations") {
        let member = format!("lists-{}@example.com", uuid::Uuid::now_v7().simple());
        grpc.register(RegisterRequest {
            email: member.clone(),
            password: PASSWORD.into(),
            full_name: "Lists".into(),
        })
        .await
        .expect("register the list user");
        let member_token = grpc
            .login(LoginRequest {
                email: member,
                password: PASSWORD.into(),
                username: String::new(),
            })
            .await
            .expect("login")
            .into_inner()
            .access_token;
        let creators: Vec<_> = channels
            .iter()
            .enumerate()
            .map(|(worker, channel)| {
                let mut client = OrganizationServiceClient::new(channel.clone());
                let token = member_token.clone();
                let share = options.memberships.div_ceil(channels.len());
                tokio::spawn(async move {
                    for index in 0..share {
                        let slug =
                            format!("many-{worker}-{index}-{}", uuid::Uuid::now_v7().simple());
                        client
                            .create_organization(bearer(
                                CreateOrganizationRequest {
                                    name: slug.clone(),
                                    slug,
                                    settings: None,
                                },
                                &token,
                            ))
                            .await
                            .expect("create an organization");
                    }
                })
            })
            .collect();
        for creator in creators {
            creator.await.expect("creator");
        }
        run(
            &options,
            "grpc ListOrganizations",
            channels.clone(),
            move |channel: &mut Channel| {
                let mut client = OrganizationServiceClient::new(channel.clone());
                let request = bearer(
                    ListOrganizationsRequest {
                        page_size: 50,
                        page_token: String::new(),
                    },
                    &member_token,
                );
                async move { client.list_organizations(request).await.is_ok() }
            },
        )
        .await;
    }

    // Refresh: every worker follows its own session's rotation chain.
    let mut chains = Vec::new();
    for channel in &channels {
        let mut client = AuthServiceClient::new(channel.clone());
        let refresh = client
            .login(login.clone())
            .await
            .expect("login")
            .into_inner()
            .refresh_token;
        chains.push((client, Arc::new(Mutex::new(refresh))));
    }
    run(
        &options,
        "grpc Refresh",
        chains,
        |(client, chain): &mut RefreshChain| {
            let mut client = client.clone();
            let chain = chain.clone();
            async move {
                let refresh_token = chain.lock().expect("chain").clone();
                match client.refresh(RefreshRequest { refresh_token }).await {
                    Ok(reply) => {
                        *chain.lock().expect("chain") = reply.into_inner().refresh_token;
                        true
                    }
                    Err(_) => false,
                }
            }
        },
    )
    .await;

    run(
        &options,
        "grpc Login",
        channels.clone(),
        move |channel: &mut Channel| {
            let mut client = AuthServiceClient::new(channel.clone());
            let request = login.clone();
            async move { client.login(request).await.is_ok() }
        },
    )
    .await;

    let login_url = format!("{url}/api/v1/auth/login");
    let body = serde_json::json!({ "email": email, "password": PASSWORD });
    let states = vec![(http.clone(), login_url, body); options.connections];
    run(
        &options,
        "rest Login",
        states,
        |(http, login_url, body): &mut (reqwest::Client, String, serde_json::Value)| {
            let request = http.post(login_url.as_str()).json(&*body);
            async move {
                request
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success())
            }
        },
    )
    .await;
}

async fn start_in_process() -> String {
    let data_dir =
        std::env::temp_dir().join(format!("keel-load-{}", uuid::Uuid::now_v7().simple()));
    let settings = Settings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir.display().to_string()),
        rate_limit_auth_per_minute: Some("10000000".into()),
        rate_limit_anonymous_per_minute: Some("10000000".into()),
        rate_limit_user_per_minute: Some("10000000".into()),
        rate_limit_organization_per_minute: Some("10000000".into()),
        rate_limit_mail_per_recipient_per_hour: Some("10000000".into()),
        ..Settings::default()
    };
    let config = Config::from_settings(&settings).expect("config");
    let keel = Keel::build(&config, Arc::new(SystemClock))
        .await
        .expect("keel starts");
    let address = keel.local_addr().expect("address");
    tokio::spawn(keel.serve(std::future::pending()));
    format!("http://{address}")
}
