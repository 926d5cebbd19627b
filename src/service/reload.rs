//! Config reload (SIGHUP): what a reload can apply and what needs a restart, starting the new
//! generation's pools (continuing the statistics of same-named pools), and retiring the old pools
//! in the background: they keep serving what they hold while the new ones take new work. At most
//! [`GENERATIONS_DRAINING_MAX`] retired generations drain at once (see [`Draining`]).
//!
//! Reloads never overlap: the signal loop runs one at a time, and SIGHUPs that arrive while one
//! runs coalesce into one more (the kernel and the signal set keep at most one pending per
//! signal). So a burst of SIGHUPs costs at most one running and one queued reload at any time,
//! and the pools it leaves draining are bounded by [`GENERATIONS_DRAINING_MAX`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::ServiceStats;
use crate::config::Config;
use crate::job::REPLY_GRACE;
use crate::log;
use crate::pool::{wait_until, ProviderPool};
use crate::providers::redact::Redactor;

/// After a swap, how long retired pools still take jobs before they close: requests that loaded
/// the old gateway just before the swap submit within this (plus the longest `block` wait).
pub const RETIRE_SUBMIT_GRACE: Duration = Duration::from_secs(1);
/// Extra time past the retired pools' deadline for their workers to answer what they abandoned.
const RETIRE_WORKER_GRACE: Duration = Duration::from_millis(500);
/// Generations of pools swapped out by reloads that may drain at once. Each holds its workers
/// and supervisors (threads) until its last request ends, which may take a stream's longest
/// duration; a reload that would leave more abandons the oldest draining generation first: its
/// queued and running requests are answered 503 `shutting_down` (a stream that began: an SSE
/// error event), as at the end of a shutdown, and its threads exit. So a burst of reloads keeps
/// at most this many generations' threads beside the running one's. Reloads are never made to
/// wait instead: a reload applies what the operator asked (a revoked key, a lowered limit) at
/// once, even while long streams hold older generations.
pub const GENERATIONS_DRAINING_MAX: usize = 4;
const _: () = assert!(GENERATIONS_DRAINING_MAX >= 1);

/// Start one pool per provider of `config`, in config order (the router's pool numbering). A pool
/// replacing one of the same name in `previous` continues its statistics, so counters stay
/// monotonic across reloads. On failure the pools already started are stopped.
pub fn start_pools(
    config: &Config,
    core_ids: &[core_affinity::CoreId],
    previous: &[Arc<ProviderPool>],
) -> Result<Vec<Arc<ProviderPool>>, String> {
    let mut pools: Vec<Arc<ProviderPool>> = Vec::with_capacity(config.providers.len());
    // Every provider's answers are scanned for every provider's keys.
    let redact = Arc::new(Redactor::new(
        config.providers.values().flat_map(|p| p.secrets()),
    ));
    for p in config.providers.values() {
        let stats = previous
            .iter()
            .find(|old| old.name() == p.name)
            .map(|old| Arc::clone(old.stats()));
        match ProviderPool::start_with_stats(p, core_ids, stats, Arc::clone(&redact)) {
            Ok(pool) => pools.push(Arc::new(pool)),
            Err(e) => {
                let deadline = Instant::now();
                for started in &pools {
                    started.shutdown(deadline, RETIRE_WORKER_GRACE);
                }
                return Err(e);
            }
        }
    }
    Ok(pools)
}

