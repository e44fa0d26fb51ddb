//! The built-in application: a guestbook on PostgreSQL, writing to the primary and
//! reading from replicas, with read-your-writes through a token cookie/header.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use rampart_dbroute::{Role, RouteError, Router, Token};
use serde::{Deserialize, Serialize};

/// Response header carrying the read-your-writes token (also accepted on requests).
pub const TOKEN_HEADER: &str = "x-rampart-token";
/// Cookie carrying the same token for browsers.
pub const TOKEN_COOKIE: &str = "rampart_token";

pub const MAX_AUTHOR_CHARS: usize = 64;
pub const MAX_TEXT_CHARS: usize = 2000;
const MAX_BODY_BYTES: usize = 16 * 1024;
const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

/// The schema, one migration per entry; applied in order, each at most once.
const MIGRATIONS: [(i32, &str); 2] = [
    (
        1,
        "CREATE TABLE messages (
        id bigserial PRIMARY KEY,
        author text NOT NULL,
        text text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())",
    ),
    // A write's key, so that sending it again (after a failover cut the connection with
    // the outcome unknown) never stores it twice.
    (
        2,
        "ALTER TABLE messages ADD COLUMN idempotency_key text UNIQUE",
    ),
];

/// How long a write is held across a failover (no primary, or the connection to the
/// old one broken or silent) before the client gets a 503: a few seconds longer than a
/// failover. No try waits on one connection longer than the router's call bound
/// (`[web.database]`'s `call_timeout`, ttl / 2 of the db lease: 1.5 s by default), so a
/// write sent to a primary that froze is sent again, on a fresh connection to the new
/// primary, well within the hold.
pub const WRITE_HOLD: Duration = Duration::from_secs(8);

/// How a request is held across a failover ([`Guestbook::retrying`]).
#[derive(Clone, Copy)]
struct Hold {
    what: &'static str,
    /// Tries again while this has not passed since the first try.
    window: Duration,
    /// Also cut a try at the window's end (a write: 503 then, never later).
    cut: bool,
    /// Whether an error may go away on another try.
    retry: fn(&RouteError) -> bool,
}

/// A read is tried again on other nodes for 3 s when the one it went to fails or is
/// silent (each try bounded by the router's call bound). Not cut: a read behind a token
/// may wait for the new primary.
const READ_HOLD: Hold = Hold {
    what: "read",
    window: Duration::from_secs(3),
    cut: false,
    retry: RouteError::is_unavailable,
};

/// Request header naming a write; the same key sent again returns the stored message.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
const MAX_KEY_CHARS: usize = 200;
/// Key of the advisory lock that serialises migrations across web nodes.
const MIGRATION_LOCK: i64 = 0x7261_6d70_6172_7401;

pub struct Guestbook {
    pub router: Router,
    migrated: AtomicBool,
    /// When a primary was last known (checked by readiness).
    primary_seen: std::sync::Mutex<Option<std::time::Instant>>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct Message {
    pub id: i64,
    pub author: String,
    pub text: String,
    pub created_at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    pub author: String,
    pub text: String,
}

/// Check a new message; returns the trimmed author and text.
pub fn validate(m: &NewMessage) -> Result<(String, String), String> {
    let author = m.author.trim();
    let text = m.text.trim();
    if author.is_empty() {
        return Err("author must not be empty".into());
    }
    if author.chars().count() > MAX_AUTHOR_CHARS {
        return Err(format!(
            "author must be at most {MAX_AUTHOR_CHARS} characters"
        ));
    }
    if author.chars().any(char::is_control) {
        return Err("author must not contain control characters".into());
    }
    if text.is_empty() {
        return Err("text must not be empty".into());
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(format!("text must be at most {MAX_TEXT_CHARS} characters"));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err("text must not contain control characters".into());
    }
    Ok((author.to_string(), text.to_string()))
}

const SELECT_COLS: &str =
    "id, author, text, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn row_to_message(r: &tokio_postgres::Row) -> Result<Message, tokio_postgres::Error> {
    Ok(Message {
        id: r.try_get(0)?,
        author: r.try_get(1)?,
        text: r.try_get(2)?,
        created_at: r.try_get(3)?,
    })
}

/// A fresh key for a write the client did not name: 128 random bits.
fn new_key() -> String {
    format!("rampart-{:032x}", rand::random::<u128>())
}

