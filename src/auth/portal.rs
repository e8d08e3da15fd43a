//! The sign-in portal's HTTP endpoints (`/oauth2/start`, `/callback`, `/sign_out`, `/signed-out`, `/userinfo`,
//! `/backchannel-logout`, `/handoff`), the redirect-target (`rd`) rules, and the decision to send a browser to
//! sign in instead of answering 401.
//!
//! Every failure renders a short page naming the cause and the setting to change, and logs the same; tokens,
//! codes and cookie values are never logged or shown.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::authenticator::Authenticator;
use super::forward_auth::EndedSessions;
use super::oidc::{self, origin, url_with, CallbackQuery, OidcError, OidcSettings};
use super::session::{random_id, Store};
use super::settings::AuthSettings;

/// More sign-in starts than this from one browser within [`LOOP_WINDOW_SECS`] is a redirect loop.
const LOOP_LIMIT: u32 = 5;
/// The redirect-loop window.
const LOOP_WINDOW_SECS: u64 = 60;
/// Largest back-channel logout request body.
const LOGOUT_BODY_LIMIT: usize = 64 * 1024;
/// Lifetime of a cross-domain hand-off code.
const HANDOFF_TTL_SECS: u64 = 60;

/// What the portal needs from the server around it.
pub struct PortalContext<'a> {
    /// The bound HTTPS port (URLs shown to browsers carry it unless it is 443).
    pub https_port: u16,
    /// Whether a host is served by a configured service (for `rd` checks).
    pub is_service_host: &'a (dyn Fn(&str) -> bool + Sync),
}

/// A response of the portal.
pub type PortalResponse = Response<Full<Bytes>>;

/// Whether `rd` is an acceptable post-sign-in or post-logout target: an absolute `https` URL without userinfo
/// whose host is the portal, a service host, or under a cookie domain. Everything else — relative and
/// scheme-relative URLs (`//evil`, `/\evil`), other schemes, control characters and encoded CR/LF/NUL,
/// look-alike suffixes — is refused.
pub fn is_allowed_redirect(
    o: &OidcSettings,
    is_service_host: &dyn Fn(&str) -> bool,
    rd: &str,
) -> bool {
    if rd.len() > 4096 || rd.bytes().any(|b| b < 0x21 || b == 0x7f || b == b'\\') {
        return false;
    }
    let lower = rd.to_ascii_lowercase();
    if ["%0d", "%0a", "%00", "%5c", "%09"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return false;
    }
    let Ok(uri) = rd.parse::<http::Uri>() else {
        return false;
    };
    if uri.scheme_str() != Some("https") {
        return false;
    }
    let Some(auth) = uri.authority() else {
        return false;
    };
    if auth.as_str().contains('@') {
        return false;
    }
    let Ok(host) = crate::router::Host::parse(auth.as_str()) else {
        return false;
    };
    let host = host.as_str();
    host == o.portal || is_service_host(host) || o.cookie_domain_for(host).is_some()
}

/// The sign-in URL for a request to `original_url`, when browser sign-in is configured.
pub fn sign_in_url(auth: &AuthSettings, original_url: &str, https_port: u16) -> Option<String> {
    let o = auth.oidc()?;
    Some(url_with(
        &format!("{}/oauth2/start", o.portal_origin(https_port)),
        &[("rd", original_url)],
    ))
}

/// Whether the request looks like a browser navigation (not XHR or an API client): HTML accepted.
pub fn is_browser(headers: &HeaderMap) -> bool {
    let xhr = headers
        .get("x-requested-with")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("xmlhttprequest"));
    let html = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"));
    html && !xhr
}

/// The redirect that sends a browser to sign in (302 for GET/HEAD, 303 otherwise, RFC 9110 §15.4), or `None`
/// when the client is not a browser (it gets 401).
pub fn sign_in_redirect(
    auth: &AuthSettings,
    method: &Method,
    headers: &HeaderMap,
    original_url: &str,
    https_port: u16,
) -> Option<PortalResponse> {
    if !is_browser(headers) {
        return None;
    }
    let url = sign_in_url(auth, original_url, https_port)?;
    let status = if method == Method::GET || method == Method::HEAD {
        StatusCode::FOUND
    } else {
        StatusCode::SEE_OTHER
    };
    Some(redirect(status, &url, &[]))
}

