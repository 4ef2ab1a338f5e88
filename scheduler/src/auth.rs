//! Optional authentication for the Flight SQL front door.
//!
//! Two ways in, either or both enabled by the operator:
//! * a static bearer token (`--auth-token`): clients send
//!   `authorization: Bearer <token>` on every call;
//! * a user and password (`--user`, `--password`): clients send HTTP Basic
//!   credentials (on the handshake or on any call) and get back a session
//!   token (`authorization: Bearer <session token>`) to use from then on.
//!
//! With neither configured, every client is let in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// How long a session token from a password login stays valid.
const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// Who made a request, put into the request's extensions by [`Authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user name; `anonymous` without auth, `token` for the static token.
    pub user: String,
    /// Whether the caller logged in with a password on this very request, so
    /// the handshake must hand out a session token.
    pub needs_session_token: bool,
}

/// The credentials a server accepts.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// A static bearer token.
    pub token: Option<String>,
    /// A user name and password for HTTP Basic logins.
    pub basic: Option<(String, String)>,
}

impl AuthConfig {
    /// Whether any credential is required.
    pub fn enabled(&self) -> bool {
        self.token.is_some() || self.basic.is_some()
    }
}

/// Checks every Flight SQL call; a tonic interceptor.
#[derive(Debug, Clone)]
pub struct Authenticator {
    config: Arc<AuthConfig>,
    sessions: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl Authenticator {
    /// An authenticator for `config`.
    pub fn new(config: AuthConfig) -> Self {
        Self { config: Arc::new(config), sessions: Arc::default() }
    }

    /// Creates a session token for `user` after a password login.
    pub fn issue_session_token(&self, user: &str) -> String {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut sessions = self.sessions.lock().expect("session lock");
        sessions.retain(|_, (_, at)| at.elapsed() < SESSION_TTL);
        sessions.insert(token.clone(), (user.to_string(), Instant::now()));
        token
    }

    fn check(&self, header: Option<&str>) -> Result<Caller, Status> {
        if !self.config.enabled() {
            return Ok(Caller { user: "anonymous".into(), needs_session_token: false });
        }
        let Some(header) = header else {
            return Err(Status::unauthenticated(
                "authentication required: send 'authorization: Bearer <token>' or log in with a user and password",
            ));
        };
        if let Some(token) = strip_scheme(header, "Bearer") {
            if self.config.token.as_deref().is_some_and(|t| constant_time_eq(t, token)) {
                return Ok(Caller { user: "token".into(), needs_session_token: false });
            }
            let sessions = self.sessions.lock().expect("session lock");
            if let Some((user, at)) = sessions.get(token)
                && at.elapsed() < SESSION_TTL
            {
                return Ok(Caller { user: user.clone(), needs_session_token: false });
            }
            return Err(Status::unauthenticated("invalid or expired bearer token"));
        }
        if let Some(encoded) = strip_scheme(header, "Basic") {
            let Some((user, password)) = self.config.basic.as_ref() else {
                return Err(Status::unauthenticated(
                    "password login is not enabled on this server; use a bearer token",
                ));
            };
            // Some clients (ADBC among them) leave out the base64 padding.
            let decoded = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            )
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
            let (u, p) =
                decoded.split_once(':').ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
            if constant_time_eq(u, user) && constant_time_eq(p, password) {
                return Ok(Caller { user: u.to_string(), needs_session_token: true });
            }
            return Err(Status::unauthenticated("wrong user name or password"));
        }
        Err(Status::unauthenticated("unsupported authorization scheme; use Bearer or Basic"))
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let caller = self.check(header.as_deref())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then_some(rest.trim())
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pw: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
    }

    #[test]
    fn open_server_lets_everyone_in() {
        let auth = Authenticator::new(AuthConfig::default());
        assert_eq!(auth.check(None).unwrap().user, "anonymous");
    }

    #[test]
    fn token_and_password_logins() {
        let auth =
            Authenticator::new(AuthConfig { token: Some("s3cret".into()), basic: Some(("ada".into(), "pw".into())) });
        assert!(auth.check(None).is_err());
        assert!(auth.check(Some("Bearer s3cret")).is_ok());
        assert!(auth.check(Some("Bearer wrong")).is_err());
        let caller = auth.check(Some(&basic("ada", "pw"))).unwrap();
        assert!(caller.needs_session_token);
        assert!(auth.check(Some(&basic("ada", "nope"))).is_err());
        let unpadded = basic("ada", "pw").trim_end_matches('=').to_string();
        assert!(auth.check(Some(&unpadded)).is_ok(), "unpadded base64 must be accepted");
        let session = auth.issue_session_token("ada");
        assert_eq!(auth.check(Some(&format!("Bearer {session}"))).unwrap().user, "ada");
    }
}
