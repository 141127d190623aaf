//! Architecture invariants of the agent, checked rather than hoped for.

/// The agent talks to the collector only through OTLP: it must never
/// depend on the store or on tantivy.
#[test]
fn agent_never_depends_on_the_store_or_tantivy() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    for forbidden in ["tantivy", "sightline-store", "sightline_store"] {
        assert!(
            !manifest.contains(forbidden),
            "agent/Cargo.toml mentions {forbidden}"
        );
    }
}