fn redirect(status: StatusCode, location: &str, cookies: &[String]) -> PortalResponse {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    add_cookies(&mut r, cookies);
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn add_cookies(r: &mut PortalResponse, cookies: &[String]) {
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append(SET_COOKIE, v);
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A short HTML page.
fn page(
    status: StatusCode,
    title: &str,
    message: &str,
    link: Option<(&str, &str)>,
    cookies: &[String],
) -> PortalResponse {
    let link = link
        .map(|(href, text)| format!("<p><a href=\"{}\">{}</a></p>", escape(href), escape(text)))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1><p>{m}</p>{link}</body></html>\n",
        t = escape(title),
        m = escape(message)
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    add_cookies(&mut r, cookies);
    r
}

fn json_response(status: StatusCode, v: &Value) -> PortalResponse {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_pairs(query?.as_bytes())
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `application/x-www-form-urlencoded` pairs (WHATWG URL §5.1), percent-decoded.
fn form_pairs(input: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(input)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl Authenticator {
    /// Serves a request to the portal host, or to `/oauth2/handoff` on any host of another cookie domain.
    pub async fn portal(
        &self,
        auth: &AuthSettings,
        req: Request<Incoming>,
        ctx: &PortalContext<'_>,
    ) -> PortalResponse {
        let Some(o) = auth.oidc() else {
            return page(
                StatusCode::NOT_FOUND,
                "Not found",
                "browser sign-in is not configured ([oidc])",
                None,
                &[],
            );
        };
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .and_then(|h| crate::router::Host::parse(&h).ok())
            .map(|h| h.as_str().to_owned())
            .unwrap_or_default();
        let result = match (req.method().clone(), path.as_str()) {
            (Method::GET | Method::HEAD, "/oauth2/handoff") => {
                self.handoff(o, req.headers(), query.as_deref(), &host, ctx)
                    .await
            }
            (_, "/oauth2/handoff") => Ok(method_not_allowed()),
            (_, _) if host != o.portal => Ok(page(
                StatusCode::NOT_FOUND,
                "Not found",
                "no such page",
                None,
                &[],
            )),
            (Method::GET | Method::HEAD, "/oauth2/start") => {
                self.start(o, req.headers(), query.as_deref(), ctx).await
            }
            (Method::GET | Method::HEAD, "/oauth2/callback") => {
                self.callback(auth, o, req.headers(), query.as_deref(), ctx)
                    .await
            }
            (Method::GET | Method::POST, "/oauth2/sign_out") => {
                self.sign_out(o, req.headers(), query.as_deref(), ctx).await
            }
            (Method::GET | Method::HEAD, "/oauth2/signed-out") => {
                Ok(signed_out(o, query.as_deref(), ctx))
            }
            (Method::GET | Method::HEAD, "/oauth2/userinfo") => {
                self.userinfo(auth, o, req.headers()).await
            }
            (Method::POST, "/oauth2/backchannel-logout") => {
                Ok(self.backchannel_logout(auth, o, req).await)
            }
            (Method::GET | Method::HEAD, "/") => self.home(auth, o, req.headers(), ctx).await,
            (
                _,
                "/oauth2/start"
                | "/oauth2/callback"
                | "/oauth2/signed-out"
                | "/oauth2/userinfo"
                | "/oauth2/backchannel-logout"
                | "/",
            ) => Ok(method_not_allowed()),
            _ => Ok(page(
                StatusCode::NOT_FOUND,
                "Not found",
                "no such page on the sign-in portal",
                None,
                &[],
            )),
        };
        match result {
            Ok(r) => r,
            Err(e) => self.error_page(o, &e, ctx),
        }
    }

    fn error_page(
        &self,
        o: &OidcSettings,
        e: &OidcError,
        ctx: &PortalContext<'_>,
    ) -> PortalResponse {
        let status = e.status();
        if status.is_server_error() {
            tracing::warn!(oidc.issuer = %o.issuer.url, error = %crate::error::chain(e), "sign-in failed");
        } else {
            tracing::info!(oidc.issuer = %o.issuer.url, error = %crate::error::chain(e), "sign-in refused");
        }
        let restart = format!("{}/oauth2/start", o.portal_origin(ctx.https_port));
        page(
            status,
            "Sign-in failed",
            &e.to_string(),
            Some((&restart, "Start again")),
            &[],
        )
    }

    async fn start(
        &self,
        o: &OidcSettings,
        headers: &HeaderMap,
        query: Option<&str>,
        ctx: &PortalContext<'_>,
    ) -> Result<PortalResponse, OidcError> {
        let portal_home = format!("{}/", o.portal_origin(ctx.https_port));
        let rd = match query_param(query, "rd") {
            None => portal_home.clone(),
            Some(rd) if is_allowed_redirect(o, ctx.is_service_host, &rd) => rd,
            Some(_) => {
                tracing::info!("sign-in start refused an rd target outside the configured hosts");
                return Ok(page(
                    StatusCode::BAD_REQUEST,
                    "Refused redirect target",
                    "the address to return to after sign-in is not an https URL of this gateway's hosts or cookie domains",
                    Some((&portal_home, "Go to the sign-in portal")),
                    &[],
                ));
            }
        };
        let now = self.now();
        let (count, since) = o.cookies.loop_count(headers);
        let (count, since) = if now.saturating_sub(since) < LOOP_WINDOW_SECS {
            (count + 1, since)
        } else {
            (1, now)
        };
        if count > LOOP_LIMIT {
            tracing::warn!(oidc.portal = %o.portal, "redirect loop: a browser was sent to sign in {count} times within {LOOP_WINDOW_SECS}s");
            let domains = o.cookie_domains.join(", ");
            return Ok(page(
                StatusCode::LOOP_DETECTED,
                "Sign-in keeps repeating",
                &format!(
                    "this browser was sent to sign in {count} times in a minute without keeping a session. Check that cookies are allowed for {domains}, that the service's host is under one of the cookie domains (oidc.cookie_domains), and that the clocks of this host and the provider agree."
                ),
                Some((&portal_home, "Go to the sign-in portal")),
                &[],
            ));
        }
        let loop_cookie = o.cookies.loop_cookie(count, since);
        // Already signed in on this browser: no trip to the provider.
        if let Some(id) = o.cookies.session_id(headers) {
            let store = self.store(o)?;
            if store.get(&id, now).await?.is_some() {
                return self.land(o, &store, &id, &rd, ctx, vec![loop_cookie]).await;
            }
        }
        let provider = self.provider(o).await?;
        let (url, state_cookie) =
            oidc::start(o, &provider, &rd, &o.redirect_uri(ctx.https_port), now)?;
        Ok(redirect(
            StatusCode::FOUND,
            &url,
            &[state_cookie, loop_cookie],
        ))
    }

    /// Sends a signed-in browser to `rd`, through a hand-off when `rd` is under another cookie domain.
    async fn land(
        &self,
        o: &OidcSettings,
        store: &Store,
        session_id: &str,
        rd: &str,
        ctx: &PortalContext<'_>,
        mut cookies: Vec<String>,
    ) -> Result<PortalResponse, OidcError> {
        let portal_domain = o.cookie_domain_for(&o.portal);
        let target_host = rd
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_owned()))
            .and_then(|a| crate::router::Host::parse(&a).ok());
        let target_domain = target_host
            .as_ref()
            .and_then(|h| o.cookie_domain_for(h.as_str()));
        match (target_host, target_domain) {
            (Some(host), Some(domain)) if Some(domain) != portal_domain => {
                let code = random_id();
                let now = self.now();
                store
                    .claim_once(
                        &format!("handoff:{code}"),
                        session_id,
                        now,
                        now + HANDOFF_TTL_SECS,
                    )
                    .await?;
                let url = url_with(
                    &format!(
                        "{}/oauth2/handoff",
                        origin(host.as_str(), o.external_port.unwrap_or(ctx.https_port))
                    ),
                    &[("code", &code), ("rd", rd)],
                );
                Ok(redirect(StatusCode::FOUND, &url, &cookies))
            }
            _ => {
                cookies.push(o.cookies.loop_cookie(0, 0));
                Ok(redirect(StatusCode::FOUND, rd, &cookies))
            }
        }
    }

    async fn handoff(
        &self,
        o: &OidcSettings,
        _headers: &HeaderMap,
        query: Option<&str>,
        host: &str,
        ctx: &PortalContext<'_>,
    ) -> Result<PortalResponse, OidcError> {
        let (Some(code), Some(rd)) = (query_param(query, "code"), query_param(query, "rd")) else {
            return Err(OidcError::BadCallback);
        };
        let Some(domain) = o.cookie_domain_for(host) else {
            return Err(OidcError::BadCallback);
        };
        if !is_allowed_redirect(o, ctx.is_service_host, &rd) {
            return Err(OidcError::BadCallback);
        }
        let store = self.store(o)?;
        let now = self.now();
        let Some(session_id) = store.take_once(&format!("handoff:{code}"), now).await? else {
            return Err(OidcError::StateReplayed);
        };
        let Some(session) = store.get(&session_id, now).await? else {
            return Err(OidcError::StateMissing);
        };
        // The cookie lives as long as the session may; idle expiry is enforced on the server.
        let max_age = std::time::Duration::from_secs(
            (session.created_at + o.max_lifetime.as_secs()).saturating_sub(now),
        );
        let cookie = o.cookies.session_cookie(&session_id, Some(domain), max_age);
        Ok(redirect(StatusCode::FOUND, &rd, &[cookie]))
    }

    async fn callback(
        &self,
        auth: &AuthSettings,
        o: &OidcSettings,
        headers: &HeaderMap,
        query: Option<&str>,
        ctx: &PortalContext<'_>,
    ) -> Result<PortalResponse, OidcError> {
        let q = CallbackQuery {
            code: query_param(query, "code"),
            state: query_param(query, "state"),
            error: query_param(query, "error"),
            error_description: query_param(query, "error_description"),
        };
        if let Some(error) = q.error.clone() {
            return Err(OidcError::Provider {
                error,
                description: q.error_description.clone(),
            });
        }
        let now = self.now();
        let login = oidc::login_state(o, headers, &q, now)?;
        let code = q.code.as_deref().ok_or(OidcError::BadCallback)?;
        let store = self.store(o)?;
        if !store
            .claim_once(
                &format!("state:{}", login.state),
                "1",
                now,
                now + super::session::LOGIN_TTL_SECS,
            )
            .await?
        {
            return Err(OidcError::StateReplayed);
        }
        let provider = self.provider(o).await?;
        let redirect_uri = o.redirect_uri(ctx.https_port);
        let tokens =
            oidc::exchange(o, &provider, code, &login.verifier, &redirect_uri, now).await?;
        let id_token = tokens.id_token.as_deref().ok_or(OidcError::IdToken {
            reason: "the token response has no id_token (is `openid` among oidc.scopes?)".into(),
        })?;
        let mut claims = self.verify_provider_jwt(auth, o, id_token).await?;
        oidc::check_id_token(o, &claims, Some(&login.nonce), now as i64)?;
        if o.userinfo {
            oidc::merge_userinfo(o, &provider, &tokens.access_token, &mut claims).await?;
        }
        let session = oidc::session_from(o, claims, &tokens, None, now);
        let id = random_id();
        store
            .put(&id, &session, now, oidc::session_deadline(o, &session, now))
            .await?;
        tracing::info!(oidc.issuer = %o.issuer.url, auth.sub = %session.sub, "signed in");
        // The cookie lives as long as the session may; idle expiry is enforced on the server.
        let max_age = o.max_lifetime;
        let cookies = vec![
            o.cookies
                .session_cookie(&id, o.cookie_domain_for(&o.portal), max_age),
            o.cookies.clear_login_cookie(&login.state),
        ];
        self.land(o, &store, &id, &login.rd, ctx, cookies).await
    }

    async fn sign_out(
        &self,
        o: &OidcSettings,
        headers: &HeaderMap,
        query: Option<&str>,
        ctx: &PortalContext<'_>,
    ) -> Result<PortalResponse, OidcError> {
        let rd =
            query_param(query, "rd").filter(|rd| is_allowed_redirect(o, ctx.is_service_host, rd));
        let store = self.store(o)?;
        let now = self.now();
        let mut id_token = None;
        if let Some(id) = o.cookies.session_id(headers) {
            if let Some(s) = store.get(&id, now).await? {
                id_token = s.id_token.clone();
            }
            self.sessions_ended(EndedSessions::One(&id));
            store.delete(&id).await?;
            tracing::info!(oidc.issuer = %o.issuer.url, "signed out");
        }
        let cookies: Vec<String> = o
            .cookie_domains
            .iter()
            .map(|d| o.cookies.clear_session_cookie(Some(d)))
            .collect();
        let signed_out = format!("{}/oauth2/signed-out", o.portal_origin(ctx.https_port));
        let provider = self.provider(o).await.ok();
        let target = provider.as_deref().and_then(|p| {
            let url = oidc::end_session_url(p, id_token.as_deref(), &signed_out)?;
            Some(match &rd {
                Some(rd) => url_with(&url, &[("state", rd)]),
                None => url,
            })
        });
        Ok(redirect(
            StatusCode::FOUND,
            target.as_deref().or(rd.as_deref()).unwrap_or(&signed_out),
            &cookies,
        ))
    }

    async fn userinfo(
        &self,
        auth: &AuthSettings,
        o: &OidcSettings,
        headers: &HeaderMap,
    ) -> Result<PortalResponse, OidcError> {
        let store = self.store(o)?;
        let now = self.now();
        let session = match o.cookies.session_id(headers) {
            Some(id) => store.get(&id, now).await?,
            None => None,
        };
        let Some(s) = session else {
            return Ok(json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "not signed in"}),
            ));
        };
        let id = super::identity::Identity::from_claims(
            std::sync::Arc::clone(&s.claims),
            &o.issuer,
            None,
        );
        let _ = auth;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "sub": id.subject, "user": id.user, "email": id.email, "name": id.name, "groups": id.groups,
                "issuer": id.issuer, "signed_in_at": s.created_at, "expires_at": oidc::session_deadline(o, &s, now),
            }),
        ))
    }

    async fn home(
        &self,
        _auth: &AuthSettings,
        o: &OidcSettings,
        headers: &HeaderMap,
        ctx: &PortalContext<'_>,
    ) -> Result<PortalResponse, OidcError> {
        let origin = o.portal_origin(ctx.https_port);
        let store = self.store(o)?;
        let session = match o.cookies.session_id(headers) {
            Some(id) => store.get(&id, self.now()).await?,
            None => None,
        };
        Ok(match session {
            Some(s) => {
                let who = super::identity::Identity::from_claims(
                    std::sync::Arc::clone(&s.claims),
                    &o.issuer,
                    None,
                );
                page(
                    StatusCode::OK,
                    "Signed in",
                    &format!("signed in as {}", who.user),
                    Some((&format!("{origin}/oauth2/sign_out"), "Sign out")),
                    &[],
                )
            }
            None => page(
                StatusCode::OK,
                "Not signed in",
                "you are not signed in",
                Some((&format!("{origin}/oauth2/start"), "Sign in")),
                &[],
            ),
        })
    }

    async fn backchannel_logout(
        &self,
        auth: &AuthSettings,
        o: &OidcSettings,
        req: Request<Incoming>,
    ) -> PortalResponse {
        let bad = |reason: &str| {
            tracing::info!(oidc.issuer = %o.issuer.url, reason, "back-channel logout refused");
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request"}),
            )
        };
        let body = match Limited::new(req.into_body(), LOGOUT_BODY_LIMIT)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return bad("unreadable or too large body"),
        };
        let form = form_pairs(&body);
        let Some(token) = form
            .into_iter()
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v)
        else {
            return bad("no logout_token");
        };
        let claims = match self.verify_provider_jwt(auth, o, &token).await {
            Ok(c) => c,
            Err(e) => return bad(&e.to_string()),
        };
        let (sid, sub) = match oidc::check_logout_claims(o, &claims, self.now() as i64) {
            Ok(x) => x,
            Err(e) => return bad(&e.to_string()),
        };
        let store = match self.store(o) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "back-channel logout: session store unavailable");
                return json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "temporarily_unavailable"}),
                );
            }
        };
        // Back-Channel Logout §2.7: with a sid, only that provider session ends; otherwise every session of sub.
        let (by_sid, by_sub) = match &sid {
            Some(s) => (Some(s.as_str()), None),
            None => (None, sub.as_deref()),
        };
        self.sessions_ended(EndedSessions::Provider {
            issuer: &o.issuer.url,
            sub: sub.as_deref(),
        });
        match store.delete_matching(&o.issuer.url, by_sid, by_sub).await {
            Ok(n) => {
                tracing::info!(oidc.issuer = %o.issuer.url, sessions.ended = n, "back-channel logout");
                let mut r = Response::new(Full::new(Bytes::new()));
                r.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "back-channel logout: session store failed");
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "temporarily_unavailable"}),
                )
            }
        }
    }
}