/// Whether a failed write may be sent again: no primary yet, a connection lost, or the
/// node turned out read-only or shutting down (a failover under way). Other SQL errors
/// (a constraint, a bad value) are the write's own and final.
fn retryable(e: &RouteError) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_unavailable() {
        return true;
    }
    match e {
        RouteError::Db(db) => db.code().is_some_and(|c| {
            *c == SqlState::READ_ONLY_SQL_TRANSACTION
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || c.code().starts_with("08")
        }),
        _ => false,
    }
}

/// The client's `Idempotency-Key`: at most 200 visible ASCII characters.
pub fn request_key(h: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = h.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let bad = || {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters"),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > MAX_KEY_CHARS || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

/// A replica that has not replayed the migrations yet (just after the first start-up):
/// the read goes to the primary instead.
fn schema_not_replayed(e: &RouteError, role: Role) -> bool {
    role == Role::Replica
        && matches!(e, RouteError::Db(db)
            if db.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE))
}

impl Guestbook {
    pub fn new(router: Router) -> Arc<Guestbook> {
        Arc::new(Guestbook {
            router,
            migrated: AtomicBool::new(false),
            primary_seen: std::sync::Mutex::new(None),
        })
    }

    pub fn is_migrated(&self) -> bool {
        self.migrated.load(Ordering::Relaxed)
    }

    /// Whether this node can serve the guestbook: migrated, and a primary is known or
    /// was known within [`WRITE_HOLD`] (a failover under way: reads go on on the
    /// replicas and writes are held, so the balancers must keep sending).
    pub fn can_serve(&self) -> bool {
        if !self.is_migrated() {
            return false;
        }
        let now = std::time::Instant::now();
        let Ok(mut seen) = self.primary_seen.lock() else {
            return false;
        };
        if self.router.topology().primary().is_some() {
            *seen = Some(now);
            return true;
        }
        seen.is_some_and(|t| now.duration_since(t) < WRITE_HOLD)
    }

    /// Apply the migrations, retrying with backoff until the primary is reachable.
    pub async fn migrate_until_done(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.migrate().await {
                Ok(applied) => {
                    tracing::info!(applied, "guestbook schema ready");
                    self.migrated.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "guestbook migrations failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Apply pending migrations in one transaction under an advisory lock (idempotent,
    /// safe when several web nodes start at once). Returns how many were applied.
    pub async fn migrate(&self) -> Result<usize, RouteError> {
        let mut w = self.router.write().await?;
        // Every statement bounded like the connection's own calls.
        let b = w.bound();
        let tx = b.call(w.transaction()).await?;
        b.call(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]))
            .await?;
        b.call(tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now())",
        ))
        .await?;
        let mut applied = 0;
        for (version, sql) in MIGRATIONS {
            let done = b
                .call(tx.query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[&version],
                ))
                .await?
                .is_some();
            if !done {
                b.call(tx.batch_execute(sql)).await?;
                b.call(tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[&version],
                ))
                .await?;
                applied += 1;
            }
        }
        b.call(tx.commit()).await?;
        Ok(applied)
    }

    /// Insert a message on the primary; returns it, the node and the token.
    ///
    /// The write carries `key` (the client's `Idempotency-Key`, else one made here) and
    /// is held across a failover for up to [`WRITE_HOLD`]: while no primary is known it
    /// waits for one, and when the connection breaks with the outcome unknown (the old
    /// primary died after the INSERT was sent) it is sent again to the new primary,
    /// where the key's unique index turns a write that did commit into a read of it.
    /// The same when the primary stops answering (frozen: the connection open, silent):
    /// a try is given up as soon as the topology stops showing its node as the primary
    /// (the frozen primary's lease lapsed), and each call after the router's call bound
    /// anyway; the connection is discarded and the write goes again to whichever primary
    /// is current. Every try ends with the hold. A client sees latency, not an error, and never two copies.
    pub async fn post(
        &self,
        author: &str,
        text: &str,
        key: Option<&str>,
    ) -> Result<(Message, String, Token), RouteError> {
        let key = key.map_or_else(new_key, str::to_string);
        let hold = Hold {
            what: "write",
            window: WRITE_HOLD,
            cut: true,
            retry: retryable,
        };
        // Each try is also given up the moment its primary stops being one (a frozen
        // primary's lease lapsing): the write goes on to the new one at once.
        self.retrying(hold, || {
            self.router
                .on_current_primary(self.post_once(author, text, &key))
        })
        .await
    }

    /// The guestbook's one retry path: `attempt` until it succeeds, fails for good, or
    /// the hold's window has passed, the topology looked at again at once between tries.
    async fn retrying<T, F, Fut>(&self, hold: Hold, mut attempt: F) -> Result<T, RouteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RouteError>>,
    {
        let deadline = tokio::time::Instant::now() + hold.window;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let r = if hold.cut {
                // Dropped at the deadline: a call half-way discards its connection.
                tokio::time::timeout_at(deadline, attempt())
                    .await
                    .unwrap_or(Err(RouteError::NoPrimary))
            } else {
                attempt().await
            };
            match r {
                Ok(v) => {
                    if tries > 1 {
                        tracing::info!(
                            tries,
                            what = hold.what,
                            "held across a failover: went through"
                        );
                    }
                    return Ok(v);
                }
                Err(e) if (hold.retry)(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::info!(tries, what = hold.what, error = %e, "not done (no primary, node gone or silent): trying again");
                    self.router.refresh();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn post_once(
        &self,
        author: &str,
        text: &str,
        key: &str,
    ) -> Result<(Message, String, Token), RouteError> {
        let w = self.router.write().await?;
        let row = w
            .query_opt(
                &format!(
                    "INSERT INTO messages (author, text, idempotency_key) VALUES ($1, $2, $3) \
                     ON CONFLICT (idempotency_key) DO NOTHING RETURNING {SELECT_COLS}"
                ),
                &[&author, &text, &key],
            )
            .await?;
        let row = match row {
            Some(r) => r,
            // Stored already (an earlier attempt committed): that message.
            None => {
                w.query_one(
                    &format!("SELECT {SELECT_COLS} FROM messages WHERE idempotency_key = $1"),
                    &[&key],
                )
                .await?
            }
        };
        let m = row_to_message(&row)?;
        let token = w.token().await?;
        Ok((m, w.node().to_string(), token))
    }

    /// [`Guestbook::list_once`], sent again to another node when the one it went to is
    /// gone (a replica or the primary just died): reads go on through a failover.
    pub async fn list(
        &self,
        limit: i64,
        token: Option<Token>,
    ) -> Result<(Vec<Message>, String, Role), RouteError> {
        self.retrying(READ_HOLD, || self.list_once(limit, token))
            .await
    }

    async fn list_once(
        &self,
        limit: i64,
        token: Option<Token>,
    ) -> Result<(Vec<Message>, String, Role), RouteError> {
        let sql = format!("SELECT {SELECT_COLS} FROM messages ORDER BY id DESC LIMIT $1");
        let mut r = self.router.read(token).await?;
        let rows = match r.query(&sql, &[&limit]).await {
            Err(e) if schema_not_replayed(&e, r.role()) => {
                r = self.router.read_primary().await?;
                r.query(&sql, &[&limit]).await?
            }
            other => other?,
        };
        let msgs = rows
            .iter()
            .map(row_to_message)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((msgs, r.node().to_string(), r.role()))
    }

    /// One message, read again elsewhere like [`Guestbook::list`].
    pub async fn get(
        &self,
        id: i64,
        token: Option<Token>,
    ) -> Result<(Option<Message>, String, Role), RouteError> {
        self.retrying(READ_HOLD, || self.get_once(id, token)).await
    }

    async fn get_once(
        &self,
        id: i64,
        token: Option<Token>,
    ) -> Result<(Option<Message>, String, Role), RouteError> {
        let sql = format!("SELECT {SELECT_COLS} FROM messages WHERE id = $1");
        let mut r = self.router.read(token).await?;
        let row = match r.query_opt(&sql, &[&id]).await {
            Err(e) if schema_not_replayed(&e, r.role()) => {
                r = self.router.read_primary().await?;
                r.query_opt(&sql, &[&id]).await?
            }
            other => other?,
        };
        let m = row.as_ref().map(row_to_message).transpose()?;
        Ok((m, r.node().to_string(), r.role()))
    }
}

// === HTTP handlers ===

fn json_error(status: StatusCode, msg: &str) -> Response {
    let body = serde_json::json!({ "error": msg }).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A client error answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.0, &self.1)
    }
}

