//! Whatever arrives as an `Authorization` value (any bytes, any length, any
//! scheme), key checking answers with a tenant or a refusal naming why; it
//! never panics, and only the configured key is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routemesh_gateway::tenancy::auth::{ApiKeys, AuthConfig, KeyConfig};

/// SHA-256 of "sk-fuzz".
const KEY_SHA256: &str = "aa49f5bd7d6edbcbc9ec60fc22914ab89cc8500d8f7df46dd7703fd1f4d0cfec";

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let config = AuthConfig {
        keys: vec![KeyConfig {
            tenant: "acme".into(),
            sha256: KEY_SHA256.into(),
            expires: Some("2999-01-01T00:00:00Z".into()),
        }],
        ..AuthConfig::default()
    };
    let Ok(keys) = ApiKeys::from_config(&config) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    for value in [Some(header), None] {
        match runtime.block_on(keys.authenticate(value)) {
            // Only the one key (whose hash is not any short input's) passes.
            Ok(tenant) => assert!(tenant.is_none_or(|t| t.0 == "acme")),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
