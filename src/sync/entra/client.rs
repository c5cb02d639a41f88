//! Talking to Microsoft Graph: an app-only token from the client-credentials
//! grant, cached until shortly before it expires, and GET requests that
//! survive throttling and a token revoked mid-run, within bounds.

use std::time::{Duration, Instant};

use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl};
use rand::Rng;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{EntraConfig, EntraError};
use crate::domain::Secret;
use crate::sync::SourceError;

/// The scope of an app-only Graph token: the application permissions an
/// administrator granted (`User.Read.All`, `GroupMember.Read.All`).
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// Graph error codes that mean the delta state behind a link is gone and the
/// client must start over (https://learn.microsoft.com/en-us/graph/delta-query-overview#synchronization-reset).
const RESYNC_CODES: &[&str] = &["syncStateNotFound", "syncStateInvalid", "resyncRequired"];

struct CachedToken {
    token: Secret,
    /// When to stop using it: some time before the server's expiry, so a
    /// token never expires between the check and the request.
    refresh_at: Instant,
}

/// An authenticated Graph client for one source; keeps its token across runs.
pub struct GraphClient {
    http: reqwest::Client,
    config: EntraConfig,
    token: Option<CachedToken>,
    /// Requests sent (including retries), for the logs.
    pub requests: u64,
    /// Time this run has spent waiting to retry, across all its requests:
    /// bounded by `max_run_wait`, so a throttled run ends instead of taking
    /// pages × `max_retry_wait`.
    run_waited: Duration,
}

/// Why one token request failed: worth another try, or final.
enum TokenFailure {
    Transient {
        why: Transient,
        retry_after: Option<Duration>,
    },
    Final(EntraError),
}

/// A token response's HTTP status and `Retry-After`.
type Answer = (u16, Option<Duration>);

/// OAuth2 error codes (RFC 6749 section 5.2 and Microsoft's) that say "try
/// again later", not "your request is wrong".
const TRANSIENT_TOKEN_ERRORS: &[&str] = &["temporarily_unavailable", "server_error"];

/// `{"error": {"code", "message", "innerError"}}`
/// (https://learn.microsoft.com/en-us/graph/errors).
#[derive(Deserialize)]
struct GraphErrorBody {
    error: GraphErrorDetail,
}
#[derive(Deserialize)]
struct GraphErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl GraphClient {
    pub fn new(config: &EntraConfig) -> Result<GraphClient, EntraError> {
        let http = reqwest::Client::builder()
            // Following redirects would let a server send our bearer token
            // elsewhere; neither Graph nor the token endpoint redirects.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| EntraError::Client(e.to_string()))?;
        Ok(GraphClient {
            http,
            config: config.clone(),
            token: None,
            requests: 0,
            run_waited: Duration::ZERO,
        })
    }

    /// Starts a run's retry budget afresh.
    pub fn begin_run(&mut self) {
        self.run_waited = Duration::ZERO;
    }

    /// A token valid for a while yet: the cached one, or a new one. A
    /// transient answer of the token endpoint (429, 5xx,
    /// `temporarily_unavailable` such as AADSTS90033, a refused connection)
    /// is retried like a throttled Graph request, within the same bounds.
    async fn token(&mut self) -> Result<Secret, EntraError> {
        if let Some(t) = &self.token {
            if Instant::now() < t.refresh_at {
                return Ok(t.token.clone());
            }
        }
        self.token = None;
        let what = format!("token endpoint {}", self.config.token_url());
        let (mut attempt, mut waited) = (0u32, Duration::ZERO);
        loop {
            match self.fetch_token().await {
                Ok(fresh) => {
                    let token = fresh.token.clone();
                    self.token = Some(fresh);
                    return Ok(token);
                }
                Err(TokenFailure::Final(e)) => return Err(e),
                Err(TokenFailure::Transient { why, retry_after }) => {
                    self.wait(&what, &mut attempt, &mut waited, retry_after, why)
                        .await?
                }
            }
        }
    }