fn db_error(e: &RouteError) -> Response {
    tracing::warn!(error = %e, "guestbook database error");
    let mut r = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "database unavailable, retry shortly",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn with_db_headers(mut r: Response, node: &str, role: Role) -> Response {
    if let Ok(v) = HeaderValue::from_str(node) {
        r.headers_mut().insert("x-db-node", v);
    }
    r.headers_mut()
        .insert("x-db-role", HeaderValue::from_static(role.as_str()));
    r
}

fn with_token(mut r: Response, token: Token) -> Response {
    let t = token.to_string();
    if let Ok(v) = HeaderValue::from_str(&t) {
        r.headers_mut().insert(TOKEN_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{TOKEN_COOKIE}={t}; Path=/; Max-Age=300; HttpOnly; SameSite=Lax"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The token a request presents: the header (a malformed one is a 400), else the
/// cookie (a malformed cookie is ignored: it may be stale from another version).
pub fn request_token(h: &HeaderMap) -> Result<Option<Token>, ApiError> {
    if let Some(v) = h.get(TOKEN_HEADER) {
        let bad = || ApiError(StatusCode::BAD_REQUEST, "malformed X-Rampart-Token".into());
        let s = v.to_str().map_err(|_| bad())?;
        return s.parse::<Token>().map(Some).map_err(|_| bad());
    }
    for v in h.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for kv in s.split(';') {
            if let Some((k, val)) = kv.trim().split_once('=') {
                if k == TOKEN_COOKIE {
                    if let Ok(t) = val.parse::<Token>() {
                        return Ok(Some(t));
                    }
                }
            }
        }
    }
    Ok(None)
}

pub async fn api_post(State(gb): State<Arc<Guestbook>>, req: Request) -> Response {
    let key = match request_key(req.headers()) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large (at most 16 KiB)",
            )
        }
    };
    if std::str::from_utf8(&body).is_err() {
        return json_error(StatusCode::BAD_REQUEST, "body is not valid UTF-8");
    }
    let m: NewMessage = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "body must be a JSON object {{\"author\": string, \"text\": string}}: {e}"
                ),
            )
        }
    };
    let (author, text) = match validate(&m) {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    match gb.post(&author, &text, key.as_deref()).await {
        Ok((msg, node, token)) => {
            let r = (
                StatusCode::CREATED,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                    (
                        header::LOCATION,
                        HeaderValue::from_str(&format!("/api/messages/{}", msg.id))
                            .unwrap_or(HeaderValue::from_static("/api/messages")),
                    ),
                ],
                serde_json::to_string(&msg).unwrap_or_default(),
            )
                .into_response();
            with_token(with_db_headers(r, &node, Role::Primary), token)
        }
        Err(e) => db_error(&e),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
}

