//! Sign-in with outside providers, through the doors users use: a real OpenID Connect
//! provider (`oidc-provider` from npm, `tests/peers/oidc-provider.mjs`) and a GitHub-shaped
//! OAuth2 server, both on loopback; the test plays the browser between them and Keel.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, TestApp, grpc_reason, tool, with_token};
use crate::passkeys::{Device, register as register_passkey, with_passkeys};
use crate::totp::enroll;
use keel::api::pb::keel::auth::v1::o_auth_service_client::OAuthServiceClient;
use keel::api::pb::keel::auth::v1::{
    FinishOAuthRequest, LinkIdentityRequest, ListIdentitiesRequest, StartOAuthRequest,
    UnlinkIdentityRequest,
};
use keel::oauth::ProviderSettings;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;
use tonic::transport::Channel;

backend_tests!(a_provider_identity_signs_in_on_both_doors);

pub const CLIENT_ID: &str = "keel-test-client";
pub const CLIENT_SECRET: &str = "a-client-secret-only-for-tests";
pub const REDIRECT_URI: &str = "https://app.example/oauth/callback";

/// `oidc-provider` in a child process, killed with the test.
pub struct OidcPeer {
    pub issuer: String,
    _process: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl OidcPeer {
    /// `None` (and the test skips, as the other npm-backed tests do) without node_modules.
    pub async fn start(id_token_ttl_seconds: u32) -> Option<Self> {
        let node_modules = tool("KEEL_TEST_NODE_MODULES", "node_modules")?;
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&node_modules, dir.path().join("node_modules")).unwrap();
        let script = dir.path().join("oidc-provider.mjs");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/oidc-provider.mjs"),
            &script,
        )
        .unwrap();
        // A start that prints nothing for long is tried again: under the suite's full load,
        // a peer has once sat idle without ever listening.
        for _ in 0..3 {
            let mut process = tokio::process::Command::new("node")
                .arg(&script)
                .env("CLIENT_ID", CLIENT_ID)
                .env("CLIENT_SECRET", CLIENT_SECRET)
                .env("REDIRECT_URI", REDIRECT_URI)
                .env("ID_TOKEN_TTL", id_token_ttl_seconds.to_string())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("node runs the OIDC provider");
            let stdout = process.stdout.take().unwrap();
            let mut lines = BufReader::new(stdout).lines();
            let started = tokio::time::timeout(std::time::Duration::from_secs(20), async {
                while let Some(line) = lines.next_line().await.unwrap() {
                    if let Ok(started) = serde_json::from_str::<Value>(&line) {
                        return started["issuer"].as_str().map(str::to_owned);
                    }
                }
                None
            })
            .await;
            let Ok(Some(issuer)) = started else {
                eprintln!("the OIDC provider did not start within 20 s: starting another");
                continue;
            };
            // It keeps logging notices; a closed pipe would end it.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Some(Self {
                issuer,
                _process: process,
                _dir: dir,
            });
        }
        panic!("the OIDC provider never started");
    }

    fn settings(&self) -> ProviderSettings {
        ProviderSettings {
            issuer: Some(self.issuer.clone()),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(CLIENT_SECRET.into()),
            ..ProviderSettings::default()
        }
    }

    async fn rotate_keys(&self) {
        let response = reqwest::Client::new()
            .post(format!("{}/test/rotate-keys", self.issuer))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
}

/// Keel with the provider as `keycloak` (the seed's alias route is its callback).
async fn keel(backend: Backend, peer: &OidcPeer) -> TestApp {
    TestApp::spawn_with(backend, |settings| {
        with_passkeys(settings);
        settings.oauth_redirect_allowlist = Some(REDIRECT_URI.into());
        settings.oauth.insert("keycloak".into(), peer.settings());
    })
    .await
}

async fn oauth_client(app: &TestApp) -> OAuthServiceClient<Channel> {
    OAuthServiceClient::new(app.channel().await)
}