/// Settings of `new` that differ from `old` but only a restart applies: listener addresses,
/// scheduler threads and cores, and the object pools (sized at start-up). One message each.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let (o, n) = (&old.server, &new.server);
    let mut differ = |key: &str, was: String, now: String| {
        if was != now {
            out.push(format!("{key}: {was} -> {now}"));
        }
    };
    differ("server.listen", o.listen.to_string(), n.listen.to_string());
    differ(
        "server.admin_listen",
        o.admin_listen.to_string(),
        n.admin_listen.to_string(),
    );
    differ(
        "server.threads",
        o.threads.to_string(),
        n.threads.to_string(),
    );
    differ(
        "server.cores",
        format!("{:?}", o.cores),
        format!("{:?}", n.cores),
    );
    if old.store.is_some() {
        let path = |c: &Config| c.store.as_ref().map(|s| s.path.display().to_string());
        differ(
            "store.path",
            path(old).unwrap_or_default(),
            path(new).unwrap_or_default(),
        );
        let settings = |c: &Config| {
            c.store.as_ref().map(|s| {
                format!(
                    "queue_capacity={} batch_rows_max={} batch_interval_ms={} retention_days={} \
                     busy_timeout_ms={} keys_poll_ms={}",
                    s.queue_capacity,
                    s.batch_rows_max,
                    s.batch_interval.as_millis(),
                    s.retention_days,
                    s.busy_timeout.as_millis(),
                    s.keys_poll_interval.as_millis()
                )
            })
        };
        differ(
            "[store]",
            settings(old).unwrap_or_default(),
            settings(new).unwrap_or_default(),
        );
    }
    let (o, n) = (&old.objpools, &new.objpools);
    differ(
        "objpools.buffers",
        o.buffers.to_string(),
        n.buffers.to_string(),
    );
    differ(
        "objpools.buffers_prefill",
        o.buffers_prefill.to_string(),
        n.buffers_prefill.to_string(),
    );
    differ(
        "objpools.buffer_retain_bytes_max",
        o.buffer_retain_bytes_max.to_string(),
        n.buffer_retain_bytes_max.to_string(),
    );
    out
}

/// Keep the listener addresses, scheduler and object-pool settings of `running` in `new`: those
/// are what the process really runs with (see [`restart_only_changes`]).
pub fn keep_restart_only(running: &Config, new: &mut Config) {
    new.server.listen = running.server.listen;
    new.server.admin_listen = running.server.admin_listen;
    new.server.threads = running.server.threads;
    new.server.cores.clone_from(&running.server.cores);
    new.objpools = running.objpools.clone();
    if running.store.is_some() {
        new.store.clone_from(&running.store);
    }
}

/// A generation of pools swapped out by a reload, draining in its own thread.
pub struct Draining {
    pools: Vec<Weak<ProviderPool>>,
    /// Set when the generation has drained (its workers exited) and its thread ends.
    done: Arc<AtomicBool>,
}

impl Draining {
    /// Whether the generation has drained.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Its pools still alive.
    pub fn pools(&self) -> impl Iterator<Item = Arc<ProviderPool>> + '_ {
        self.pools.iter().filter_map(Weak::upgrade)
    }

    /// Whether it was abandoned already.
    pub fn abandoned(&self) -> bool {
        self.pools().any(|p| p.abandoned())
    }

    /// Stop draining now: answer what the generation holds 503 `shutting_down` and interrupt
    /// its upstream calls; its thread then ends as soon as the workers exit.
    pub fn abandon(&self) {
        for p in self.pools() {
            p.abandon();
        }
    }
}

/// Make room for one more draining generation: drop the drained ones from `draining`, and while
/// [`GENERATIONS_DRAINING_MAX`] are still draining, abandon the oldest not yet abandoned (an
/// abandoned one counts until its workers have exited, which takes milliseconds). Returns how
/// many generations were abandoned.
pub fn make_room(draining: &mut Vec<Draining>) -> usize {
    draining.retain(|d| !d.is_done());
    let mut abandoned = 0;
    let mut live = draining.iter().filter(|d| !d.abandoned()).count();
    for d in draining.iter() {
        if live < GENERATIONS_DRAINING_MAX {
            break;
        }
        if !d.abandoned() {
            d.abandon();
            live -= 1;
            abandoned += 1;
        }
    }
    abandoned
}

