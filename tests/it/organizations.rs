//! Organizations and members: the creator owns it, members get what their roles allow and
//! outsiders learn nothing, role changes apply on the next request, an organization always
//! keeps an owner, lists page with signed tokens, and API keys can be bound to one
//! organization.

use crate::backend_tests;
use crate::harness::{Backend, TestApp, Tokens, grpc_reason, with_token};
use keel::api::pb::keel::organization::v1::organization_service_client::OrganizationServiceClient;
use keel::api::pb::keel::organization::v1::*;
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

backend_tests!(
    organizations_are_created_listed_updated_and_deleted,
    members_get_what_their_roles_allow,
    an_organization_always_keeps_an_owner,
    lists_are_paginated_with_signed_tokens,
    the_organization_can_come_from_a_header,
    api_keys_can_be_bound_to_one_organization,
);

/// Creates an organization over REST and answers its id.
pub async fn create_organization(app: &TestApp, token: &str, slug: &str) -> String {
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/v1/organizations",
            token,
            Some(json!({ "name": format!("Org {slug}"), "slug": slug })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Registers and signs in `email`; answers the user id and tokens.
pub async fn user(app: &TestApp, email: &str) -> (String, Tokens) {
    let registered = app.register(email).await;
    let tokens = app.login(email).await;
    (registered["id"].as_str().unwrap().to_owned(), tokens)
}

/// An organization (`slug`) of a verified owner with a verified viewer, `owner@example.com`
/// and `viewer@example.com`; answers its id and their tokens.
pub async fn with_viewer(app: &TestApp, slug: &str) -> (String, Tokens, Tokens) {
    let (_, owner) = crate::invitations::verified_user(app, "owner@example.com").await;
    let (viewer_id, viewer) = crate::invitations::verified_user(app, "viewer@example.com").await;
    let organization_id = create_organization(app, &owner.access, slug).await;
    add_member(
        app,
        &owner.access,
        &organization_id,
        &viewer_id,
        json!(["viewer"]),
    )
    .await;
    (organization_id, owner, viewer)
}

pub async fn add_member(
    app: &TestApp,
    token: &str,
    organization_id: &str,
    user_id: &str,
    roles: Value,
) {
    let (status, body) = app
        .rest(
            Method::POST,
            &format!("/api/v1/organizations/{organization_id}/members"),
            token,
            Some(json!({ "user_id": user_id, "roles": roles })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn client(app: &TestApp) -> OrganizationServiceClient<Channel> {
    OrganizationServiceClient::new(app.channel().await)
}

fn get_request(organization_id: &str, token: &str) -> tonic::Request<GetOrganizationRequest> {
    with_token(
        GetOrganizationRequest {
            organization_id: organization_id.to_owned(),
        },
        token,
    )
}

async fn organizations_are_created_listed_updated_and_deleted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = crate::invitations::verified_user(&app, "alice@example.com").await;
    let (bob_id, bob) = user(&app, "bob@example.com").await;

    let (status, created) = app
        .rest(
            Method::POST,
            "/api/v1/organizations",
            &alice.access,
            Some(json!({ "name": "Acme", "slug": "acme", "settings": { "plan": "pro", "seats": 3 } })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["slug"], "acme");
    assert_eq!(created["settings"], json!({ "plan": "pro", "seats": 3 }));
    let id = created["id"].as_str().unwrap().to_owned();

    let (status, taken) = app
        .rest(
            Method::POST,
            "/api/v1/organizations",
            &bob.access,
            Some(json!({ "name": "Other", "slug": "acme" })),
        )
        .await;
    assert_eq!(
        (status.as_u16(), taken["reason"].as_str()),
        (409, Some("SLUG_TAKEN"))
    );
    let (status, invalid) = app
        .rest(
            Method::POST,
            "/api/v1/organizations",
            &bob.access,
            Some(json!({ "name": " ", "slug": "Not A Slug" })),
        )
        .await;
    assert_eq!(status, 400);
    let message = invalid["message"].as_str().unwrap();
    assert!(
        message.contains("name") && message.contains("slug"),
        "{message}"
    );

    let (status, listed) = app
        .rest(Method::GET, "/api/v1/organizations", &alice.access, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["memberships"][0]["organization"]["id"], id.as_str());
    assert_eq!(listed["memberships"][0]["roles"], json!(["owner"]));

    let path = format!("/api/v1/organizations/{id}");
    let (status, updated) = app
        .rest(
            Method::PUT,
            &path,
            &alice.access,
            Some(json!({ "slug": "acme-inc", "settings": { "plan": "team" } })),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (&updated["name"], &updated["slug"], &updated["settings"]),
        (
            &json!("Acme"),
            &json!("acme-inc"),
            &json!({ "plan": "team" })
        )
    );

    // Outsiders cannot tell an existing organization from a missing one; an id that is no
    // UUID is refused as such, whoever asks.
    let (status, body) = app
        .rest(Method::GET, "/api/v1/organizations/xyz", &bob.access, None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["details"][1]["field_violations"][0]["reason"],
        "string.uuid"
    );
    for probe in [
        path.clone(),
        format!("/api/v1/organizations/{}", uuid::Uuid::now_v7()),
    ] {
        let (status, body) = app.rest(Method::GET, &probe, &bob.access, None).await;
        assert_eq!(
            (status.as_u16(), body["reason"].as_str()),
            (404, Some("ORGANIZATION_NOT_FOUND")),
            "{probe}"
        );
    }
    let (status, _) = app.rest(Method::DELETE, &path, &bob.access, None).await;
    assert_eq!(status, 404);

    // Deleting takes memberships, teams and bound keys with it; the users remain.
    add_member(&app, &alice.access, &id, &bob_id, json!(["admin"])).await;
    let (status, key) = app
        .rest(
            Method::POST,
            "/api/v1/api-keys",
            &alice.access,
            Some(json!({ "name": "acme bot", "scopes": ["organization:read"], "organization_id": id })),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();
    let (status, team) = app
        .rest(
            Method::POST,
            "/api/v1/teams",
            &alice.access,
            Some(json!({ "organization_id": id, "name": "Core", "slug": "core" })),
        )
        .await;
    assert_eq!(status, 201, "{team}");
    let team_path = format!("/api/v1/teams/{}", team["id"].as_str().unwrap());
    let read_with_key = || {
        app.http
            .get(app.url(&path))
            .header("x-api-key", &key)
            .send()
    };
    assert_eq!(read_with_key().await.unwrap().status(), 200);
    let (status, body) = app.rest(Method::DELETE, &path, &bob.access, None).await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (403, Some("PERMISSION_DENIED")),
        "admins do not delete"
    );
    let (status, _) = app.rest(Method::DELETE, &path, &alice.access, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        app.rest(Method::GET, &path, &alice.access, None).await.0,
        404
    );
    for tokens in [&alice, &bob] {
        let (_, listed) = app
            .rest(Method::GET, "/api/v1/organizations", &tokens.access, None)
            .await;
        assert_eq!(listed["memberships"], json!([]));
    }
    assert_eq!(read_with_key().await.unwrap().status(), 401);
    assert_eq!(
        app.rest(Method::GET, &team_path, &alice.access, None)
            .await
            .0,
        404
    );
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &bob.access)
            .await
            .status(),
        200
    );
}

async fn members_get_what_their_roles_allow(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, alice) = user(&app, "alice@example.com").await;
    let (bob_id, bob) = user(&app, "bob@example.com").await;
    let (carol_id, carol) = user(&app, "carol@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    let mut grpc = client(&app).await;
    let add = |user_id: &str, roles: &[&str], token: &str| {
        with_token(
            AddMemberRequest {
                organization_id: organization_id.clone(),
                user_id: user_id.to_owned(),
                roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            },
            token,
        )
    };
    let update = |user_id: &str, roles: &[&str], token: &str| {
        with_token(
            UpdateMemberRequest {
                organization_id: organization_id.clone(),
                user_id: user_id.to_owned(),
                roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            },
            token,
        )
    };

    let added = grpc
        .add_member(add(&bob_id, &["viewer"], &alice.access))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(
        (added.email.as_str(), added.roles.clone()),
        ("bob@example.com", vec!["viewer".to_owned()])
    );

    // A viewer reads but does not write; an outsider finds nothing.
    grpc.get_organization(get_request(&organization_id, &bob.access))
        .await
        .unwrap();
    let members = grpc
        .list_members(with_token(
            ListMembersRequest {
                organization_id: organization_id.clone(),
                ..Default::default()
            },
            &bob.access,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.total_size, 2);
    let denied = grpc
        .update_organization(with_token(
            UpdateOrganizationRequest {
                organization_id: organization_id.clone(),
                name: Some("Mine now".into()),
                ..Default::default()
            },
            &bob.access,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (denied.code(), grpc_reason(&denied).as_str()),
        (Code::PermissionDenied, "PERMISSION_DENIED")
    );
    let denied = grpc
        .add_member(add(&carol_id, &[], &bob.access))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let hidden = grpc
        .get_organization(get_request(&organization_id, &carol.access))
        .await
        .unwrap_err();
    assert_eq!(
        (hidden.code(), grpc_reason(&hidden).as_str()),
        (Code::NotFound, "ORGANIZATION_NOT_FOUND")
    );

    // Promotion applies on the next request.
    grpc.update_member(update(&bob_id, &["admin"], &alice.access))
        .await
        .unwrap();
    let carol_member = grpc
        .add_member(add(&carol_id, &[], &bob.access))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(carol_member.roles, vec!["member".to_owned()]);
    grpc.get_organization(get_request(&organization_id, &carol.access))
        .await
        .unwrap();

    // Nobody grants or touches more than they hold.
    for request in [
        update(&carol_id, &["owner"], &bob.access),
        update(&alice_id, &["viewer"], &bob.access),
    ] {
        let escalation = grpc.update_member(request).await.unwrap_err();
        assert_eq!(
            (escalation.code(), grpc_reason(&escalation).as_str()),
            (Code::PermissionDenied, "ROLE_ESCALATION")
        );
    }
    let twice = grpc
        .add_member(add(&carol_id, &[], &alice.access))
        .await
        .unwrap_err();
    assert_eq!(
        (twice.code(), grpc_reason(&twice).as_str()),
        (Code::AlreadyExists, "ALREADY_MEMBER")
    );
    let unknown = grpc
        .update_member(update(&carol_id, &["wizard"], &alice.access))
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), grpc_reason(&unknown).as_str()),
        (Code::NotFound, "ROLE_NOT_FOUND")
    );
    assert!(
        unknown.message().contains("wizard"),
        "{}",
        unknown.message()
    );
    let nobody = grpc
        .add_member(add(&uuid::Uuid::now_v7().to_string(), &[], &alice.access))
        .await
        .unwrap_err();
    assert_eq!(
        (nobody.code(), grpc_reason(&nobody).as_str()),
        (Code::NotFound, "USER_NOT_FOUND")
    );

    // Removal applies on the next request, on gRPC and REST.
    grpc.remove_member(with_token(
        RemoveMemberRequest {
            organization_id: organization_id.clone(),
            user_id: carol_id.clone(),
        },
        &bob.access,
    ))
    .await
    .unwrap();
    let gone = grpc
        .get_organization(get_request(&organization_id, &carol.access))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/organizations/{organization_id}/members/{bob_id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .rest(
            Method::GET,
            &format!("/api/v1/organizations/{organization_id}"),
            &bob.access,
            None,
        )
        .await;
    assert_eq!(status, 404);
}

async fn an_organization_always_keeps_an_owner(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, alice) = user(&app, "alice@example.com").await;
    let (bob_id, bob) = user(&app, "bob@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    let base = format!("/api/v1/organizations/{organization_id}");

    let attempts = [
        (Method::POST, format!("{base}/leave"), None),
        (
            Method::PUT,
            format!("{base}/members/{alice_id}"),
            Some(json!({ "roles": ["admin"] })),
        ),
        (Method::DELETE, format!("{base}/members/{alice_id}"), None),
    ];
    for (method, path, body) in attempts {
        let (status, answer) = app.rest(method, &path, &alice.access, body).await;
        assert_eq!(
            (status.as_u16(), answer["reason"].as_str()),
            (409, Some("LAST_OWNER")),
            "{path}"
        );
    }

    add_member(
        &app,
        &alice.access,
        &organization_id,
        &bob_id,
        json!(["member"]),
    )
    .await;
    let (status, body) = app
        .rest(
            Method::POST,
            &format!("{base}/transfer-ownership"),
            &bob.access,
            Some(json!({ "user_id": bob_id })),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = app
        .rest(
            Method::POST,
            &format!("{base}/transfer-ownership"),
            &alice.access,
            Some(json!({ "user_id": bob_id })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, alice_member) = app
        .rest(
            Method::GET,
            &format!("{base}/members/{alice_id}"),
            &bob.access,
            None,
        )
        .await;
    let (_, bob_member) = app
        .rest(
            Method::GET,
            &format!("{base}/members/{bob_id}"),
            &bob.access,
            None,
        )
        .await;
    assert_eq!(
        (&alice_member["roles"], &bob_member["roles"]),
        (&json!(["admin"]), &json!(["owner"]))
    );
    assert_eq!(
        app.rest(Method::DELETE, &base, &alice.access, None).await.0,
        403
    );

    let (status, _) = app
        .rest(Method::POST, &format!("{base}/leave"), &alice.access, None)
        .await;
    assert_eq!(status, 200);
    let (_, members) = app
        .rest(Method::GET, &format!("{base}/members"), &bob.access, None)
        .await;
    assert_eq!(members["total_size"], 1);
    assert_eq!(
        app.rest(Method::DELETE, &base, &bob.access, None).await.0,
        200
    );
}

async fn lists_are_paginated_with_signed_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let (bob_id, bob) = user(&app, "bob@example.com").await;
    let mut created = Vec::new();
    for slug in ["one", "two", "three"] {
        created.push(create_organization(&app, &alice.access, slug).await);
    }

    let (_, first) = app
        .rest(
            Method::GET,
            "/api/v1/organizations?page_size=2",
            &alice.access,
            None,
        )
        .await;
    let token = first["next_page_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let (_, second) = app
        .rest(
            Method::GET,
            &format!("/api/v1/organizations?page_size=2&page_token={token}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(second["next_page_token"], "");
    let ids: Vec<&str> = first["memberships"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["memberships"].as_array().unwrap())
        .map(|membership| membership["organization"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, created.iter().map(String::as_str).collect::<Vec<_>>());

    // A token is bound to its list: tampered or carried to another user's list, it is refused.
    let mut tampered = token.clone().into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (caller, candidate) in [
        (&alice, tampered.as_str()),
        (&bob, token.as_str()),
        (&alice, "%%%"),
    ] {
        let (status, body) = app
            .rest(
                Method::GET,
                &format!("/api/v1/organizations?page_token={candidate}"),
                &caller.access,
                None,
            )
            .await;
        assert_eq!(
            (status.as_u16(), body["reason"].as_str()),
            (400, Some("INVALID_PAGE_TOKEN")),
            "{candidate}"
        );
    }

    add_member(&app, &alice.access, &created[0], &bob_id, json!([])).await;
    let members_path = format!("/api/v1/organizations/{}/members", created[0]);
    let (_, page) = app
        .rest(
            Method::GET,
            &format!("{members_path}?page_size=1"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(
        (
            page["members"].as_array().unwrap().len(),
            &page["total_size"]
        ),
        (1, &json!(2))
    );
    let token = page["next_page_token"].as_str().unwrap();
    let (_, rest) = app
        .rest(
            Method::GET,
            &format!("{members_path}?page_size=1&page_token={token}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(rest["members"].as_array().unwrap().len(), 1);
    assert_ne!(rest["members"][0]["user_id"], page["members"][0]["user_id"]);
}

async fn the_organization_can_come_from_a_header(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let acme = create_organization(&app, &alice.access, "acme").await;
    let globex = create_organization(&app, &alice.access, "globex").await;
    let mut grpc = client(&app).await;
    let with_header = |named: &str, header: Option<&str>| {
        let mut request = get_request(named, &alice.access);
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("x-organization-id", header.parse().unwrap());
        }
        request
    };

    let found = grpc
        .get_organization(with_header("", Some(&acme)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.organization.unwrap().id, acme);
    let mismatch = grpc
        .get_organization(with_header(&globex, Some(&acme)))
        .await
        .unwrap_err();
    assert_eq!(
        (mismatch.code(), grpc_reason(&mismatch).as_str()),
        (Code::InvalidArgument, "ORGANIZATION_MISMATCH")
    );
    let missing = grpc
        .get_organization(with_header("", None))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(
        missing.message().contains("organization_id"),
        "{}",
        missing.message()
    );
    // The same id in another spelling is the same organization; a header that is no id is
    // refused as such.
    grpc.get_organization(with_header(&globex.to_uppercase(), Some(&globex)))
        .await
        .unwrap();
    let malformed = grpc
        .get_organization(with_header("", Some("acme")))
        .await
        .unwrap_err();
    assert_eq!(
        crate::harness::grpc_violations(&malformed)[0].0,
        "x-organization-id"
    );

    // The same check on the gRPC-web door (what browsers speak).
    let (transport, origin) = app.grpc_web_transport();
    let mut web = OrganizationServiceClient::with_origin(transport, origin);
    let found = web
        .get_organization(with_header("", Some(&acme)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.organization.unwrap().slug, "acme");
    let (_, bob) = user(&app, "bob@example.com").await;
    let hidden = web
        .get_organization(get_request(&globex, &bob.access))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
}

async fn api_keys_can_be_bound_to_one_organization(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = crate::invitations::verified_user(&app, "alice@example.com").await;
    let (_, bob) = crate::invitations::verified_user(&app, "bob@example.com").await;
    let acme = create_organization(&app, &alice.access, "acme").await;
    let globex = create_organization(&app, &alice.access, "globex").await;
    let create_key = |token: String, body: Value| {
        let app = &app;
        async move {
            app.rest(Method::POST, "/api/v1/api-keys", &token, Some(body))
                .await
        }
    };
    let with_key = |method: Method, path: String, key: String| {
        let app = &app;
        async move {
            let mut request = app.http.request(method.clone(), app.url(&path));
            if method == Method::PUT {
                request = request.json(&json!({ "name": "Renamed" }));
            }
            let response = request.header("x-api-key", key).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (
                status,
                body["reason"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };

    let (status, bound) = create_key(
        alice.access.clone(),
        json!({ "name": "acme reader", "scopes": ["organization:read"], "organization_id": acme }),
    )
    .await;
    assert_eq!(status, 201, "{bound}");
    assert_eq!(bound["api_key"]["organization_id"], acme.as_str());
    let bound = bound["key"].as_str().unwrap().to_owned();
    let acme_path = format!("/api/v1/organizations/{acme}");
    let globex_path = format!("/api/v1/organizations/{globex}");
    assert_eq!(
        with_key(Method::GET, acme_path.clone(), bound.clone())
            .await
            .0,
        200
    );
    assert_eq!(
        with_key(Method::GET, globex_path.clone(), bound.clone()).await,
        (404, "ORGANIZATION_NOT_FOUND".into())
    );
    assert_eq!(
        with_key(Method::PUT, acme_path.clone(), bound.clone()).await,
        (403, "SCOPE_MISSING".into())
    );
    let response = app
        .http
        .get(app.url("/api/v1/organizations"))
        .header("x-api-key", &bound)
        .send()
        .await
        .unwrap();
    let listed: Value = response.json().await.unwrap();
    assert_eq!(listed["memberships"].as_array().unwrap().len(), 1);
    assert_eq!(
        listed["memberships"][0]["organization"]["id"],
        acme.as_str()
    );

    // An unbound key acts wherever its owner may, within its scopes.
    let (_, unbound) = create_key(
        alice.access.clone(),
        json!({ "name": "reader", "scopes": ["organization:read"] }),
    )
    .await;
    let unbound = unbound["key"].as_str().unwrap().to_owned();
    assert_eq!(
        with_key(Method::GET, globex_path.clone(), unbound.clone())
            .await
            .0,
        200
    );
    let (_, unscoped) = create_key(alice.access.clone(), json!({ "name": "nothing" })).await;
    let unscoped = unscoped["key"].as_str().unwrap().to_owned();
    assert_eq!(
        with_key(Method::GET, acme_path.clone(), unscoped).await,
        (403, "SCOPE_MISSING".into())
    );

    // Binding needs a place in the organization.
    let (status, body) = create_key(
        bob.access.clone(),
        json!({ "name": "intruder", "organization_id": acme }),
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (404, Some("ORGANIZATION_NOT_FOUND"))
    );
}
