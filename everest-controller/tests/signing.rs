//! AK/SK signatures on text the tests never chose: the client (everest-evs) signs list filters
//! with arbitrary disk names and metadata values (spaces, `+`, `%`, `/`, quotes, non-ASCII),
//! and the emulator, whose verifier was written apart from the client from the same facts,
//! must accept every one. A disagreement on how any character is escaped in the canonical
//! query would surface here as a refused signature, long before a real cloud refuses it.

use std::collections::BTreeMap;

use everest_evs::api::{EvsClient, VolumeFilter};
use everest_testsupport::World;
use everest_testsupport::world::{PROJECT_ID, REGION};
use proptest::prelude::*;

#[test]
fn the_emulator_accepts_every_signature_the_client_makes() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let world = rt.block_on(World::start());
    let url = world.emulator_url();
    let settings = serde_json::json!({
        "project_id": PROJECT_ID, "region": REGION,
        "evs_endpoint": url, "ecs_endpoint": url, "allow_insecure_http": true,
        "credentials_file": world.root().join("evs-credentials.json"),
        "max_retries": 0,
    });
    let cfg = everest_evs::EvsConfig::parse("signing", settings.as_object().unwrap()).unwrap();
    let client =
        EvsClient::from_credentials_file(cfg.cloud.clone(), &cfg.backend.credentials_file).unwrap();

    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(name in "\\PC{1,40}", key in "[a-z][a-z0-9._/-]{0,20}", value in "\\PC{0,40}")| {
        let filter = VolumeFilter {
            name: Some(name.clone()),
            metadata: BTreeMap::from([(key, value)]),
            limit: Some(5),
            ..VolumeFilter::default()
        };
        let listed = rt.block_on(client.list_volumes(&filter));
        prop_assert!(listed.is_ok(), "name {name:?}: {listed:?}");
    });
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}
