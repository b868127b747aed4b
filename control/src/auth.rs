//! Authentication: the admin token and per-tenant tokens, sent as `authorization: Bearer <token>`.
//!
//! The broker keeps only SHA-256 hashes of tokens and compares them in constant time. A tenant may
//! hold several tokens; rotating replaces them all with one new token.
//!
//! Every call of `broker.v1.Broker` is authenticated here and nowhere else: [`AuthInterceptor`] runs
//! before the request reaches the service, identifies the caller through the control plane's [`Auth`]
//! (shared, so tokens created or rotated at run time count at once), refuses it with UNAUTHENTICATED,
//! or puts its [`Identity`] into the request's extensions for the adapter to read.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::status::ApiError;

/// Who is calling: what the interceptor proved, and what every control-plane call is scoped by.
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
/// [`ApiError::Internal`] if the OS has no randomness to give.
pub fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("no randomness for a token: {e}")))?;
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

/// The tonic interceptor that authenticates every call before the service sees it: the caller's
/// [`Identity`] goes into the request's extensions, or the call is refused with UNAUTHENTICATED.
///
/// It shares the control plane's [`Auth`], so a token issued or rotated a moment ago is known to the
/// very next call. The service adapter treats a request without an identity as unauthenticated, never
/// as the admin, so serving the service without this interceptor refuses everything.
#[derive(Debug, Clone)]
pub struct AuthInterceptor {
    auth: Arc<Auth>,
}

impl AuthInterceptor {
    /// An interceptor checking tokens against `auth`.
    pub(crate) fn new(auth: Arc<Auth>) -> AuthInterceptor {
        AuthInterceptor { auth }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let who = self.auth.identify(request.metadata())?;
        // Replaces anything under this type: extensions come from the server side only, never the wire.
        request.extensions_mut().insert(who);
        Ok(request)
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

    #[test]
    fn the_interceptor_puts_the_caller_into_the_extensions_or_refuses_it() {
        let auth = Arc::new(Auth::new(hash("root")));
        let mut interceptor = AuthInterceptor::new(Arc::clone(&auth));
        let with = |token: Option<&str>| {
            let mut request = Request::new(());
            if let Some(t) = token {
                request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
            }
            request
        };
        let passed = interceptor.call(with(Some("root"))).expect("the admin token passes");
        assert_eq!(passed.extensions().get::<Identity>(), Some(&Identity::Admin));
        for token in [None, Some("t1"), Some("root2")] {
            let refused = interceptor.call(with(token)).expect_err("refused");
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{token:?}");
        }
        // A token issued after the interceptor was built counts at once: it shares the plane's `Auth`.
        auth.set_tenant("acme", vec![hash("t1")]);
        let passed = interceptor.call(with(Some("t1"))).expect("a new tenant token passes");
        assert_eq!(passed.extensions().get::<Identity>(), Some(&Identity::Tenant("acme".into())));
        // An identity already in the extensions is replaced by the one the token proves.
        let mut forged = with(Some("t1"));
        forged.extensions_mut().insert(Identity::Admin);
        let passed = interceptor.call(forged).expect("passes as the tenant");
        assert_eq!(passed.extensions().get::<Identity>(), Some(&Identity::Tenant("acme".into())));
    }
}