fn parse_limit(q: &ListQuery) -> Result<i64, ApiError> {
    match &q.limit {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("limit must be an integer from 1 to {MAX_LIMIT}"),
            )),
        },
    }
}

pub async fn api_list(
    State(gb): State<Arc<Guestbook>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Query(q)) = q else {
        return json_error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let limit = match parse_limit(&q) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let token = match request_token(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match gb.list(limit, token).await {
        Ok((msgs, node, role)) => {
            let r = (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                serde_json::to_string(&msgs).unwrap_or_default(),
            )
                .into_response();
            with_db_headers(r, &node, role)
        }
        Err(e) => db_error(&e),
    }
}

pub async fn api_get(
    State(gb): State<Arc<Guestbook>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id = match id.parse::<i64>() {
        Ok(i) if i > 0 => i,
        _ => return json_error(StatusCode::BAD_REQUEST, "id must be a positive integer"),
    };
    let token = match request_token(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match gb.get(id, token).await {
        Ok((Some(m), node, role)) => {
            let r = (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                serde_json::to_string(&m).unwrap_or_default(),
            )
                .into_response();
            with_db_headers(r, &node, role)
        }
        Ok((None, node, role)) => with_db_headers(
            json_error(StatusCode::NOT_FOUND, "no such message"),
            &node,
            role,
        ),
        Err(e) => db_error(&e),
    }
}

/// The HTML page: a form and the latest messages.
pub async fn page(State(gb): State<Arc<Guestbook>>, headers: HeaderMap) -> Response {
    let token = request_token(&headers).unwrap_or(None);
    let (msgs, node, role) = match gb.list(DEFAULT_LIMIT, token).await {
        Ok(v) => v,
        Err(e) => return db_error(&e),
    };
    let flash = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("rampart_flash=1"));
    let mut html = String::with_capacity(4096);
    html.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>rampart guestbook</title><style>\
         body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}\
         form{display:grid;gap:.5rem;margin-bottom:2rem}textarea{min-height:5rem}\
         li{margin:.75rem 0;list-style:none;border-left:3px solid #888;padding-left:.75rem}\
         small{color:#666}</style></head><body>\n<h1>Guestbook</h1>\n",
    );
    if flash {
        html.push_str("<p><strong>Thanks, your message is below.</strong></p>\n");
    }
    html.push_str(
        "<form method=\"post\" action=\"/\">\
         <input name=\"author\" placeholder=\"Your name\" maxlength=\"64\" required>\
         <textarea name=\"text\" placeholder=\"Your message\" maxlength=\"2000\" required></textarea>\
         <button type=\"submit\">Sign the guestbook</button></form>\n<ul>\n",
    );
    for m in &msgs {
        html.push_str(&format!(
            "<li><strong>{}</strong> <small>{}</small><br>{}</li>\n",
            escape(&m.author),
            escape(&m.created_at),
            escape(&m.text).replace('\n', "<br>")
        ));
    }
    if msgs.is_empty() {
        html.push_str("<li>No messages yet: be the first.</li>\n");
    }
    html.push_str(&format!(
        "</ul>\n<p><small>database node {} ({})</small></p>\n</body></html>\n",
        escape(&node),
        role.as_str()
    ));
    let r = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        html,
    )
        .into_response();
    with_db_headers(r, &node, role)
}

