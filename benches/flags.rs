//! Feature flag evaluation: what one `is_on_for` costs, for a flag with nothing to match but
//! its rollout and for one with the largest targeting the contract allows (1,000 user ids,
//! 1,000 addresses, 100 domains, 1,000 organizations) that the user is in none of. The
//! floor, measured in the same run: the SHA-256 the rollout hashes (the flag's name and a user
//! id).
//!
//! ```sh
//! cargo bench --bench flags
//! ```

use keel::domain::flags::{FeatureFlag, Subject, Targeting, rollout_position};
use std::hint::black_box;
use std::time::Instant;
use uuid::Uuid;

const ROUNDS: usize = 1_000_000;

fn per_call(label: &str, mut call: impl FnMut(usize) -> bool) -> f64 {
    let mut on = 0usize;
    let started = Instant::now();
    for round in 0..ROUNDS {
        on += usize::from(black_box(call(round)));
    }
    let nanos = started.elapsed().as_nanos() as f64 / ROUNDS as f64;
    println!("{label:<44} {nanos:>8.1} ns per call ({on} on)");
    nanos
}

fn main() {
    let users: Vec<Uuid> = (0..1024).map(|_| Uuid::new_v4()).collect();
    let now = chrono::Utc::now();
    let flag = |targeting: Targeting| FeatureFlag {
        id: Uuid::now_v7(),
        name: "new-checkout".into(),
        description: String::new(),
        is_enabled: true,
        rollout: 0.25,
        targeting,
        created_at: now,
        updated_at: now,
    };
    let plain = flag(Targeting::default());
    let largest = flag(
        Targeting {
            user_ids: (0..1000).map(|_| Uuid::new_v4()).collect(),
            emails: (0..1000).map(|n| format!("user{n}@example.com")).collect(),
            email_domains: (0..100).map(|n| format!("domain{n}.test")).collect(),
            organization_ids: (0..1000).map(|_| Uuid::new_v4()).collect(),
        }
        .normalized(),
    );
    let organization = Some(Uuid::new_v4());
    let subject = |round: usize| Subject {
        user_id: users[round % users.len()],
        email: "someone@elsewhere.test",
        organization_id: organization,
    };
    let floor = per_call("floor: SHA-256 of name and user id", |round| {
        rollout_position("new-checkout", users[round % users.len()]) < 0.25
    });
    let rollout = per_call("rollout only", |round| plain.is_on_for(&subject(round)));
    let targeted = per_call("largest targeting, no match, then rollout", |round| {
        largest.is_on_for(&subject(round))
    });
    println!(
        "ratios to the floor: rollout {:.2}, largest targeting {:.2}",
        rollout / floor,
        targeted / floor
    );
}
