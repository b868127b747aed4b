//! Authentication: the admin token and per-tenant tokens, sent as `authorization: Bearer <token>`.
//!
//! The broker keeps only SHA-256 hashes of tokens and compares them in constant time. A tenant may
//! hold several tokens; rotating replaces them all with one new token.

use std::collections::HashMap;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use super::status::ApiError;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The operator: every call, every tenant.
    Admin,
    /// A tenant: its own objects only.
    Tenant(String),
}

/// A token hash.
pub type TokenHash = [u8; 32];

/// Hashes a token.
pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two hashes in constant time (`subtle`: no data-dependent branch the optimiser may add).
fn same(a: &TokenHash, b: &TokenHash) -> bool {
    subtle::ConstantTimeEq::ct_eq(a.as_slice(), b.as_slice()).into()
}

/// Hex encoding for storage.
pub fn to_hex(h: &TokenHash) -> String {
    hex::encode(h)
}

/// Decodes [`to_hex`]; `None` for anything else.
pub fn from_hex(s: &str) -> Option<TokenHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A fresh random token (256 bits, hex, with a `brk_` prefix so it is recognisable in logs and configs).
///
/// # Errors
/// [`ApiError::Store`] if the OS has no randomness to give.
pub fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Store(format!("no randomness for a token: {e}")))?;
    Ok(format!("brk_{}", to_hex(&bytes)))
}

/// The known tokens.
#[derive(Debug)]
pub struct Auth {
    admin: TokenHash,
    tenants: RwLock<HashMap<String, Vec<TokenHash>>>,
}

impl Auth {
    /// Auth with the admin token's hash and no tenant tokens.
    pub fn new(admin: TokenHash) -> Auth {
        Auth { admin, tenants: RwLock::new(HashMap::new()) }
    }

    /// Replaces a tenant's token hashes.
    pub fn set_tenant(&self, tenant: &str, hashes: Vec<TokenHash>) {
        self.tenants.write().insert(tenant.to_owned(), hashes);
    }

    /// A tenant's token hashes.
    pub fn tenant_hashes(&self, tenant: &str) -> Vec<TokenHash> {
        self.tenants.read().get(tenant).cloned().unwrap_or_default()
    }

    /// Identifies the caller from request metadata.
    ///
    /// # Errors
    /// [`ApiError::Unauthenticated`] without a bearer token or with an unknown one.
    pub fn identify(&self, meta: &MetadataMap) -> Result<Identity, ApiError> {
        let value = meta
            .get("authorization")
            .ok_or(ApiError::Unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
        // The scheme is case-insensitive (RFC 6750 after RFC 9110), so `bearer` and `BEARER` work too.
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or(ApiError::Unauthenticated("authorization metadata must be `Bearer <token>`"))?;
        let h = hash(token.trim());
        if same(&h, &self.admin) {
            return Ok(Identity::Admin);
        }
        let tenants = self.tenants.read();
        for (name, hashes) in tenants.iter() {
            if hashes.iter().any(|t| same(&h, t)) {
                return Ok(Identity::Tenant(name.clone()));
            }
        }
        Err(ApiError::Unauthenticated("unknown token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let h = hash("x");
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn tokens_identify_their_owner() {
        let auth = Auth::new(hash("root"));
        auth.set_tenant("acme", vec![hash("t1")]);
        let mut meta = MetadataMap::new();
        assert!(matches!(auth.identify(&meta), Err(ApiError::Unauthenticated(_))));
        meta.insert("authorization", "Bearer root".parse().expect("ascii"));
        assert_eq!(auth.identify(&meta).ok(), Some(Identity::Admin));
        meta.insert("authorization", "Bearer t1".parse().expect("ascii"));
        assert_eq!(auth.identify(&meta).ok(), Some(Identity::Tenant("acme".into())));
        meta.insert("authorization", "Bearer t2".parse().expect("ascii"));
        assert!(auth.identify(&meta).is_err());
        meta.insert("authorization", "Basic t1".parse().expect("ascii"));
        assert!(auth.identify(&meta).is_err());
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            meta.insert("authorization", format!("{scheme} t1").parse().expect("ascii"));
            assert_eq!(auth.identify(&meta).ok(), Some(Identity::Tenant("acme".into())), "{scheme}");
        }
        for junk in ["Bearer", "Bearert1", "", " t1"] {
            meta.insert("authorization", junk.parse().expect("ascii"));
            assert!(auth.identify(&meta).is_err(), "{junk:?}");
        }
        let token = new_token().expect("random");
        assert!(token.starts_with("brk_") && token.len() == 68);
    }
}