fn signed_out(o: &OidcSettings, query: Option<&str>, ctx: &PortalContext<'_>) -> PortalResponse {
    if let Some(rd) =
        query_param(query, "state").filter(|rd| is_allowed_redirect(o, ctx.is_service_host, rd))
    {
        return redirect(StatusCode::FOUND, &rd, &[]);
    }
    let start = format!("{}/oauth2/start", o.portal_origin(ctx.https_port));
    page(
        StatusCode::OK,
        "Signed out",
        "you are signed out",
        Some((&start, "Sign in again")),
        &[],
    )
}

fn method_not_allowed() -> PortalResponse {
    page(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "this endpoint does not accept this method",
        None,
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(
            query_param(Some("x=a%20b+c%2F"), "x").as_deref(),
            Some("a b c/")
        );
        assert_eq!(
            query_param(Some("x=bad%zz%"), "x").as_deref(),
            Some("bad%zz%")
        );
        assert_eq!(
            query_param(Some("rd=https%3A%2F%2Fa.test%2F&x=1"), "rd").as_deref(),
            Some("https://a.test/")
        );
    }

    #[test]
    fn browser_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml"),
        );
        assert!(is_browser(&h));
        h.insert(
            "x-requested-with",
            HeaderValue::from_static("XMLHttpRequest"),
        );
        assert!(!is_browser(&h));
        let mut h = HeaderMap::new();
        h.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_browser(&h));
    }
}