/// The browser's part: from the authorization URL, signs in at the provider as `login`
/// (following its redirects with its cookies) until it is sent back to `REDIRECT_URI`;
/// answers the `code` and `state` it brings.
pub async fn sign_in_at_provider(authorization_url: &str, login: &str) -> (String, String) {
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let mut url = Url::parse(authorization_url).unwrap();
    url.query_pairs_mut().append_pair("login_hint", login);
    for _ in 0..10 {
        let response = browser.get(url.clone()).send().await.unwrap();
        let status = response.status();
        let Some(location) = response.headers().get(reqwest::header::LOCATION) else {
            panic!("{status} at {url}: {}", response.text().await.unwrap());
        };
        url = url.join(location.to_str().unwrap()).unwrap();
        if url.as_str().starts_with(REDIRECT_URI) {
            let query = |name: &str| {
                url.query_pairs()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.into_owned())
                    .unwrap_or_else(|| panic!("no {name} in {url}"))
            };
            return (query("code"), query("state"));
        }
    }
    panic!("the provider never sent the browser back");
}

/// A whole sign-in over REST through the seed's Keycloak callback; answers status and body.
async fn rest_sign_in(app: &TestApp, login: &str) -> (StatusCode, Value) {
    let start = app
        .http
        .get(app.url("/api/v1/auth/oauth/keycloak/authorize"))
        .query(&[("redirect_uri", REDIRECT_URI)])
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 200);
    let start: Value = start.json().await.unwrap();
    let (code, state) =
        sign_in_at_provider(start["authorization_url"].as_str().unwrap(), login).await;
    assert_eq!(state, start["state"].as_str().unwrap());
    let finish = app
        .post_json(
            "/api/v1/auth/keycloak/callback",
            json!({ "code": code, "state": state, "redirect_uri": REDIRECT_URI }),
        )
        .await;
    (finish.status(), finish.json().await.unwrap())
}

/// A whole sign-in over gRPC; answers the access token, or the refusal.
async fn grpc_sign_in(app: &TestApp, login: &str) -> Result<String, tonic::Status> {
    let mut client = oauth_client(app).await;
    let start = client
        .start_o_auth(StartOAuthRequest {
            provider: "keycloak".into(),
            redirect_uri: REDIRECT_URI.into(),
        })
        .await?
        .into_inner();
    let (code, state) = sign_in_at_provider(&start.authorization_url, login).await;
    let finished = client
        .finish_o_auth(FinishOAuthRequest {
            provider: "keycloak".into(),
            code,
            state,
            redirect_uri: REDIRECT_URI.into(),
        })
        .await?
        .into_inner();
    Ok(finished.access_token)
}

