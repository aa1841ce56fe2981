//! API keys: each maps to a tenant. Keys are configured as SHA-256 hashes, so
//! the configuration (and a leaked copy of it) never holds a usable key.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::GatewayError;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted keys. Empty: no key is required and the request's `tenant`
    /// field (or "default") names the tenant.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The tenant this key bills to.
    pub tenant: String,
    /// Hex SHA-256 of the key, e.g. `printf %s "$KEY" | sha256sum`.
    pub sha256: String,
}

/// The tenant a request was authenticated as; put in request extensions by
/// the authentication step of each API (gRPC, HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], String>,
}

impl ApiKeys {
    pub fn from_config(config: &AuthConfig) -> Result<Self, (String, String)> {
        let mut by_hash = HashMap::new();
        for (i, key) in config.keys.iter().enumerate() {
            let bytes = hex::decode(&key.sha256)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    (
                        format!("gateway.auth.keys[{i}].sha256"),
                        "must be 64 hex digits (a SHA-256)".to_string(),
                    )
                })?;
            if key.tenant.is_empty() {
                return Err((
                    format!("gateway.auth.keys[{i}].tenant"),
                    "must not be empty".into(),
                ));
            }
            by_hash.insert(bytes, key.tenant.clone());
        }
        Ok(Self { by_hash })
    }

    pub fn enabled(&self) -> bool {
        !self.by_hash.is_empty()
    }

    /// The tenant for an `Authorization` header value; `Ok(None)` when keys
    /// are not enabled.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<Option<Tenant>, GatewayError> {
        if !self.enabled() {
            return Ok(None);
        }
        let key = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(GatewayError::Unauthenticated(
                "missing API key: send `authorization: Bearer <key>`",
            ))?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash
            .get(&digest)
            .map(|tenant| Some(Tenant(tenant.clone())))
            .ok_or(GatewayError::Unauthenticated("invalid API key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_tenants() {
        let hash = hex::encode(Sha256::digest(b"sk-acme"));
        let keys = ApiKeys::from_config(&AuthConfig {
            keys: vec![KeyConfig {
                tenant: "acme".into(),
                sha256: hash,
            }],
        })
        .unwrap();
        assert_eq!(
            keys.authenticate(Some("Bearer sk-acme")).unwrap(),
            Some(Tenant("acme".into()))
        );
        assert!(keys.authenticate(Some("Bearer sk-other")).is_err());
        assert!(keys.authenticate(None).is_err());
        assert!(keys.authenticate(Some("sk-acme")).is_err());
        assert_eq!(ApiKeys::default().authenticate(None).unwrap(), None);
        let bad = ApiKeys::from_config(&AuthConfig {
            keys: vec![KeyConfig {
                tenant: "a".into(),
                sha256: "xyz".into(),
            }],
        });
        assert_eq!(bad.unwrap_err().0, "gateway.auth.keys[0].sha256");
    }
}
