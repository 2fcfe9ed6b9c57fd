#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The OpenAPI description of the admin API v4 (`runtime/assets/openapi-v4.yaml`) and the
//! router agree: every operation it describes is routed to the operation of the same
//! `operationId`, and every route the router knows is described.

use std::collections::BTreeSet;

use serde_json::Value;
use tidemq_core::admin::v4::{ROUTES, route};

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/openapi-v4.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).expect("the OpenAPI file parses as YAML")
}

/// A concrete path for a templated one: `{x}` becomes a value that needs decoding.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                match seg {
                    "{section}" => "basic".to_owned(),
                    "{action}" => "stop".to_owned(),
                    _ => "some%2Fthing".to_owned(),
                }
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_documented_operation_is_routed_and_every_route_documented() {
    let doc = document();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if !matches!(
                method.as_str(),
                "get" | "post" | "put" | "delete" | "patch" | "head" | "options"
            ) {
                continue;
            }
            let method = method.to_ascii_uppercase();
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            let routed = route(&method, &concrete(path))
                .unwrap_or_else(|e| panic!("{method} {path} is documented but not routed: {e:?}"));
            let spec = ROUTES.iter().find(|r| r.op == routed.op).unwrap();
            assert_eq!(spec.operation_id, id, "{method} {path}");
            documented.insert((method, path.clone()));
        }
    }
    for r in ROUTES {
        assert!(
            documented.contains(&(r.method.to_owned(), r.path.to_owned())),
            "{} {} is routed but not documented",
            r.method,
            r.path
        );
    }
    assert_eq!(documented.len(), ROUTES.len());
}
