//! The emulator's request parsing against hostile bodies: any bytes, and JSON of the right
//! shape with wild values, given to every handler that reads a body, never panics and never
//! answers a server error (5xx) for the client's mistake: a bad body is a 4xx in the cloud's
//! own error shape. `PROPTEST_CASES` makes the run longer.

use axum::response::IntoResponse;
use proptest::prelude::*;

use crate::config::{DEFAULT_PROJECT_ID as P, DEFAULT_SERVER_ID as S};
use crate::errors::ApiError;
use crate::tests::world;
use crate::{ecs, evs, evs_modify, evs_snapshots, sfs};

/// The HTTP status an error renders with.
fn status(e: ApiError) -> u16 {
    e.into_response().status().as_u16()
}

/// Feeds `body` to every handler that parses one; the statuses of their errors.
fn statuses(body: &[u8]) -> Vec<(&'static str, u16)> {
    let w = world();
    // A real disk, so the per-disk handlers get as far as their body.
    let disk = evs::create_volume(
        &w.cloud,
        P,
        br#"{"volume":{"availability_zone":"emu-az1","volume_type":"SSD","name":"d","size":10}}"#,
        None,
    )
    .unwrap()
    .volume_ids[0]
        .clone();
    let mut out = Vec::new();
    let mut check = |what, r: Result<(), ApiError>| {
        if let Err(e) = r {
            out.push((what, status(e)));
        }
    };
    check(
        "create_volume",
        evs::create_volume(&w.cloud, P, body, None).map(drop),
    );
    check(
        "extend_volume",
        evs::extend_volume(&w.cloud, P, &disk, body).map(drop),
    );
    check(
        "attach_volume",
        ecs::attach_volume(&w.cloud, P, S, body).map(drop),
    );
    check(
        "retype_volume",
        evs_modify::retype_volume(&w.cloud, P, &disk, body).map(drop),
    );
    check(
        "modify_qos",
        evs_modify::modify_qos(&w.cloud, P, &disk, body).map(drop),
    );
    check(
        "create_snapshot",
        evs_snapshots::create_snapshot(&w.cloud, P, body).map(drop),
    );
    check(
        "create_share",
        sfs::create_share(&w.cloud, P, body).map(drop),
    );
    out
}

/// JSON values of any shape, a few levels deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("volume".to_owned()),
                    Just("size".to_owned()),
                    Just("new_size".to_owned()),
                    Just("os-extend".to_owned()),
                    Just("volumeAttachment".to_owned()),
                    Just("volumeId".to_owned()),
                    Just("snapshot".to_owned()),
                    Just("share".to_owned()),
                    Just("extend".to_owned()),
                    Just("new_type".to_owned()),
                    "[a-z_]{1,10}",
                ],
                inner,
                0..5,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_are_a_client_error_never_a_crash(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        for (what, code) in statuses(&body) {
            prop_assert!((400..500).contains(&code), "{what} answered {code} to {body:?}");
        }
    }

    #[test]
    fn any_json_is_handled_or_a_client_error(value in json()) {
        let body = serde_json::to_vec(&value).unwrap();
        for (what, code) in statuses(&body) {
            prop_assert!((400..500).contains(&code), "{what} answered {code} to {value}");
        }
    }
}
