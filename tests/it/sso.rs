//! Enterprise single sign-on: an organization's own OpenID Connect provider (the real
//! `oidc-provider` of `oauth.rs`), its approved domains, sign-in with just-in-time membership,
//! and enforcement.

use crate::audit::wait_for_entries;
use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, TestApp, tool};
use crate::invitations::verified_user;
use crate::oauth::{
    CLIENT_ID, CLIENT_SECRET, OidcPeer, REDIRECT_URI, me, public, sign_in_at_provider,
};
use crate::organizations::create_organization;
use crate::totp::enroll;
use reqwest::Method;
use serde_json::{Value, json};

backend_tests!(an_organization_signs_its_people_in_through_its_provider);

/// A whole sign-in through `provider` over REST; answers status and body.
async fn sign_in(app: &TestApp, provider: &str, login: &str) -> (u16, Value) {
    let (status, start) = public(
        app,
        Method::GET,
        &format!("/api/v1/auth/oauth/{provider}/authorize?redirect_uri={REDIRECT_URI}"),
        None,
    )
    .await;
    if status != 200 {
        return (status, start);
    }
    let (code, state) =
        sign_in_at_provider(start["authorization_url"].as_str().unwrap(), login).await;
    public(
        app,
        Method::POST,
        &format!("/api/v1/auth/oauth/{provider}/callback"),
        Some(json!({ "code": code, "state": state, "redirect_uri": REDIRECT_URI })),
    )
    .await
}

