//! In-app notifications: operators send them to one user, to everyone or to an organization's
//! members; each user reads, marks and deletes their own and never sees another's.

use crate::harness::{Backend, PASSWORD, TestApp, grpc_reason, with_token};
use crate::organizations::create_organization;
use keel::api::pb::keel::notification::v1::notification_service_client::NotificationServiceClient;
use keel::api::pb::keel::notification::v1::{
    CreateNotificationRequest, ListNotificationsRequest, MarkNotificationReadRequest,
};
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

crate::backend_tests!(
    notifications_are_read_marked_and_deleted_by_their_user_alone,
    broadcasts_reach_everyone_or_an_organizations_members,
    keel_tells_users_what_happened_to_their_accounts
);

/// Registers and signs in `email`; answers the user's id and access token.
async fn user(app: &TestApp, email: &str) -> (String, String) {
    let registered = app.register(email).await;
    let tokens = app.login(email).await;
    (registered["id"].as_str().unwrap().to_owned(), tokens.access)
}

async fn send(app: &TestApp, token: &str, body: Value) -> (reqwest::StatusCode, Value) {
    app.rest(Method::POST, "/api/v1/notifications", token, Some(body))
        .await
}

async fn listed(app: &TestApp, token: &str, query: &str) -> Value {
    let (status, body) = app
        .rest(
            Method::GET,
            &format!("/api/v1/notifications{query}"),
            token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn titles(list: &Value) -> Vec<&str> {
    list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|notification| notification["title"].as_str().unwrap())
        .collect()
}

async fn notifications_are_read_marked_and_deleted_by_their_user_alone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await.access;
    let (alice_id, alice) = user(&app, "alice@example.com").await;
    let (_, bob) = user(&app, "bob@example.com").await;

    // Only operators send.
    let (status, refused) = send(&app, &alice, json!({ "user_id": alice_id, "title": "Hi" })).await;
    assert_eq!(
        (status.as_u16(), refused["reason"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    let (status, first) = send(
        &app,
        &root,
        json!({ "user_id": alice_id, "title": "Welcome", "body": "Glad you are here" }),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["type"], "info");
    assert_eq!(first["is_read"], false);
    assert_eq!(first["user_id"], alice_id.as_str());
    let (status, second) = send(
        &app,
        &root,
        json!({ "user_id": alice_id, "type": "warning", "title": "Disk", "link": "/settings",
                "data": { "percent": 91 } }),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["data"], json!({ "percent": 91 }));
    let mut grpc = NotificationServiceClient::new(app.channel().await);
    let third = grpc
        .create_notification(with_token(
            CreateNotificationRequest {
                user_id: alice_id.clone(),
                r#type: "success".into(),
                title: "Done".into(),
                ..Default::default()
            },
            &root,
        ))
        .await
        .unwrap()
        .into_inner()
        .notification
        .unwrap();
    assert_eq!(third.r#type, "success");
    let (status, unknown) = send(
        &app,
        &root,
        json!({ "user_id": uuid::Uuid::now_v7().to_string(), "title": "Nobody" }),
    )
    .await;
    assert_eq!(
        (status.as_u16(), unknown["reason"].as_str()),
        (404, Some("USER_NOT_FOUND"))
    );
    let (status, wrong) = send(
        &app,
        &root,
        json!({ "user_id": alice_id, "type": "urgent", "title": "No" }),
    )
    .await;
    assert_eq!(status, 400, "{wrong}");

    // Newest first, in pages, with the unread count on each.
    let all = listed(&app, &alice, "").await;
    assert_eq!(titles(&all), ["Done", "Disk", "Welcome"]);
    assert_eq!(all["unread_count"], 3);
    let page = listed(&app, &alice, "?page_size=2").await;
    assert_eq!(titles(&page), ["Done", "Disk"]);
    let token = page["next_page_token"].as_str().unwrap();
    let rest = listed(&app, &alice, &format!("?page_size=2&page_token={token}")).await;
    assert_eq!(titles(&rest), ["Welcome"]);
    assert_eq!(rest["next_page_token"], "");

    // Bob sees none of it and touches none of it.
    assert_eq!(titles(&listed(&app, &bob, "").await), Vec::<&str>::new());
    let first_id = first["id"].as_str().unwrap();
    for (method, path) in [
        (Method::GET, format!("/api/v1/notifications/{first_id}")),
        (
            Method::PATCH,
            format!("/api/v1/notifications/{first_id}/read"),
        ),
        (Method::DELETE, format!("/api/v1/notifications/{first_id}")),
    ] {
        let body = (method == Method::PATCH).then(|| json!({}));
        let (status, body) = app.rest(method.clone(), &path, &bob, body).await;
        assert_eq!(
            (status.as_u16(), body["reason"].as_str()),
            (404, Some("NOTIFICATION_NOT_FOUND")),
            "{method} {path}"
        );
    }
    let status = grpc
        .mark_notification_read(with_token(
            MarkNotificationReadRequest {
                notification_id: first_id.to_owned(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(grpc_reason(&status), "NOTIFICATION_NOT_FOUND");

    // Alice marks one read, then the rest.
    let (status, read) = app
        .rest(
            Method::PATCH,
            &format!("/api/v1/notifications/{first_id}/read"),
            &alice,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["is_read"], true);
    assert!(read["read_at"].is_string());
    let (_, count) = app
        .rest(
            Method::GET,
            "/api/v1/notifications/unread-count",
            &alice,
            None,
        )
        .await;
    assert_eq!(count["unread_count"], 2);
    let unread = grpc
        .list_notifications(with_token(
            ListNotificationsRequest {
                unread_only: true,
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let unread_titles: Vec<&str> = unread
        .notifications
        .iter()
        .map(|notification| notification.title.as_str())
        .collect();
    assert_eq!(unread_titles, ["Done", "Disk"]);
    assert_eq!(unread.unread_count, 2);
    let (_, marked) = app
        .rest(
            Method::POST,
            "/api/v1/notifications/mark-all-read",
            &alice,
            Some(json!({})),
        )
        .await;
    assert_eq!(marked["marked"], 2);
    assert_eq!(listed(&app, &alice, "").await["unread_count"], 0);

    // Deleting one, then every read one.
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/notifications/{first_id}"),
            &alice,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .rest(
            Method::GET,
            &format!("/api/v1/notifications/{first_id}"),
            &alice,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (_, deleted) = app
        .rest(
            Method::DELETE,
            "/api/v1/notifications/read/all",
            &alice,
            None,
        )
        .await;
    assert_eq!(deleted["deleted"], 2);
    assert_eq!(titles(&listed(&app, &alice, "").await), Vec::<&str>::new());
}

async fn broadcasts_reach_everyone_or_an_organizations_members(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await.access;
    let owner = app.verified("owner@example.com").await.access;
    let (_, stranger) = user(&app, "stranger@example.com").await;
    let organization = create_organization(&app, &owner, "acme").await;

    let broadcast = |body: Value| {
        let app = &app;
        let root = root.clone();
        async move {
            app.rest(
                Method::POST,
                "/api/v1/notifications/broadcast",
                &root,
                Some(body),
            )
            .await
        }
    };
    let (status, reached) = broadcast(
        json!({ "organization_id": organization, "title": "Maintenance", "type": "warning" }),
    )
    .await;
    assert_eq!(status, 200, "{reached}");
    assert_eq!(reached["recipients"], 1);
    assert_eq!(titles(&listed(&app, &owner, "").await), ["Maintenance"]);
    assert_eq!(
        titles(&listed(&app, &stranger, "").await),
        Vec::<&str>::new()
    );

    let (status, missing) = broadcast(
        json!({ "organization_id": uuid::Uuid::now_v7().to_string(), "title": "Nobody" }),
    )
    .await;
    assert_eq!(
        (status.as_u16(), missing["reason"].as_str()),
        (404, Some("ORGANIZATION_NOT_FOUND"))
    );
    let (status, reached) = broadcast(json!({ "title": "Hello all" })).await;
    assert_eq!(status, 200, "{reached}");
    assert_eq!(reached["recipients"], 3, "root, owner and stranger");
    assert_eq!(titles(&listed(&app, &stranger, "").await), ["Hello all"]);
    assert_eq!(
        titles(&listed(&app, &owner, "").await),
        ["Hello all", "Maintenance"]
    );

    let (status, refused) =
        broadcast(json!({ "title": "Big", "data": { "blob": "x".repeat(17 * 1024) } })).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        refused["details"][1]["field_violations"][0]["field"], "data",
        "{refused}"
    );
    let (status, _) = app
        .rest(
            Method::POST,
            "/api/v1/notifications/broadcast",
            &owner,
            Some(json!({ "title": "Not mine to send" })),
        )
        .await;
    assert_eq!(status, 403);
}

/// Waits until `token`'s user has `count` notifications; answers their titles, sorted.
async fn notices(app: &TestApp, token: &str, count: usize) -> Vec<String> {
    let mut found = Vec::new();
    for _ in 0..100 {
        let list = listed(app, token, "").await;
        found = titles(&list).into_iter().map(str::to_owned).collect();
        if found.len() >= count {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    found.sort();
    found
}

/// Keel notifies a user of what they should know about their account: a sign-in from a new
/// device (not the first sign-in, not a known device), a password change, a new API key, an
/// invitation; and an organization's owners and admins of a webhook it turned off (in the
/// webhook tests).
async fn keel_tells_users_what_happened_to_their_accounts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.verified("alice@example.com").await.access;
    app.login("alice@example.com").await;
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let response = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .header("user-agent", firefox)
        .json(&json!({ "email": "alice@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, key) = app
        .rest(
            Method::POST,
            "/api/v1/api-keys",
            &alice,
            Some(json!({ "name": "deploy" })),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let (_, bob) = user(&app, "bob@example.com").await;
    let organization = create_organization(&app, &alice, "acme").await;
    let (status, invitation) = app
        .rest(
            Method::POST,
            &format!("/api/v1/organizations/{organization}/invitations"),
            &alice,
            Some(json!({ "email": "bob@example.com", "roles": ["viewer"] })),
        )
        .await;
    assert_eq!(status, 201, "{invitation}");
    let changed = app
        .http
        .put(app.url("/api/v1/users/me/password"))
        .bearer_auth(&alice)
        .json(&json!({ "current_password": PASSWORD, "new_password": "N3w!Password-2026" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        changed.status(),
        200,
        "the session that changed it stays signed in"
    );

    assert_eq!(
        notices(&app, &alice, 3).await,
        [
            "A new API key was created",
            "New sign-in from a new device",
            "Your password was changed",
        ]
    );
    let list = listed(&app, &alice, "").await;
    let new_device = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|notification| notification["title"] == "New sign-in from a new device")
        .unwrap();
    assert_eq!(new_device["type"], "warning");
    assert!(
        new_device["body"].as_str().unwrap().contains("Firefox"),
        "{new_device}"
    );
    assert_eq!(new_device["data"]["event_type"], "session.created");
    let key_notice = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|notification| notification["title"] == "A new API key was created")
        .unwrap();
    assert!(key_notice["body"].as_str().unwrap().contains("\"deploy\""));
    assert_eq!(
        notices(&app, &bob, 1).await,
        ["You were invited to an organization"]
    );
}