    /// The client-credentials grant
    /// (https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow):
    /// the secret goes in the form body, as Microsoft documents it.
    async fn fetch_token(&mut self) -> Result<CachedToken, TokenFailure> {
        let secret = self
            .config
            .client_secret
            .resolve()
            .map_err(|e| TokenFailure::Final(EntraError::Secret(e)))?;
        let token_url = self.config.token_url();
        let client = BasicClient::new(ClientId::new(self.config.client_id.clone()))
            .set_client_secret(ClientSecret::new(secret.expose().to_string()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(TokenUrl::new(token_url.clone()).map_err(|e| {
                TokenFailure::Final(EntraError::TokenRequest {
                    url: token_url.clone(),
                    message: e.to_string(),
                })
            })?);
        // The HTTP status and Retry-After of the answer, which oauth2's
        // error type does not carry.
        let answered: std::sync::Arc<std::sync::Mutex<Option<Answer>>> = Default::default();
        let send = {
            let (http, answered) = (self.http.clone(), answered.clone());
            move |request: oauth2::HttpRequest| {
                let (http, answered) = (http.clone(), answered.clone());
                async move {
                    let response = oauth2::AsyncHttpClient::call(&http, request).await?;
                    let retry_after = retry_after(response.headers());
                    *answered.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((response.status().as_u16(), retry_after));
                    Ok::<_, oauth2::HttpClientError<reqwest::Error>>(response)
                }
            }
        };
        self.requests += 1;
        let started = Instant::now();
        let result = client
            .exchange_client_credentials()
            .add_scope(Scope::new(GRAPH_SCOPE.to_string()))
            .request_async(&send)
            .await;
        let (status, retry_after) = answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or((None, None), |(s, r)| (Some(s), r));
        let transient_status = status.is_some_and(|s| s == 429 || (500..600).contains(&s));
        let response = result.map_err(|e| match e {
            RequestTokenError::ServerResponse(r)
                if transient_status || TRANSIENT_TOKEN_ERRORS.contains(&r.error().as_ref()) =>
            {
                TokenFailure::Transient {
                    why: Transient::Status(status.unwrap_or(400), r.error().to_string()),
                    retry_after,
                }
            }
            RequestTokenError::ServerResponse(r) => {
                TokenFailure::Final(EntraError::TokenRejected {
                    url: token_url.clone(),
                    meaning: token_error_meaning(r.error().as_ref()),
                    error: r.error().to_string(),
                    description: r
                        .error_description()
                        .map(|d| first_line(d).to_string())
                        .unwrap_or_default(),
                })
            }
            RequestTokenError::Request(e) => TokenFailure::Transient {
                why: Transient::Unreachable(crate::telemetry::error_chain(&e)),
                retry_after: None,
            },
            // A 429 or 5xx with a body that is no OAuth2 error (a proxy's
            // page) is as transient as one that is.
            RequestTokenError::Parse(_, _) | RequestTokenError::Other(_) if transient_status => {
                TokenFailure::Transient {
                    why: Transient::Status(status.unwrap_or(503), String::new()),
                    retry_after,
                }
            }
            RequestTokenError::Parse(e, _) => TokenFailure::Final(EntraError::TokenRequest {
                url: token_url.clone(),
                message: format!("unreadable token response: {e}"),
            }),
            RequestTokenError::Other(m) => TokenFailure::Final(EntraError::TokenRequest {
                url: token_url.clone(),
                message: m,
            }),
        })?;
        // Entra issues tokens for 60-90 minutes; without expires_in assume
        // the minimum. Renew at the earlier of 2 minutes before expiry or
        // half-way, so short-lived tokens are not used to the last second.
        // Capped at a day: a server-supplied `expires_in` must not overflow
        // the clock arithmetic below.
        let lifetime = response
            .expires_in()
            .unwrap_or(Duration::from_secs(3600))
            .min(Duration::from_secs(24 * 3600));
        let margin = (lifetime / 2).min(Duration::from_secs(120));
        tracing::debug!(lifetime_s = lifetime.as_secs(), "obtained a Graph token");
        Ok(CachedToken {
            token: Secret::new(response.access_token().secret().clone()),
            refresh_at: started + lifetime - margin,
        })
    }

    /// GETs `url` (a Graph URL under `graph_url`) and parses the JSON body.
    ///
    /// 429, 503 and 504 and connection failures are retried up to
    /// `max_retries` times, after `Retry-After` seconds when the server
    /// says, else after an exponential backoff with full jitter; the waits
    /// of one request never add up to more than `max_retry_wait`, those of
    /// the run to more than `max_run_wait`. A 401 is answered by one token
    /// refresh; a second 401 fails. A 410, or any 4xx saying the sync state
    /// is gone, is `CursorExpired`. Returns `None`
    /// for a 404 when `allow_missing`.
    pub async fn get<T: DeserializeOwned>(
        &mut self,
        url: &str,
        allow_missing: bool,
    ) -> Result<Option<T>, SourceError> {
        self.check_link(url)?;
        let path = display_path(url);
        let what = format!("Graph {path}");
        let mut refreshed = false;
        let mut waited = Duration::ZERO;
        let mut attempt: u32 = 0;
        loop {
            let token = self.token().await?;
            self.requests += 1;
            let sent = self
                .http
                .get(url)
                .bearer_auth(token.expose())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await;
            let transient = match sent {
                Err(e) => Transient::Unreachable(crate::telemetry::error_chain(&e.without_url())),
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        let bytes = match resp.bytes().await {
                            Ok(b) => b,
                            Err(e) => {
                                // The body broke off: as retryable as a
                                // refused connection.
                                self.wait(
                                    &what,
                                    &mut attempt,
                                    &mut waited,
                                    None,
                                    Transient::Unreachable(crate::telemetry::error_chain(
                                        &e.without_url(),
                                    )),
                                )
                                .await?;
                                continue;
                            }
                        };
                        return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                            EntraError::Malformed {
                                path: path.clone(),
                                message: e.to_string(),
                            }
                            .into()
                        });
                    }
                    let retry_after = retry_after(resp.headers());
                    let body = resp.bytes().await.unwrap_or_default();
                    let (code, message) = match serde_json::from_slice::<GraphErrorBody>(&body) {
                        Ok(b) => (b.error.code, b.error.message),
                        Err(_) => (
                            String::new(),
                            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                        ),
                    };
                    match status {
                        // Microsoft documents the reset as "40X-series" with
                        // one of these codes: any 4xx, not only 400 and 410.
                        StatusCode::GONE => return Err(SourceError::CursorExpired),
                        s if s.is_client_error() && RESYNC_CODES.contains(&code.as_str()) => {
                            return Err(SourceError::CursorExpired)
                        }
                        StatusCode::UNAUTHORIZED if !refreshed => {
                            // Revoked or expired early: one new token, then
                            // the same request again.
                            tracing::info!(%path, %code, "Graph rejected the token; renewing it once");
                            refreshed = true;
                            self.token = None;
                            continue;
                        }
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            return Err(EntraError::Denied {
                                status: status.as_u16(),
                                path,
                                code,
                                message,
                            }
                            .into())
                        }
                        StatusCode::NOT_FOUND if allow_missing => return Ok(None),
                        StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT => {
                            self.wait(
                                &what,
                                &mut attempt,
                                &mut waited,
                                retry_after,
                                Transient::Status(status.as_u16(), code),
                            )
                            .await?;
                            continue;
                        }
                        _ => {
                            return Err(EntraError::Http {
                                status: status.as_u16(),
                                path,
                                code,
                                message,
                            }
                            .into())
                        }
                    }
                }
            };
            self.wait(&what, &mut attempt, &mut waited, None, transient)
                .await?;
        }
    }

    /// Sleeps before the next attempt of `what` ("Graph /v1.0/users/delta",
    /// "token endpoint …"), or fails when its retries, its wait budget
    /// (`max_retry_wait`) or the run's (`max_run_wait`) are used up.
    async fn wait(
        &mut self,
        what: &str,
        attempt: &mut u32,
        waited: &mut Duration,
        retry_after: Option<Duration>,
        why: Transient,
    ) -> Result<(), EntraError> {
        let give_up = |attempts: u32, waited: Duration| match &why {
            Transient::Unreachable(message) => EntraError::Unreachable {
                what: what.to_string(),
                attempts,
                message: message.clone(),
            },
            Transient::Status(status, code) => EntraError::Throttled {
                what: what.to_string(),
                status: *status,
                code: code.clone(),
                attempts,
                waited_s: waited.as_secs_f64(),
            },
        };
        if *attempt >= self.config.max_retries {
            return Err(give_up(*attempt + 1, *waited));
        }
        let delay = match retry_after {
            Some(d) => d,
            None => {
                // Equal jitter: uniform in [c/2, c] for c = base * 2^attempt,
                // so clients throttled together do not retry together, and
                // no wait collapses to nothing.
                let ceiling = self
                    .config
                    .retry_base
                    .saturating_mul(1u32 << (*attempt).min(16))
                    .min(self.config.max_retry_wait);
                let ms = ceiling.as_millis().min(u64::MAX as u128) as u64;
                Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms.max(1)))
            }
        };
        if waited.saturating_add(delay) > self.config.max_retry_wait {
            return Err(give_up(*attempt + 1, *waited));
        }
        if self.run_waited.saturating_add(delay) > self.config.max_run_wait {
            return Err(EntraError::RunWaitExhausted {
                what: what.to_string(),
                reason: why.to_string(),
                waited_s: self.run_waited.as_secs_f64(),
                budget_s: self.config.max_run_wait.as_secs_f64(),
            });
        }
        *attempt += 1;
        tracing::warn!(
            %what,
            attempt = *attempt,
            delay_ms = delay.as_millis() as u64,
            reason = %why,
            "request failed; retrying"
        );
        tokio::time::sleep(delay).await;
        *waited += delay;
        self.run_waited += delay;
        Ok(())
    }

    /// Links come from the server (`@odata.nextLink`, a saved deltaLink): the
    /// bearer token goes only to the configured Graph base.
    pub fn check_link(&self, url: &str) -> Result<(), EntraError> {
        let base = &self.config.graph_url;
        let ok = url
            .strip_prefix(base.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
        if ok {
            Ok(())
        } else {
            Err(EntraError::ForeignLink {
                link: display_path(url),
                base: base.clone(),
            })
        }
    }
}

enum Transient {
    Unreachable(String),
    Status(u16, String),
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transient::Unreachable(m) => write!(f, "{m}"),
            Transient::Status(s, c) if c.is_empty() => write!(f, "HTTP {s}"),
            Transient::Status(s, c) => write!(f, "HTTP {s} {c}"),
        }
    }
}

/// `Retry-After` in seconds (Graph and the token endpoint send seconds).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// What a token endpoint's error code means for the administrator.
fn token_error_meaning(code: &str) -> &'static str {
    match code {
        "invalid_client" => "rejected the client credentials",
        "unauthorized_client" => {
            "does not know this client id in the directory, or does not let it use the client-credentials grant"
        }
        "invalid_request" => "refused the request (check directory_id)",
        "invalid_scope" => "refused the Graph scope",
        "unsupported_grant_type" => "does not offer the client-credentials grant",
        "invalid_grant" => "refused the grant",
        "temporarily_unavailable" | "server_error" => "is unavailable",
        _ => "refused the token request",
    }
}

/// A URL without its query (state tokens are long and opaque), for messages.
pub fn display_path(url: &str) -> String {
    match url.split_once('?') {
        Some((p, _)) => p.to_string(),
        None => url.to_string(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