async fn discover(app: &TestApp, email: &str) -> Value {
    let (status, answer) = public(
        app,
        Method::POST,
        "/api/v1/auth/sso/discover",
        Some(json!({ "email": email })),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn an_organization_signs_its_people_in_through_its_provider(backend: Backend) {
    let Some(peer) = OidcPeer::start(3600).await else {
        return;
    };
    let app = TestApp::spawn_with(backend, |settings| {
        settings.oauth_redirect_allowlist = Some(REDIRECT_URI.into());
        settings.sso_allow_private_issuers = Some("true".into());
    })
    .await;
    let (_, alice) = verified_user(&app, "alice@acme.example").await;
    let org = create_organization(&app, &alice.access, "acme").await;
    let sso = format!("/api/v1/organizations/{org}/sso");
    let connection = json!({
        "issuer": peer.issuer,
        "client_id": CLIENT_ID,
        "scopes": ["email", "profile", "groups"],
        "default_role": "viewer",
        "role_mappings": [{ "group": "admins", "role": "admin" }],
    });

    // A new connection needs its secret; the answer never carries it.
    assert_eq!(
        app.status_and_reason(Method::PUT, &sso, &alice.access, Some(connection.clone()))
            .await,
        (409, "CLIENT_SECRET_REQUIRED".into())
    );
    let mut with_secret = connection.clone();
    with_secret["client_secret"] = json!(CLIENT_SECRET);
    let (status, set) = app
        .rest(Method::PUT, &sso, &alice.access, Some(with_secret))
        .await;
    assert_eq!(status, 200, "{set}");
    let provider = format!("sso-{org}");
    assert_eq!(set["provider"], json!(provider));
    assert_eq!(set["groups_claim"], "groups");
    assert_eq!(
        set["role_mappings"],
        json!([{ "group": "admins", "role": "admin" }])
    );
    assert!(set.get("client_secret").is_none(), "{set}");
    let (_, got) = app.rest(Method::GET, &sso, &alice.access, None).await;
    assert_eq!(got, set);

    // A claimed domain does nothing until a superuser approves it.
    let domains = format!("{sso}/domains");
    let (status, claimed) = app
        .rest(
            Method::POST,
            &domains,
            &alice.access,
            Some(json!({ "domain": "ACME.example" })),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &claimed["domain"], &claimed["approved"]),
        (201, &json!("acme.example"), &json!(false))
    );
    assert_eq!(discover(&app, "bob@acme.example").await["sso"], false);
    let approve = "/api/v1/admin/sso/domains/acme.example/approve";
    assert_eq!(
        app.status_and_reason(Method::POST, approve, &alice.access, Some(json!({})))
            .await
            .0,
        403
    );
    app.create_superuser("root@keel.example").await;
    let root = app.login("root@keel.example").await;
    let (status, approved) = app
        .rest(Method::POST, approve, &root.access, Some(json!({})))
        .await;
    assert_eq!(
        (status.as_u16(), &approved["approved"]),
        (200, &json!(true)),
        "{approved}"
    );

    // Another organization cannot claim it again.
    let other = create_organization(&app, &alice.access, "other").await;
    assert_eq!(
        app.status_and_reason(
            Method::POST,
            &format!("/api/v1/organizations/{other}/sso/domains"),
            &alice.access,
            Some(json!({ "domain": "acme.example" }))
        )
        .await,
        (409, "DOMAIN_TAKEN".into())
    );

    assert_eq!(
        discover(&app, "Bob@ACME.example").await,
        json!({ "sso": true, "provider": provider, "organization_name": "Org acme", "enforced": false })
    );
    assert_eq!(discover(&app, "bob@elsewhere.example").await["sso"], false);

    // Bob arrives through Acme's provider and joins Acme with the default role.
    let (status, tokens) = sign_in(&app, &provider, "bob@acme.example").await;
    assert_eq!(status, 200, "{tokens}");
    let bob_access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(me(&app, &bob_access).await["email"], "bob@acme.example");
    let (_, memberships) = app
        .rest(Method::GET, "/api/v1/organizations", &bob_access, None)
        .await;
    assert_eq!(
        memberships["memberships"][0]["organization"]["id"],
        json!(org)
    );
    assert_eq!(memberships["memberships"][0]["roles"], json!(["viewer"]));

    // The provider's groups decide the roles of those it maps.
    let (status, tokens) = sign_in(&app, &provider, "admin.dana@acme.example").await;
    assert_eq!(status, 200, "{tokens}");
    let (_, memberships) = app
        .rest(
            Method::GET,
            "/api/v1/organizations",
            tokens["access_token"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(memberships["memberships"][0]["roles"], json!(["admin"]));

    // A second factor is still asked after the provider's sign-in, unless the organization
    // trusts its provider for it.
    let (_, erin) = verified_user(&app, "erin@acme.example").await;
    enroll(&app, &erin.access).await;
    let (status, answer) = sign_in(&app, &provider, "erin@acme.example").await;
    assert_eq!(
        (status, &answer["mfa_required"]),
        (200, &json!(true)),
        "{answer}"
    );
    let mut trusted = connection.clone();
    trusted["trust_mfa"] = json!(true);
    let (status, _) = app
        .rest(Method::PUT, &sso, &alice.access, Some(trusted))
        .await;
    assert_eq!(status, 200);
    let (status, answer) = sign_in(&app, &provider, "erin@acme.example").await;
    assert_eq!(
        (status, &answer["mfa_required"]),
        (200, &json!(false)),
        "{answer}"
    );
    assert_ne!(answer["access_token"], "");

    // On its approved domains, Acme's provider vouches for addresses itself, even when it
    // does not say `email_verified` (as Entra ID never does).
    let (status, tokens) = sign_in(&app, &provider, "unverified:frank@acme.example").await;
    assert_eq!(status, 200, "{tokens}");
    let frank = me(&app, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(
        (&frank["email"], &frank["email_verified"]),
        (&json!("frank@acme.example"), &json!(true))
    );

    // Acme's provider speaks for Acme's domains only.
    let (status, refusal) = sign_in(&app, &provider, "eve@elsewhere.example").await;
    assert_eq!(
        (status, &refusal["reason"]),
        (409, &json!("DOMAIN_NOT_APPROVED"))
    );
    app.register("eve@elsewhere.example").await;

    // Enforced, Acme's people sign in through it only; the stored secret stays.
    app.register("carol@acme.example").await;
    let mut enforced = connection.clone();
    enforced["enforce"] = json!(true);
    let (status, set) = app
        .rest(Method::PUT, &sso, &alice.access, Some(enforced))
        .await;
    assert_eq!(
        (status.as_u16(), &set["enforce"]),
        (200, &json!(true)),
        "{set}"
    );
    assert_eq!(discover(&app, "carol@acme.example").await["enforced"], true);
    let (status, refusal) = public(
        &app,
        Method::POST,
        "/api/v1/auth/login",
        Some(json!({ "email": "carol@acme.example", "password": PASSWORD })),
    )
    .await;
    assert_eq!((status, &refusal["reason"]), (409, &json!("SSO_REQUIRED")));
    let (status, _) = sign_in(&app, &provider, "bob@acme.example").await;
    assert_eq!(status, 200);

    // Without the connection, the provider is gone and passwords work again.
    assert_eq!(
        app.status_and_reason(Method::DELETE, &sso, &alice.access, None)
            .await,
        (200, String::new())
    );
    let (status, refusal) = sign_in(&app, &provider, "bob@acme.example").await;
    assert_eq!(
        (status, &refusal["reason"]),
        (404, &json!("PROVIDER_NOT_FOUND"))
    );
    assert_eq!(discover(&app, "carol@acme.example").await["sso"], false);
    app.login("carol@acme.example").await;

    // Each change is on the organization's record, with who made it.
    let wanted = [
        "sso.connection_set",
        "sso.domain_claimed",
        "sso.domain_approved",
        "sso.connection_deleted",
        "member.added",
    ];
    wait_for_entries(
        &app,
        &alice.access,
        &format!("/api/v1/organizations/{org}/audit-logs?page_size=100"),
        |entries| {
            wanted
                .iter()
                .all(|action| entries.iter().any(|entry| entry["action"] == *action))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organization_providers_on_private_addresses_are_refused() {
    let Some(peer) = OidcPeer::start(3600).await else {
        return;
    };
    let app = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.oauth_redirect_allowlist = Some(REDIRECT_URI.into());
    })
    .await;
    let (_, alice) = verified_user(&app, "alice@acme.example").await;
    let org = create_organization(&app, &alice.access, "acme").await;
    // A name resolving to loopback as well as a loopback literal.
    let localhost = peer.issuer.replace("127.0.0.1", "localhost");
    for issuer in [peer.issuer.clone(), localhost] {
        let (status, _) = app
            .rest(
                Method::PUT,
                &format!("/api/v1/organizations/{org}/sso"),
                &alice.access,
                Some(json!({ "issuer": issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET })),
            )
            .await;
        assert_eq!(status, 200);
        let (status, refusal) = sign_in(&app, &format!("sso-{org}"), "bob@acme.example").await;
        assert_eq!(
            (status, &refusal["reason"]),
            (503, &json!("PROVIDER_UNAVAILABLE")),
            "{issuer}"
        );
    }
}

/// dnslib's zone resolver (PyPI) on loopback, answering `zone`; killed with the test.
struct DnsServer {
    _process: tokio::process::Child,
    _zone: tempfile::NamedTempFile,
}

async fn dns_server(venv: &std::path::Path, port: u16, zone: &str) -> DnsServer {
    use tokio::io::AsyncBufReadExt;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), zone).unwrap();
    let mut process = tokio::process::Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "dnslib.zoneresolver",
            "--address",
            "127.0.0.1",
            "--port",
        ])
        .arg(port.to_string())
        .arg("--zone")
        .arg(file.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs dnslib");
    let stdout = process.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let started = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("the DNS server starts within 20 s")
        .unwrap()
        .expect("the DNS server starts");
    assert!(started.starts_with("Starting Zone Resolver"), "{started}");
    // It logs every query; a closed pipe would end it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    DnsServer {
        _process: process,
        _zone: file,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_txt_record_proves_a_domain() {
    let Some(venv) = tool("KEEL_TEST_PYTHON_VENV", "Python virtualenv") else {
        return;
    };
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.dns_nameserver = Some(format!("127.0.0.1:{port}"));
    })
    .await;
    let (_, alice) = verified_user(&app, "alice@acme.example").await;
    let org = create_organization(&app, &alice.access, "acme").await;
    let domains = format!("/api/v1/organizations/{org}/sso/domains");
    let mut records = Vec::new();
    for domain in ["acme.example", "beta.example"] {
        let (status, claim) = app
            .rest(
                Method::POST,
                &domains,
                &alice.access,
                Some(json!({ "domain": domain })),
            )
            .await;
        assert_eq!(status, 201, "{claim}");
        assert_eq!(
            claim["verification_record_name"],
            format!("_keel-challenge.{domain}")
        );
        records.push(
            claim["verification_record_text"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(records[0].starts_with("keel-verification="));
    // acme.example publishes its record; beta.example publishes another claim's.
    let zone = format!(
        "_keel-challenge.acme.example. 60 IN TXT \"{}\"\n\
         _keel-challenge.beta.example. 60 IN TXT \"keel-verification=someone-else\"\n",
        records[0]
    );
    let _dns = dns_server(&venv, port, &zone).await;

    let (status, verified) = app
        .rest(
            Method::POST,
            &format!("{domains}/acme.example/verify"),
            &alice.access,
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &verified["approved"]),
        (200, &json!(true)),
        "{verified}"
    );
    assert_eq!(
        app.status_and_reason(
            Method::POST,
            &format!("{domains}/beta.example/verify"),
            &alice.access,
            Some(json!({}))
        )
        .await,
        (409, "DOMAIN_NOT_VERIFIED".into())
    );
    let (_, listed) = app.rest(Method::GET, &domains, &alice.access, None).await;
    let approved: Vec<(&str, bool)> = listed["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|domain| {
            (
                domain["domain"].as_str().unwrap(),
                domain["approved"] == true,
            )
        })
        .collect();
    assert_eq!(approved, [("acme.example", true), ("beta.example", false)]);
}