#[derive(Debug, Deserialize)]
pub struct FormMessage {
    author: String,
    text: String,
}

/// The page's form: insert, then 303 back to the page with the token cookie set, so the
/// reload reads its own write.
pub async fn form_post(
    State(gb): State<Arc<Guestbook>>,
    form: Result<axum::Form<FormMessage>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::Form(f)) = form else {
        return html_error(
            StatusCode::BAD_REQUEST,
            "The form needs an author and a text.",
        );
    };
    let (author, text) = match validate(&NewMessage {
        author: f.author,
        text: f.text,
    }) {
        Ok(v) => v,
        Err(e) => return html_error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    match gb.post(&author, &text, None).await {
        Ok((_, node, token)) => {
            let mut r = Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, "/")
                .header(
                    header::SET_COOKIE,
                    "rampart_flash=1; Path=/; Max-Age=5; SameSite=Lax",
                )
                .body(Body::empty())
                .unwrap_or_default();
            r = with_db_headers(r, &node, Role::Primary);
            with_token(r, token)
        }
        Err(e) => db_error(&e),
    }
}

fn html_error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))],
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>error</title><p>{}</p><p><a href=\"/\">Back</a></p>\n",
            escape(msg)
        ),
    )
        .into_response()
}

/// HTML-escape text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = |a: &str, t: &str| {
            validate(&NewMessage {
                author: a.into(),
                text: t.into(),
            })
        };
        assert_eq!(ok(" ann ", " hi\n"), Ok(("ann".into(), "hi".into())));
        assert!(ok("", "x").is_err());
        assert!(ok("a", "   ").is_err());
        assert!(ok(&"é".repeat(64), "x").is_ok());
        assert!(ok(&"é".repeat(65), "x").is_err());
        assert!(ok("a", &"x".repeat(2001)).is_err());
        assert!(ok("a\u{7}", "x").is_err());
        assert!(ok("a", "x\u{0}y").is_err());
    }

    #[test]
    fn tokens_from_header_or_cookie() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; rampart_token=1-ff"),
        );
        assert_eq!(
            request_token(&h).ok().flatten(),
            Some(Token {
                timeline: 1,
                lsn: 255
            })
        );
        h.insert(TOKEN_HEADER, HeaderValue::from_static("2-10"));
        assert_eq!(
            request_token(&h).ok().flatten(),
            Some(Token {
                timeline: 2,
                lsn: 16
            })
        );
        h.insert(TOKEN_HEADER, HeaderValue::from_static("junk"));
        assert!(request_token(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("rampart_token=junk"),
        );
        assert_eq!(request_token(&h).ok().flatten(), None);
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