/// Retire `pools` (swapped out by a reload) in a background thread: they go on taking jobs for
/// [`RETIRE_SUBMIT_GRACE`] plus their longest `block` wait, then close; queued and in-flight jobs
/// finish (each is bounded by its own deadline, a stream by its longest duration) and the workers
/// exit. An abandoned generation (see [`Draining::abandon`]) skips the rest of its grace.
pub fn retire(pools: Vec<Arc<ProviderPool>>, stats: Arc<ServiceStats>) -> Draining {
    let done = Arc::new(AtomicBool::new(pools.is_empty()));
    let draining = Draining {
        pools: pools.iter().map(Arc::downgrade).collect(),
        done: Arc::clone(&done),
    };
    if pools.is_empty() {
        return draining;
    }
    let count = pools.len() as u64;
    stats.pools_draining.fetch_add(count, Ordering::Relaxed);
    let grace = RETIRE_SUBMIT_GRACE
        + pools
            .iter()
            .map(|p| p.config().queue_wait_max)
            .max()
            .unwrap_or_default();
    // A whole answer ends by its request deadline; a stream may begin as late and then run for
    // its longest duration.
    let timeout = pools
        .iter()
        .map(|p| p.config().request_timeout + p.stream_duration_max())
        .max()
        .unwrap_or_default();
    let mine = Arc::clone(&stats);
    let finished = Arc::clone(&done);
    let drain = move || {
        let started = Instant::now();
        wait_until(started + grace, || pools.iter().any(|p| p.abandoned()));
        for p in &pools {
            p.close();
        }
        // Every job a retired pool holds was received before it closed, so it ends by then.
        let deadline = Instant::now() + timeout + REPLY_GRACE;
        for p in &pools {
            p.shutdown(deadline, RETIRE_WORKER_GRACE);
        }
        let names: Vec<&str> = pools.iter().map(|p| p.name()).collect();
        let abandoned = pools.iter().any(|p| p.abandoned());
        log::info(
            if abandoned {
                "reload: retired pools abandoned"
            } else {
                "reload: retired pools drained"
            },
            &[
                ("pools", &names.join(",")),
                ("ms", &started.elapsed().as_millis().to_string()),
            ],
        );
        mine.pools_draining.fetch_sub(count, Ordering::Relaxed);
        finished.store(true, Ordering::Release);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("retire-pools".into())
        .spawn(drain)
    {
        // Without the thread the old pools stay open: their workers idle until exit.
        stats.pools_draining.fetch_sub(count, Ordering::Relaxed);
        done.store(true, Ordering::Release);
        log::warn(
            "reload: cannot start the thread that drains retired pools; they stay idle until exit",
            &[("error", &e.to_string())],
        );
    }
    draining
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{ApiHandler, Gateway};
    use crate::http::{Method, Request};
    use crate::job::{ClientApi, ReplyChannel};
    use crate::log::AccessRecord;
    use crate::objpool::ObjPool;
    use arc_swap::ArcSwap;

    fn chat_request() -> Request {
        let mut req = Request::empty(-1);
        req.id = "req-test".into();
        req.method = Method::Post;
        req.path = "/v1/chat/completions".into();
        req.body = br#"{"model":"mock/m","messages":[{"role":"user","content":"hi"}]}"#.to_vec();
        req
    }

    #[test]
    fn a_request_holding_a_retired_gateway_is_served_by_the_current_one() {
        let mut config = Config::default();
        config.server.auth = crate::config::AuthMode::Off;
        for p in config.providers.values_mut() {
            p.pool.workers = 1;
        }
        let config = Arc::new(config);
        let replies = ObjPool::new("reply_channels", 4, 0, 0, ReplyChannel::new);
        let generation = |n: u64, previous: &[Arc<ProviderPool>]| {
            let pools = start_pools(&config, &[], previous).unwrap();
            let objpools = Vec::new();
            let g = Gateway::new(
                Arc::clone(&config),
                pools,
                Arc::clone(&replies),
                objpools,
                Instant::now(),
                n,
            );
            Arc::new(g)
        };
        let old = generation(1, &[]);
        let current = Arc::new(ArcSwap::new(Arc::clone(&old)));
        let handler = ApiHandler(Arc::clone(&current));
        // The reload swapped in generation 2 and the old pool closed before this request, which
        // had loaded generation 1, submitted.
        current.store(generation(2, &old.pools));
        for p in &old.pools {
            p.close();
        }
        let mut rec = AccessRecord::default();
        let resp = handler.chat_current(&old, &mut chat_request(), ClientApi::OpenAiChat, &mut rec);
        assert_eq!(resp.map(|r| r.status).map_err(|e| e.code), Ok(200));
        // Statistics continue in the same counters across generations.
        let g2 = current.load_full();
        assert!(Arc::ptr_eq(g2.pools[0].stats(), old.pools[0].stats()));
        assert_eq!(
            g2.pools[0]
                .stats()
                .counters
                .completed
                .load(Ordering::Relaxed),
            1
        );

        // Without a newer generation, a closed pool's error stands (shutdown).
        for p in &g2.pools {
            p.close();
        }
        let resp = handler.chat_current(
            &g2,
            &mut chat_request(),
            ClientApi::OpenAiChat,
            &mut AccessRecord::default(),
        );
        assert_eq!(
            resp.map(|r| r.status).map_err(|e| e.code),
            Err("shutting_down")
        );
        for g in [&old, &g2] {
            for p in &g.pools {
                p.shutdown(Instant::now(), RETIRE_WORKER_GRACE);
            }
        }
    }

    #[test]
    fn at_most_the_bound_of_generations_drain_at_once() {
        let mut config = Config::default();
        for p in config.providers.values_mut() {
            p.pool.workers = 1;
        }
        let stats = Arc::new(ServiceStats::new());
        let mut draining: Vec<Draining> = Vec::new();
        let mut generations = Vec::new();
        let mut abandoned = 0;
        for _ in 0..GENERATIONS_DRAINING_MAX + 2 {
            let pools = start_pools(&config, &[], &[]).unwrap();
            abandoned += make_room(&mut draining);
            draining.push(retire(pools.clone(), Arc::clone(&stats)));
            generations.push(pools);
            let live = draining.iter().filter(|d| !d.abandoned()).count();
            assert!(live <= GENERATIONS_DRAINING_MAX, "{live} draining");
        }
        // The two oldest were abandoned, the newest are draining.
        assert_eq!(abandoned, 2);
        let first = |g: &Vec<Arc<ProviderPool>>| Arc::clone(&g[0]);
        assert!(first(&generations[0]).abandoned() && first(&generations[1]).abandoned());
        assert!(generations[2..].iter().all(|g| !first(g).abandoned()));
        // An abandoned generation's workers exit at once, without waiting out the grace.
        let soon = Instant::now() + RETIRE_SUBMIT_GRACE / 2;
        assert!(wait_until(soon, || generations[..2]
            .iter()
            .all(|g| first(g).workers_exited())));
        assert!(generations[2..].iter().all(|g| !first(g).workers_exited()));
        for d in &draining {
            d.abandon();
        }
        let end = Instant::now() + Duration::from_secs(5);
        assert!(wait_until(end, || draining.iter().all(Draining::is_done)));
        assert_eq!(stats.pools_draining.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn restart_only_changes_are_named_and_kept() {
        let old = Config::default();
        let mut new = Config::default();
        assert!(restart_only_changes(&old, &new).is_empty());
        new.server.listen = "127.0.0.1:1234".parse().unwrap();
        new.server.threads = old.server.threads + 1;
        new.objpools.buffers += 1;
        new.server.json_depth_max += 1; // reloadable: not reported
        let changes = restart_only_changes(&old, &new);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes[0].starts_with("server.listen: 127.0.0.1:8080 -> 127.0.0.1:1234"));
        keep_restart_only(&old, &mut new);
        assert!(restart_only_changes(&old, &new).is_empty());
        assert_eq!(new.server.json_depth_max, old.server.json_depth_max + 1);
    }
}
