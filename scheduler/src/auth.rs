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

/// Failed password logins from one client address within
/// [`THROTTLE_WINDOW`] after which further attempts from that address are
/// refused unchecked until the window has passed. Counted per address, not
/// per user name: a guesser elsewhere cannot lock the real user out.
const MAX_FAILURES: usize = 10;
/// The fewest characters an operator's bearer token may have.
const MIN_TOKEN_CHARS: usize = 16;

/// The window [`MAX_FAILURES`] is counted in.
const THROTTLE_WINDOW: Duration = Duration::from_secs(60);

/// Session tokens kept at most; the oldest go first beyond it.
const MAX_SESSIONS: usize = 100_000;

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

    /// Refuses credentials that would let in anyone who guesses them: an
    /// empty token, user name or password, or one with white space or a
    /// colon where the header cannot carry it.
    pub fn check(&self) -> Result<(), String> {
        if let Some(token) = &self.token {
            if token.trim().is_empty() {
                return Err("the auth token is empty: give a real token or none".into());
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err("the auth token may not hold white space".into());
            }
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(format!(
                    "the auth token is shorter than {MIN_TOKEN_CHARS} characters, too short to resist guessing: \
                     use a random one (for example `openssl rand -hex 24`)"
                ));
            }
        }
        if let Some((user, password)) = &self.basic {
            if user.trim().is_empty() || user.contains(':') {
                return Err("the user name must not be empty or hold ':'".into());
            }
            if password.is_empty() {
                return Err("the password is empty: give a real password".into());
            }
        }
        Ok(())
    }
}

/// Checks every Flight SQL call; a tonic interceptor.
#[derive(Debug, Clone)]
pub struct Authenticator {
    config: Arc<AuthConfig>,
    sessions: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    failures: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

impl Authenticator {
    /// An authenticator for `config`.
    pub fn new(config: AuthConfig) -> Self {
        Self { config: Arc::new(config), sessions: Arc::default(), failures: Arc::default() }
    }

    /// Creates a session token for `user` after a password login.
    pub fn issue_session_token(&self, user: &str) -> String {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut sessions = self.sessions.lock().expect("session lock");
        sessions.retain(|_, (_, at)| at.elapsed() < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, (_, at))| *at).map(|(t, _)| t.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(token.clone(), (user.to_string(), Instant::now()));
        token
    }

    /// Refuses `who` (a client address) while it has failed too often lately.
    fn throttled(&self, who: &str) -> Result<(), Status> {
        let mut failures = self.failures.lock().expect("failure lock");
        let Some(times) = failures.get_mut(who) else { return Ok(()) };
        times.retain(|at| at.elapsed() < THROTTLE_WINDOW);
        if times.len() < MAX_FAILURES {
            return Ok(());
        }
        let wait = THROTTLE_WINDOW.saturating_sub(times[0].elapsed()).as_secs() + 1;
        Err(Status::resource_exhausted(format!("too many failed logins; try again in {wait} s")))
    }

    /// Notes a failed login of `who`, returning `status`.
    fn failed(&self, who: &str, status: Status) -> Status {
        let mut failures = self.failures.lock().expect("failure lock");
        if failures.len() > MAX_SESSIONS {
            failures.retain(|_, times| times.last().is_some_and(|at| at.elapsed() < THROTTLE_WINDOW));
        }
        failures.entry(who.to_string()).or_default().push(Instant::now());
        status
    }

    /// Checks the credentials in `header` of a request from `peer` (its
    /// address, when known).
    fn check(&self, header: Option<&str>, peer: Option<std::net::IpAddr>) -> Result<Caller, Status> {
        if !self.config.enabled() {
            return Ok(Caller { user: "anonymous".into(), needs_session_token: false });
        }
        let Some(header) = header else {
            return Err(Status::unauthenticated(
                "authentication required: send 'authorization: Bearer <token>' or log in with a user and password",
            ));
        };
        // Bearer tokens are not throttled: a counter shared by every token
        // would let anyone lock the real ones out, and the operator's token
        // is long enough (checked at start) that guessing it is hopeless.
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
            let from = peer.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
            self.throttled(&from)?;
            if constant_time_eq(u, user) && constant_time_eq(p, password) {
                return Ok(Caller { user: u.to_string(), needs_session_token: true });
            }
            return Err(self.failed(&from, Status::unauthenticated("wrong user name or password")));
        }
        Err(Status::unauthenticated("unsupported authorization scheme; use Bearer or Basic"))
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let caller = self.check(header.as_deref(), crate::flight_sql::peer(&request))?;
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
    const TOKEN: &str = "tok-0123456789abcdef";
    use super::*;

    fn basic(user: &str, pw: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
    }

    #[test]
    fn open_server_lets_everyone_in() {
        let auth = Authenticator::new(AuthConfig::default());
        assert_eq!(auth.check(None, None).unwrap().user, "anonymous");
    }

    #[test]
    fn token_and_password_logins() {
        let auth =
            Authenticator::new(AuthConfig { token: Some(TOKEN.into()), basic: Some(("ada".into(), "pw".into())) });
        assert!(auth.check(None, None).is_err());
        assert!(auth.check(Some(&format!("Bearer {TOKEN}")), None).is_ok());
        assert!(auth.check(Some("Bearer wrong"), None).is_err());
        let caller = auth.check(Some(&basic("ada", "pw")), None).unwrap();
        assert!(caller.needs_session_token);
        assert!(auth.check(Some(&basic("ada", "nope")), None).is_err());
        let unpadded = basic("ada", "pw").trim_end_matches('=').to_string();
        assert!(auth.check(Some(&unpadded), None).is_ok(), "unpadded base64 must be accepted");
        let session = auth.issue_session_token("ada");
        assert_eq!(auth.check(Some(&format!("Bearer {session}")), None).unwrap().user, "ada");
    }

    #[test]
    fn guessing_is_throttled_per_address() {
        let auth =
            Authenticator::new(AuthConfig { token: Some(TOKEN.into()), basic: Some(("ada".into(), "pw".into())) });
        let (guesser, user) = (Some("203.0.113.7".parse().unwrap()), Some("198.51.100.2".parse().unwrap()));
        for i in 0..MAX_FAILURES {
            let name = if i % 2 == 0 { "ada" } else { "bob" };
            let refused = auth.check(Some(&basic(name, "guess")), guesser).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        }
        // Even the right password is refused unchecked from that address.
        let refused = auth.check(Some(&basic("ada", "pw")), guesser).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        assert!(refused.message().contains("too many failed logins"));
        // The real user, elsewhere, is not locked out; wrong bearer tokens
        // lock nobody out.
        assert!(auth.check(Some(&basic("ada", "pw")), user).is_ok());
        for _ in 0..MAX_FAILURES * 2 {
            let _ = auth.check(Some("Bearer guess"), guesser);
        }
        assert!(auth.check(Some(&format!("Bearer {TOKEN}")), guesser).is_ok());
    }

    #[test]
    fn empty_credentials_are_refused_at_start() {
        assert!(AuthConfig { token: Some("s3cret".into()), basic: None }.check().unwrap_err().contains("too short"));
        assert!(AuthConfig { token: Some(String::new()), basic: None }.check().is_err());
        assert!(AuthConfig { token: Some(" ".into()), basic: None }.check().is_err());
        assert!(AuthConfig { token: None, basic: Some(("ada".into(), String::new())) }.check().is_err());
        assert!(AuthConfig { token: None, basic: Some((String::new(), "pw".into())) }.check().is_err());
        assert!(AuthConfig { token: Some(TOKEN.into()), basic: Some(("ada".into(), "pw".into())) }.check().is_ok());
    }
}
