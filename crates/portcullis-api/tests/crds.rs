//! The checked-in `crds/` must be exactly what the code generates.

use std::path::PathBuf;

#[test]
fn checked_in_crds_match_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    for (name, generated) in portcullis_api::crd_files().expect("CRDs render as YAML") {
        let path = dir.join(name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p portcullis -- crd --dir crds`",
                path.display()
            )
        });
        assert!(
            on_disk == generated,
            "{} drifted from the code; run `cargo run -p portcullis -- crd --dir crds` and commit the result",
            path.display()
        );
    }
}

#[test]
fn every_cel_rule_compiles() {
    use kube::core::cel::compile_schema;
    fn walk(s: &kube::core::cel::CompiledSchema, path: &str, bad: &mut Vec<String>) {
        for e in s.compilation_errors() {
            bad.push(format!("{path}: {e}"));
        }
        for (k, v) in &s.properties {
            walk(v, &format!("{path}.{k}"), bad);
        }
        if let Some(items) = &s.items {
            walk(items, &format!("{path}[]"), bad);
        }
        if let Some(ap) = &s.additional_properties {
            walk(ap, &format!("{path}{{}}"), bad);
        }
    }
    let mut bad = Vec::new();
    for schema in [
        portcullis_api::validate::crd_schema::<portcullis_api::ApiRoute>(),
        portcullis_api::validate::crd_schema::<portcullis_api::TokenPolicy>(),
    ] {
        walk(&compile_schema(&schema), "", &mut bad);
    }
    assert!(bad.is_empty(), "CEL rules that do not compile: {bad:#?}");
}

#[test]
fn crds_carry_docs_short_names_and_columns() {
    let yaml = portcullis_api::crds_yaml().unwrap();
    for needle in [
        "shortNames:\n    - ar",
        "shortNames:\n    - tp",
        "name: Ready",
        "name: Age",
        "x-kubernetes-validations",
        "Scopes the token must hold, all of them",
        "Revoke every token signed with this key ID",
        "subresources:\n      status: {}",
    ] {
        assert!(yaml.contains(needle), "generated CRDs lack {needle:?}");
    }
}
