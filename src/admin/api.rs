//! The admin API's endpoints: routing a parsed request to its answer.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /live` | 200 while the process runs |
//! | `GET /ready` | 200, or 503 with the reason (stopping, draining, a pool without a usable server) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/pools` | JSON: pools, servers, state, health, weights, active connections |
//! | `POST /api/pools/{pool}/servers/{server}/{drain,enable,disable}` | JSON: the server's new state |
//! | `POST /api/drain`, `POST /api/undrain` | JSON: whether the process is draining |
//!
//! `HEAD` is answered wherever `GET` is. Reads only the published table and the metric blocks;
//! server commands go to the prober, the process-wide drain flag lives in [`Status`].

use std::time::Duration;

use serde_json::json;

use super::http::{HttpError, Method, Request, Response, PROMETHEUS};
use super::{AdminContext, Status};
use crate::health::{CommandError, ServerCommand};
use crate::table::BackendTable;

/// How long a server command may wait for the prober.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to `request`.
pub async fn handle(ctx: &AdminContext, request: &Request) -> Response {
    let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
    let method = request.method;
    match segments[..] {
        ["live"] => get(method, || Response::text(200, "alive")),
        ["ready"] => get(method, || ready(ctx)),
        ["metrics"] => get(method, || metrics(ctx)),
        ["api", "pools"] => get(method, || Response::json(200, &pools(ctx))),
        ["api", "drain"] => post(method, || drain(&ctx.status, true)),
        ["api", "undrain"] => post(method, || drain(&ctx.status, false)),
        ["api", "pools", pool, "servers", server, command] => match ServerCommand::parse(command) {
            None => not_found(),
            Some(_) if method != Method::Post => not_allowed("POST"),
            Some(command) => server_command(ctx, pool, server, command).await,
        },
        _ => not_found(),
    }
}

fn get(method: Method, answer: impl FnOnce() -> Response) -> Response {
    match method {
        Method::Get | Method::Head => answer(),
        _ => not_allowed("GET, HEAD"),
    }
}

fn post(method: Method, answer: impl FnOnce() -> Response) -> Response {
    match method {
        Method::Post => answer(),
        _ => not_allowed("POST"),
    }
}

fn not_found() -> Response {
    Response::error(&HttpError { status: 404, reason: "no such endpoint; see /api/pools, /ready, /metrics".into() })
}

fn not_allowed(allow: &'static str) -> Response {
    let mut response = Response::text(405, &format!("use {allow}"));
    response.allow = Some(allow);
    response
}

/// Why the process is not ready, or `None` when it is: the listeners are open (they are bound
/// before this API starts, and close when ringlb stops), it is not draining, and every pool has
/// a usable server.
pub fn not_ready(status: &Status, table: &BackendTable) -> Option<String> {
    if status.stopping() {
        return Some("stopping: the listeners are closed".to_owned());
    }
    if status.draining() {
        return Some("draining".to_owned());
    }
    let pool = table.pools.iter().find(|p| !p.servers.iter().any(|s| s.usable()))?;
    Some(format!("pool {}: no usable server", pool.name))
}

fn ready(ctx: &AdminContext) -> Response {
    match not_ready(&ctx.status, &ctx.table.load()) {
        None => Response::text(200, "ready"),
        Some(reason) => Response::text(503, &reason),
    }
}

fn metrics(ctx: &AdminContext) -> Response {
    let text = ctx.metrics.render(&ctx.table.load().scrape_view(), ctx.status.draining());
    Response { status: 200, content_type: PROMETHEUS, body: text.into_bytes(), allow: None }
}

fn pools(ctx: &AdminContext) -> serde_json::Value {
    let table = ctx.table.load();
    let pools: Vec<_> = table
        .pools
        .iter()
        .map(|pool| {
            let servers: Vec<_> = pool
                .servers
                .iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "addr": s.addr.to_string(),
                        "state": s.state.name(),
                        "health": s.stats.health().label(),
                        "weight": s.weight,
                        "effective_weight": s.effective_weight(),
                        "active_connections": s.stats.totals().active,
                    })
                })
                .collect();
            json!({
                "name": pool.name,
                "usable_servers": pool.servers.iter().filter(|s| s.usable()).count(),
                "on_all_down": pool.on_all_down.name(),
                "servers": servers,
            })
        })
        .collect();
    let not_ready = not_ready(&ctx.status, &table);
    json!({
        "ready": not_ready.is_none(),
        "not_ready_reason": not_ready,
        "draining": ctx.status.draining(),
        "config_sha256": ctx.metrics.config_sha256(),
        "pools": pools,
    })
}

fn drain(status: &Status, draining: bool) -> Response {
    status.set_draining(draining);
    tracing::info!(
        "{} (admin API)",
        if draining { "draining: /ready answers 503, connections are still served" } else { "drain ended" }
    );
    Response::json(200, &json!({ "draining": draining }))
}

async fn server_command(ctx: &AdminContext, pool: &str, server: &str, command: ServerCommand) -> Response {
    let result = tokio::time::timeout(COMMAND_TIMEOUT, ctx.servers.apply(pool, server, command)).await;
    match result {
        Ok(Ok(change)) => Response::json(
            200,
            &json!({
                "pool": change.pool,
                "server": change.server,
                "state": change.state.name(),
                "health": change.health.label(),
            }),
        ),
        Ok(Err(e @ (CommandError::NoSuchPool(_) | CommandError::NoSuchServer { .. }))) => {
            Response::text(404, &e.to_string())
        }
        Ok(Err(e @ (CommandError::Busy | CommandError::Stopped))) => Response::text(503, &e.to_string()),
        Err(_) => Response::text(503, "the health prober did not answer in time"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::table::{PoolHandles, ServerState};

    fn table(states: &[[ServerState; 2]]) -> BackendTable {
        let mut text = "[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"p0\"\n".to_owned();
        for p in 0..states.len() {
            text += &format!("[[pools.p{p}.servers]]\naddr = \"127.0.0.1:9001\"\n");
            text += &format!("[[pools.p{p}.servers]]\naddr = \"127.0.0.1:9002\"\n");
        }
        let config = crate::config::parse(&text, Path::new("x.toml")).expect("valid");
        let handles = vec![PoolHandles::default(); states.len()];
        BackendTable::build(&config, 1, &handles, None, |p, s| (states[p][s], None)).expect("valid pools")
    }

    #[test]
    fn ready_needs_a_usable_server_in_every_pool_and_no_drain() {
        use ServerState::*;
        let status = Status::default();
        assert_eq!(not_ready(&status, &table(&[[Up, Down], [Down, Up]])), None);
        assert_eq!(
            not_ready(&status, &table(&[[Up, Down], [Down, Draining]])),
            Some("pool p1: no usable server".to_owned())
        );
        assert_eq!(not_ready(&status, &table(&[[Disabled, Down]])), Some("pool p0: no usable server".to_owned()));
        status.set_draining(true);
        assert_eq!(not_ready(&status, &table(&[[Up, Up]])), Some("draining".to_owned()));
        status.set_draining(false);
        assert_eq!(not_ready(&status, &table(&[[Up, Up]])), None);
        status.set_stopping();
        assert_eq!(not_ready(&status, &table(&[[Up, Up]])), Some("stopping: the listeners are closed".to_owned()));
    }
}
