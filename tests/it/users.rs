//! The user directory and account administration: users see themselves and the people they
//! share an organization with; superusers list, delete and promote, with effect on the next
//! request.

use crate::backend_tests;
use crate::harness::{Backend, TestApp, grpc_reason, with_token};
use crate::organizations::{add_member, create_organization, user};
use keel::api::pb::keel::user::v1::GetUserRequest;
use keel::api::pb::keel::user::v1::user_service_client::UserServiceClient;
use reqwest::Method;
use serde_json::json;
use tonic::Code;

backend_tests!(
    users_see_whom_they_share_an_organization_with,
    superusers_administer_accounts
);

async fn users_see_whom_they_share_an_organization_with(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (alice_id, alice) = user(&app, "alice@example.com").await;
    let (bob_id, bob) = user(&app, "bob@example.com").await;
    let (carol_id, _) = user(&app, "carol@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    add_member(
        &app,
        &alice.access,
        &organization_id,
        &bob_id,
        json!(["viewer"]),
    )
    .await;

    let mut grpc = UserServiceClient::new(app.channel().await);
    let get = |user_id: &str, token: &str| {
        with_token(
            GetUserRequest {
                user_id: user_id.to_owned(),
            },
            token,
        )
    };
    let seen = grpc
        .get_user(get(&alice_id, &bob.access))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(seen.email, "alice@example.com");
    grpc.get_user(get(&bob_id, &bob.access)).await.unwrap();
    let hidden = grpc
        .get_user(get(&carol_id, &bob.access))
        .await
        .unwrap_err();
    assert_eq!(
        (hidden.code(), grpc_reason(&hidden).as_str()),
        (Code::NotFound, "USER_NOT_FOUND")
    );
    let malformed = grpc
        .get_user(get("not-an-id", &bob.access))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    let (status, _) = app
        .rest(
            Method::GET,
            &format!("/api/v1/users/{carol_id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = app
        .rest(Method::GET, "/api/v1/users", &alice.access, None)
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );

    let (status, me) = app
        .rest(
            Method::PUT,
            "/api/v1/users/me",
            &alice.access,
            Some(json!({ "full_name": "Alice Adams" })),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &me["full_name"]),
        (200, &json!("Alice Adams"))
    );
    let (_, me) = app
        .rest(Method::GET, "/api/v1/users/me", &alice.access, None)
        .await;
    assert_eq!(me["full_name"], "Alice Adams");
    let (status, _) = app
        .rest(
            Method::PUT,
            "/api/v1/users/me",
            &alice.access,
            Some(json!({ "full_name": "a\u{0007}b" })),
        )
        .await;
    assert_eq!(status, 400);
}

async fn superusers_administer_accounts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    let (alice_id, alice) = user(&app, "alice@example.com").await;
    let (bob_id, bob) = user(&app, "bob@example.com").await;
    let (root_id, _) = {
        let (_, me) = app
            .rest(Method::GET, "/api/v1/users/me", &root.access, None)
            .await;
        (me["id"].as_str().unwrap().to_owned(), ())
    };

    let (_, found) = app
        .rest(Method::GET, "/api/v1/users?query=ALI", &root.access, None)
        .await;
    let emails: Vec<&str> = found["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["alice@example.com"]);
    let (_, supers) = app
        .rest(
            Method::GET,
            "/api/v1/users?is_superuser=true",
            &root.access,
            None,
        )
        .await;
    assert_eq!(supers["users"].as_array().unwrap().len(), 1);
    let (_, first) = app
        .rest(Method::GET, "/api/v1/users?page_size=2", &root.access, None)
        .await;
    let token = first["next_page_token"].as_str().unwrap();
    let (_, rest) = app
        .rest(
            Method::GET,
            &format!("/api/v1/users?page_size=2&page_token={token}"),
            &root.access,
            None,
        )
        .await;
    assert_eq!(
        (
            first["users"].as_array().unwrap().len(),
            rest["users"].as_array().unwrap().len()
        ),
        (2, 1)
    );
    let (_, wildcard) = app
        .rest(Method::GET, "/api/v1/users?query=%25", &root.access, None)
        .await;
    assert_eq!(wildcard["users"], json!([]), "% is matched literally");

    // Superuser rights apply and end on the next request.
    let (status, promoted) = app
        .rest(
            Method::POST,
            &format!("/api/v1/users/{alice_id}/superuser"),
            &root.access,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), &promoted["is_superuser"]),
        (200, &json!(true))
    );
    assert_eq!(
        app.rest(Method::GET, "/api/v1/users", &alice.access, None)
            .await
            .0,
        200
    );
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/users/{alice_id}/superuser"),
            &root.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.rest(Method::GET, "/api/v1/users", &alice.access, None)
            .await
            .0,
        403
    );
    let (status, body) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/users/{root_id}"),
            &root.access,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (409, Some("CANNOT_CHANGE_SELF"))
    );
    assert_eq!(
        app.rest(
            Method::DELETE,
            &format!("/api/v1/users/{bob_id}"),
            &alice.access,
            None
        )
        .await
        .0,
        403
    );

    // Deletion is soft: the account stays listed as inactive and can no longer be used.
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/users/{bob_id}"),
            &root.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.get_with_token("/api/v1/users/me", &bob.access)
            .await
            .status(),
        401
    );
    let response = app
        .post_json(
            "/api/v1/auth/login",
            json!({ "email": "bob@example.com", "password": crate::harness::PASSWORD }),
        )
        .await;
    assert_eq!(response.status(), 401);
    let (_, inactive) = app
        .rest(
            Method::GET,
            "/api/v1/users?is_active=false",
            &root.access,
            None,
        )
        .await;
    assert_eq!(inactive["users"][0]["id"], bob_id.as_str());
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/users/{}", uuid::Uuid::now_v7()),
            &root.access,
            None,
        )
        .await;
    assert_eq!(status, 404);
}