/// A call without credentials; answers status and JSON body.
pub async fn public(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.http.request(method, app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

pub async fn me(app: &TestApp, access: &str) -> Value {
    let (status, user) = app.rest(Method::GET, "/api/v1/auth/me", access, None).await;
    assert_eq!(status, 200, "{user}");
    user
}

async fn a_provider_identity_signs_in_on_both_doors(backend: Backend) {
    let Some(peer) = OidcPeer::start(3600).await else {
        return;
    };
    let app = keel(backend, &peer).await;

    let providers: Value = app
        .http
        .get(app.url("/api/v1/auth/oauth/providers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        providers["providers"],
        json!([{ "name": "keycloak", "protocol": "oidc" }])
    );

    // The URL asks for a code with PKCE S256 and a nonce, and carries the state.
    let start: Value = app
        .http
        .get(app.url("/api/v1/auth/oauth/keycloak/authorize"))
        .query(&[("redirect_uri", REDIRECT_URI)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = Url::parse(start["authorization_url"].as_str().unwrap()).unwrap();
    let params: std::collections::HashMap<String, String> =
        url.query_pairs().into_owned().collect();
    assert!(url.as_str().starts_with(&peer.issuer), "{url}");
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(params["redirect_uri"], REDIRECT_URI);
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["state"], start["state"].as_str().unwrap());
    assert!(params["scope"].split(' ').any(|scope| scope == "openid"));
    assert!(params["nonce"].len() >= 32 && params["code_challenge"].len() == 43);

    // A new user arrives over REST, through the seed's Keycloak callback, with the address
    // the provider vouches for.
    let (status, tokens) = rest_sign_in(&app, "alice@example.com").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "bearer");
    let alice = me(&app, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(alice["email"], "alice@example.com");
    assert_eq!(alice["email_verified"], true);
    assert_eq!(alice["full_name"], "User alice");

    // The same identity over gRPC signs in to the same account.
    let access = grpc_sign_in(&app, "alice@example.com").await.unwrap();
    assert_eq!(me(&app, &access).await["id"], alice["id"]);

    let identities = oauth_client(&app)
        .await
        .list_identities(with_token(ListIdentitiesRequest {}, &access))
        .await
        .unwrap()
        .into_inner()
        .identities;
    assert_eq!(identities.len(), 1);
    assert_eq!(identities[0].provider, "keycloak");
    assert_eq!(identities[0].subject, "alice@example.com");
    assert_eq!(identities[0].email, "alice@example.com");

    // Alice has no password: her only identity stays.
    let refused = oauth_client(&app)
        .await
        .unlink_identity(with_token(
            UnlinkIdentityRequest {
                identity_id: identities[0].id.clone(),
            },
            &access,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(grpc_reason(&refused), "LAST_SIGN_IN_METHOD");
    let password_login = app
        .post_json(
            "/api/v1/auth/login",
            json!({ "email": "alice@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(password_login.status(), 401);

    // A passkey is a way in too: with one, the identity may go, and then the passkey stays.
    let mut device = Device::new();
    let passkey = register_passkey(&app, &access, &mut device, "Laptop").await;
    let identity_path = format!("/api/v1/auth/identities/{}", identities[0].id);
    let (status, _) = app
        .rest(Method::DELETE, &identity_path, &access, None)
        .await;
    assert_eq!(status, 200);
    let passkey_path = format!("/api/v1/auth/passkeys/{}", passkey["id"].as_str().unwrap());
    let (status, reason) = app
        .status_and_reason(Method::DELETE, &passkey_path, &access, None)
        .await;
    assert_eq!((status, reason.as_str()), (409, "LAST_SIGN_IN_METHOD"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_join_only_proven_accounts_and_link_on_request() {
    let Some(peer) = OidcPeer::start(3600).await else {
        return;
    };
    let app = keel(Backend::Embedded, &peer).await;

    // A verified account gains the identity of its verified address.
    let bob_password = app.verified("bob@example.com").await;
    let bob = me(&app, &bob_password.access).await;
    let (status, tokens) = rest_sign_in(&app, "bob@example.com").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(
        me(&app, tokens["access_token"].as_str().unwrap()).await["id"],
        bob["id"]
    );

    // An unverified account does not: whoever registered it may not own the address.
    let carol = app.signed_in("carol@example.com").await;
    let (status, refusal) = rest_sign_in(&app, "carol@example.com").await;
    assert_eq!(
        (status.as_u16(), refusal["reason"].as_str()),
        (409, Some("LINK_REQUIRED"))
    );

    // Nor is an account made for an address the provider does not vouch for.
    let (status, refusal) = rest_sign_in(&app, "unverified:dave@example.com").await;
    assert_eq!(
        (status.as_u16(), refusal["reason"].as_str()),
        (409, Some("EMAIL_NOT_VERIFIED"))
    );
    app.register("dave@example.com").await;

    // Carol, signed in, links the identity herself; then it signs her in.
    let mut client = oauth_client(&app).await;
    let start = client
        .start_o_auth(StartOAuthRequest {
            provider: "keycloak".into(),
            redirect_uri: REDIRECT_URI.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (code, state) = sign_in_at_provider(&start.authorization_url, "carol@example.com").await;
    let linked = client
        .link_identity(with_token(
            LinkIdentityRequest {
                provider: "keycloak".into(),
                code,
                state,
                redirect_uri: REDIRECT_URI.into(),
            },
            &carol.access,
        ))
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    let carol_user = me(&app, &carol.access).await;
    let access = grpc_sign_in(&app, "carol@example.com").await.unwrap();
    assert_eq!(me(&app, &access).await["id"], carol_user["id"]);

    // The identity is carol's: bob cannot see or unlink it; carol (who has a password) can.
    let path = format!("/api/v1/auth/identities/{}", linked.id);
    let (status, bobs) = app
        .rest(
            Method::GET,
            "/api/v1/auth/identities",
            &bob_password.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(bobs["identities"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        app.status_and_reason(Method::DELETE, &path, &bob_password.access, None)
            .await,
        (404, "IDENTITY_NOT_FOUND".into())
    );
    assert_eq!(
        app.status_and_reason(Method::DELETE, &path, &carol.access, None)
            .await,
        (200, String::new())
    );
    let (_, remaining) = app
        .rest(Method::GET, "/api/v1/auth/identities", &carol.access, None)
        .await;
    assert_eq!(remaining["identities"], json!([]));

    // The refusals are failed sign-ins on the audit record, with their reasons.
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    let failures = crate::audit::wait_for_entries(
        &app,
        &root.access,
        "/api/v1/audit-logs?action=user.login_failed",
        |entries| entries.len() >= 2,
    )
    .await;
    let reasons: Vec<(&str, &str)> = failures
        .iter()
        .map(|entry| {
            (
                entry["details"]["email"].as_str().unwrap_or_default(),
                entry["details"]["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&("carol@example.com", "link_required")),
        "{failures:?}"
    );
    assert!(
        reasons.contains(&("dave@example.com", "email_not_verified")),
        "{failures:?}"
    );

    // With two-factor authentication on, a provider sign-in still needs the second factor.
    enroll(&app, &bob_password.access).await;
    let (status, answer) = rest_sign_in(&app, "bob@example.com").await;
    assert_eq!(status, 200);
    assert_eq!(answer["mfa_required"], true);
    assert_eq!(answer["access_token"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_spent_and_mismatched_callbacks_are_refused() {
    let Some(peer) = OidcPeer::start(60).await else {
        return;
    };
    let app = keel(Backend::Embedded, &peer).await;
    let mut client = oauth_client(&app).await;
    let start = || async {
        oauth_client(&app)
            .await
            .start_o_auth(StartOAuthRequest {
                provider: "keycloak".into(),
                redirect_uri: REDIRECT_URI.into(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let finish = |code: String, state: String, redirect_uri: &str| FinishOAuthRequest {
        provider: "keycloak".into(),
        code,
        state,
        redirect_uri: redirect_uri.into(),
    };
    let refusal = |status: tonic::Status| (status.code(), grpc_reason(&status));

    // A state Keel never issued.
    let forged = client
        .finish_o_auth(finish("code".into(), "forged".into(), REDIRECT_URI))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(forged),
        (Code::InvalidArgument, "INVALID_STATE".into())
    );

    // A state presented with another redirect_uri is spent, and then refused as spent.
    let flow = start().await;
    let (code, state) = sign_in_at_provider(&flow.authorization_url, "erin@example.com").await;
    let elsewhere = client
        .finish_o_auth(finish(
            code.clone(),
            state.clone(),
            "https://evil.example/cb",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(elsewhere),
        (Code::InvalidArgument, "INVALID_STATE".into())
    );
    let spent = client
        .finish_o_auth(finish(code, state, REDIRECT_URI))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(spent),
        (Code::InvalidArgument, "INVALID_STATE".into())
    );

    // A code that is not the provider's.
    let flow = start().await;
    let (code, state) = sign_in_at_provider(&flow.authorization_url, "erin@example.com").await;
    let tampered = client
        .finish_o_auth(finish(format!("{code}x"), state, REDIRECT_URI))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(tampered),
        (Code::Unauthenticated, "PROVIDER_REJECTED".into())
    );

    // An ID token carrying another nonce than the one Keel asked for.
    let flow = start().await;
    let mut url = Url::parse(&flow.authorization_url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .map(|(key, value)| match key.as_str() {
            "nonce" => (key, "a-nonce-keel-never-issued".to_owned()),
            _ => (key, value),
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let (code, state) = sign_in_at_provider(url.as_str(), "erin@example.com").await;
    let wrong_nonce = client
        .finish_o_auth(finish(code, state, REDIRECT_URI))
        .await
        .unwrap_err();
    assert!(wrong_nonce.message().contains("nonce"), "{wrong_nonce:?}");
    assert_eq!(
        refusal(wrong_nonce),
        (Code::Unauthenticated, "PROVIDER_REJECTED".into())
    );

    // An ID token past its expiry (the provider's live 60 s; Keel's clock moves 5 minutes on,
    // still inside the state's 10).
    let flow = start().await;
    let (code, state) = sign_in_at_provider(&flow.authorization_url, "erin@example.com").await;
    app.clock.advance(chrono::Duration::minutes(5));
    let expired = client
        .finish_o_auth(finish(code, state, REDIRECT_URI))
        .await
        .unwrap_err();
    assert!(expired.message().contains("Expired"), "{expired:?}");
    assert_eq!(
        refusal(expired),
        (Code::Unauthenticated, "PROVIDER_REJECTED".into())
    );

    // None of it made an account.
    app.register("erin@example.com").await;

    // Unknown providers, foreign redirect URIs and missing fields.
    let (status, body) = public(
        &app,
        Method::GET,
        &format!("/api/v1/auth/oauth/nope/authorize?redirect_uri={REDIRECT_URI}"),
        None,
    )
    .await;
    assert_eq!(
        (status, &body["reason"]),
        (404, &json!("PROVIDER_NOT_FOUND"))
    );
    let (status, body) = public(
        &app,
        Method::GET,
        "/api/v1/auth/oauth/keycloak/authorize?redirect_uri=https://evil.example/cb",
        None,
    )
    .await;
    assert_eq!(
        (status, &body["reason"]),
        (400, &json!("REDIRECT_URI_NOT_ALLOWED"))
    );
    let (status, body) = public(
        &app,
        Method::POST,
        "/api/v1/auth/oauth/keycloak/callback",
        Some(json!({ "state": "s", "redirect_uri": REDIRECT_URI })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        crate::harness::rest_violations(&body)
            .iter()
            .any(|(field, _, _)| field == "code"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotated_at_the_provider_are_read_again() {
    let Some(peer) = OidcPeer::start(3600).await else {
        return;
    };
    let app = keel(Backend::Embedded, &peer).await;
    let before = grpc_sign_in(&app, "frank@example.com").await.unwrap();
    peer.rotate_keys().await;
    let after = grpc_sign_in(&app, "frank@example.com").await.unwrap();
    assert_eq!(me(&app, &before).await["id"], me(&app, &after).await["id"]);
}

/// A GitHub-shaped OAuth2 server on loopback: `authorize` sends the browser straight back with
/// a code, the token endpoint checks the client and the PKCE verifier (answering refusals with
/// 200 and an `error`, as GitHub does), and the API answers the user and `emails`.
async fn github_fake(emails: Value) -> String {
    use axum::extract::{Form, Query, State};
    use axum::http::HeaderMap;
    use axum::response::Redirect;
    use axum::routing::{get, post};
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    type Challenges = Arc<Mutex<HashMap<String, String>>>;
    const TOKEN: &str = "gho_a-token-only-for-tests";

    async fn authorize(
        State(challenges): State<Challenges>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Redirect {
        assert_eq!(query["client_id"], CLIENT_ID);
        assert_eq!(query["code_challenge_method"], "S256");
        let code = uuid::Uuid::now_v7().simple().to_string();
        challenges
            .lock()
            .unwrap()
            .insert(code.clone(), query["code_challenge"].clone());
        Redirect::to(&format!(
            "{}?code={code}&state={}",
            query["redirect_uri"], query["state"]
        ))
    }

    async fn token(
        State(challenges): State<Challenges>,
        headers: HeaderMap,
        Form(form): Form<HashMap<String, String>>,
    ) -> axum::Json<Value> {
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
        );
        let challenge = challenges.lock().unwrap().remove(&form["code"]);
        let verified = form
            .get("code_verifier")
            .map(|verifier| URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())));
        if headers["authorization"] != basic.as_str()
            || challenge.is_none()
            || challenge != verified
        {
            return axum::Json(json!({ "error": "bad_verification_code" }));
        }
        axum::Json(json!({ "access_token": TOKEN, "token_type": "bearer", "scope": "read:user" }))
    }

    fn authorized(headers: &HeaderMap) -> bool {
        headers["authorization"] == format!("Bearer {TOKEN}").as_str()
    }

    let challenges: Challenges = Arc::default();
    let router = axum::Router::new()
        .route("/login/oauth/authorize", get(authorize))
        .route("/login/oauth/access_token", post(token))
        .route(
            "/user",
            get(|headers: HeaderMap| async move {
                assert!(authorized(&headers));
                axum::Json(json!({ "id": 4242, "login": "octocat", "name": "Octo Cat" }))
            }),
        )
        .route(
            "/user/emails",
            get(move |headers: HeaderMap| async move {
                assert!(authorized(&headers));
                axum::Json(emails)
            }),
        )
        .with_state(challenges);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// Keel with GitHub pointed at a fake answering `emails`; a whole sign-in over REST.
async fn github_sign_in(emails: Value) -> (TestApp, u16, Value) {
    let fake = github_fake(emails).await;
    let app = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.oauth_redirect_allowlist = Some(REDIRECT_URI.into());
        settings.oauth.insert(
            "github".into(),
            ProviderSettings {
                client_id: Some(CLIENT_ID.into()),
                client_secret: Some(CLIENT_SECRET.into()),
                url: Some(fake.clone()),
                api_url: Some(fake),
                ..ProviderSettings::default()
            },
        );
    })
    .await;
    let (status, start) = public(
        &app,
        Method::GET,
        &format!("/api/v1/auth/oauth/github/authorize?redirect_uri={REDIRECT_URI}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{start}");
    let (code, state) =
        sign_in_at_provider(start["authorization_url"].as_str().unwrap(), "ignored").await;
    let (status, answer) = public(
        &app,
        Method::POST,
        "/api/v1/auth/oauth/github/callback",
        Some(json!({ "code": code, "state": state, "redirect_uri": REDIRECT_URI })),
    )
    .await;
    (app, status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_signs_in_with_the_primary_verified_address() {
    let (app, status, tokens) = github_sign_in(json!([
        { "email": "old@example.com", "primary": false, "verified": true },
        { "email": "octo@example.com", "primary": true, "verified": true },
    ]))
    .await;
    assert_eq!(status, 200, "{tokens}");
    let user = me(&app, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(user["email"], "octo@example.com");
    assert_eq!(user["full_name"], "Octo Cat");
    let (_, identities) = app
        .rest(
            Method::GET,
            "/api/v1/auth/identities",
            tokens["access_token"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(identities["identities"][0]["subject"], "4242");
    assert_eq!(identities["identities"][0]["provider"], "github");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_without_a_verified_primary_address_makes_no_account() {
    let (app, status, refusal) = github_sign_in(json!([
        { "email": "octo@example.com", "primary": true, "verified": false },
    ]))
    .await;
    assert_eq!(
        (status, &refusal["reason"]),
        (409, &json!("EMAIL_NOT_VERIFIED"))
    );
    app.register("octo@example.com").await;
}
