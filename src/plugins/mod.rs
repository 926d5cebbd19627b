//! The plugin pipeline every API request passes through: pre-hooks in the configured order after
//! the request is parsed and routed and before it is queued, post-hooks in reverse order after the
//! answer (for a stream, at its end). A pre-hook may let the request go on, reject it (an error in
//! the client's API, with headers of its own) or answer it by itself; then the pre-hooks after it
//! do not run, and the post-hooks of the plugins that ran (that one included) do, in reverse.
//!
//! Hooks run once per request, not once per fallback: pre-hooks see the whole route list (the
//! primary and its fallbacks) and may take routes out of it; post-hooks see the attempt that
//! answered. So a request is authorised, rate limited and charged once however many providers it
//! tries.
//!
//! Hooks run on connection coroutines: they work on memory only (tables, atomic counters) and
//! never block; slow work (a database write) goes to a dedicated thread over a bounded channel
//! whose overflow is counted. Plugins are compiled in and chosen and ordered by `[plugins] order`;
//! each one's time is kept per pool ([`stats`]). Their state lives in a [`Shared`] made once per
//! process, so counters and the store outlive config reloads; the [`Pipeline`] itself is built
//! per config generation.

pub mod auth;
pub mod governance;
pub mod ledger;
pub mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, PluginName};
use crate::cost::{Cost, PriceTable};
use crate::error::ApiError;
use crate::http::Response;
use crate::job::{ClientApi, Usage};
use crate::store::Store;

pub use auth::{Auth, Principal};
pub use stats::{HookTimes, PluginStats};

/// One route of a request, named the same way in every config generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The provider (pool) name.
    pub provider: String,
    /// The provider's type as the config names it (`openai`, `anthropic`, `mock`, ...).
    pub kind: &'static str,
    /// The model name sent upstream.
    pub model: String,
}

impl crate::cost::Priced for Target {
    fn provider(&self) -> &str {
        &self.provider
    }
    fn kind(&self) -> &str {
        self.kind
    }
    fn model(&self) -> &str {
        &self.model
    }
}

/// What the hooks of one request share.
pub struct RequestCtx {
    pub request_id: String,
    pub api: ClientApi,
    /// The model as the client named it.
    pub model: String,
    pub stream: bool,
    /// Who sent it ([`Auth`], on the request head).
    pub principal: Principal,
    /// The primary route first, then its fallbacks; a pre-hook may remove fallbacks.
    pub routes: Vec<Target>,
    /// Bytes of the request body (for the up-front token estimate).
    pub body_bytes: usize,
    pub received_at: Instant,
    /// Tokens a pre-hook charged to a rate limit up front, to be corrected by the real usage.
    pub tokens_estimated: u64,
}

/// How a request ended, for the post-hooks.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The status the client got (200 for a stream that began, whatever ended it).
    pub status: u16,
    /// The route that answered; `None` when no provider was reached (a pre-hook's refusal, or no
    /// route could take it).
    pub served: Option<Target>,
    /// The usage the provider reported (zero when none).
    pub usage: Usage,
    /// Its cost by the price table; `None` when the model has no price ("cost unknown") or
    /// nothing was served.
    pub cost: Option<Cost>,
    /// Received to answered (for a stream: to its end).
    pub latency: Duration,
    /// The gateway's error code when it answered an error itself.
    pub error_code: &'static str,
}

/// A pre-hook's refusal: the error in the client's API, plus headers of its own (rate-limit
/// state, `x-should-retry`).
#[derive(Debug)]
pub struct Rejection {
    pub error: ApiError,
    pub headers: Vec<(&'static str, String)>,
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Rejection {
        Rejection {
            error,
            headers: Vec::new(),
        }
    }
}

/// What a pre-hook decided.
pub enum Pre {
    /// Go on to the next plugin (and then to the providers).
    Continue,
    /// Refuse the request.
    Reject(Rejection),
    /// Answer it without a provider (a cache hit).
    Answer(Response),
}

/// A compiled-in plugin.
pub trait Plugin: Send + Sync {
    /// Its name in `[plugins] order`.
    fn name(&self) -> &'static str;
    /// Before the request is queued. Runs on the connection coroutine: memory only, never a wait.
    fn pre(&self, ctx: &mut RequestCtx) -> Pre {
        let _ = ctx;
        Pre::Continue
    }
    /// After the answer (for a stream, at its end). Runs on the connection coroutine.
    fn post(&self, ctx: &RequestCtx, outcome: &Outcome) {
        let _ = (ctx, outcome);
    }
}

/// State that outlives config generations: the store, the key table and every counter.
pub struct Shared {
    /// The embedded database, when `[store] path` is set.
    pub store: Option<Arc<Store>>,
    pub governance: Arc<governance::State>,
    pub stats: Arc<PluginStats>,
}

impl Shared {
    /// Open the store (creating and migrating it) and load the key table, when configured.
    pub fn start(config: &Config) -> Result<Shared, String> {
        let store = match &config.store {
            Some(s) => Some(Arc::new(Store::open(s)?)),
            None => None,
        };
        let governance = Arc::new(governance::State::new());
        if let Some(store) = &store {
            governance::State::attach(&governance, store)?;
        }
        Ok(Shared {
            store,
            governance,
            stats: Arc::new(PluginStats::default()),
        })
    }

    /// State for a config without a store (tests, `--check`).
    pub fn empty() -> Shared {
        Shared {
            store: None,
            governance: Arc::new(governance::State::new()),
            stats: Arc::new(PluginStats::default()),
        }
    }
}

/// How the pre-hooks of a request ended.
pub struct PreRun {
    /// How many plugins ran their pre-hook (their post-hooks run at the end).
    pub ran: usize,
    /// `None`: on to the providers.
    pub stop: Option<Stop>,
}

/// A pre-hook that stopped the request.
pub enum Stop {
    Reject(Rejection),
    Answer(Response),
}

/// One config generation's plugins, in order, with their per-pool timings.
pub struct Pipeline {
    plugins: Vec<Arc<dyn Plugin>>,
    /// `(pool name, one entry per plugin)`.
    times: Vec<(String, Vec<Arc<HookTimes>>)>,
    prices: Arc<PriceTable>,
}

impl Pipeline {
    /// The plugins `config` names, in its order, over `shared` state.
    pub fn new(config: &Config, shared: &Shared, prices: Arc<PriceTable>) -> Pipeline {
        let plugins: Vec<Arc<dyn Plugin>> = config
            .plugins
            .order
            .iter()
            .map(|name| -> Arc<dyn Plugin> {
                match name {
                    PluginName::Governance => Arc::new(governance::Governance::new(
                        Arc::clone(&shared.governance),
                        Arc::clone(&prices),
                    )),
                    PluginName::Ledger => Arc::new(ledger::Ledger::new(shared.store.clone())),
                }
            })
            .collect();
        Self::with_plugins(plugins, config, shared, prices)
    }

    /// A pipeline of the given plugins (tests, and plugins built by hand).
    pub fn with_plugins(
        plugins: Vec<Arc<dyn Plugin>>,
        config: &Config,
        shared: &Shared,
        prices: Arc<PriceTable>,
    ) -> Pipeline {
        let times = config
            .providers
            .keys()
            .map(|pool| {
                let per_plugin = plugins
                    .iter()
                    .map(|p| shared.stats.times(pool, p.name()))
                    .collect();
                (pool.clone(), per_plugin)
            })
            .collect();
        Pipeline {
            plugins,
            times,
            prices,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The price table of this generation.
    pub fn prices(&self) -> &Arc<PriceTable> {
        &self.prices
    }

    fn times_of(&self, pool: &str) -> Option<&[Arc<HookTimes>]> {
        self.times
            .iter()
            .find(|(name, _)| name == pool)
            .map(|(_, t)| t.as_slice())
    }

    /// Run the pre-hooks in order, timed against the primary route's pool.
    pub fn pre(&self, ctx: &mut RequestCtx) -> PreRun {
        let pool = ctx.routes.first().map(|t| t.provider.clone());
        let times = pool.as_deref().and_then(|p| self.times_of(p));
        for (i, plugin) in self.plugins.iter().enumerate() {
            let started = Instant::now();
            let decided = plugin.pre(ctx);
            let spent = started.elapsed();
            if let Some(t) = times.and_then(|t| t.get(i)) {
                t.pre.record(spent);
            }
            match decided {
                Pre::Continue => {}
                Pre::Reject(r) => {
                    if let Some(t) = times.and_then(|t| t.get(i)) {
                        t.count_rejection();
                    }
                    return PreRun {
                        ran: i + 1,
                        stop: Some(Stop::Reject(r)),
                    };
                }
                Pre::Answer(resp) => {
                    if let Some(t) = times.and_then(|t| t.get(i)) {
                        t.count_answer();
                    }
                    return PreRun {
                        ran: i + 1,
                        stop: Some(Stop::Answer(resp)),
                    };
                }
            }
        }
        PreRun {
            ran: self.plugins.len(),
            stop: None,
        }
    }

    /// Price `outcome` (when something was served) and run the post-hooks of the first `ran`
    /// plugins in reverse order, timed against the serving pool (else the primary's).
    pub fn post(&self, ctx: &RequestCtx, outcome: &mut Outcome, ran: usize) {
        if ran == 0 {
            return;
        }
        if let Some(served) = &outcome.served {
            outcome.cost = self
                .prices
                .cost(served, &outcome.usage, crate::cost::now_unix_s());
        }
        let pool = outcome
            .served
            .as_ref()
            .or(ctx.routes.first())
            .map(|t| t.provider.as_str());
        let times = pool.and_then(|p| self.times_of(p));
        for i in (0..ran.min(self.plugins.len())).rev() {
            let started = Instant::now();
            self.plugins[i].post(ctx, outcome);
            if let Some(t) = times.and_then(|t| t.get(i)) {
                t.post.record(started.elapsed());
            }
        }
    }
}

/// A request's pipeline state between its pre-hooks and its post-hooks (moved into a stream when
/// the answer is streamed, so the post-hooks run at its end).
pub struct Pending {
    pub pipeline: Arc<Pipeline>,
    pub ctx: RequestCtx,
    pub ran: usize,
}

impl Pending {
    /// Run the post-hooks once with `outcome`.
    pub fn finish(self, mut outcome: Outcome) {
        outcome.latency = self.ctx.received_at.elapsed();
        self.pipeline.post(&self.ctx, &mut outcome, self.ran);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the hooks it sees; decides by its configured action.
    struct Probe {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        action: fn() -> Pre,
    }

    impl Plugin for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn pre(&self, ctx: &mut RequestCtx) -> Pre {
            self.log.lock().unwrap().push(format!("pre {}", self.name));
            ctx.routes.retain(|t| t.model != "dropped-by-plugin");
            (self.action)()
        }
        fn post(&self, _ctx: &RequestCtx, outcome: &Outcome) {
            self.log
                .lock()
                .unwrap()
                .push(format!("post {} {}", self.name, outcome.status));
        }
    }

    fn ctx() -> RequestCtx {
        let target = |model: &str| Target {
            provider: "mock".into(),
            kind: "mock",
            model: model.into(),
        };
        RequestCtx {
            request_id: "r".into(),
            api: ClientApi::OpenAiChat,
            model: "m".into(),
            stream: false,
            principal: Principal::Open,
            routes: vec![target("a"), target("dropped-by-plugin"), target("b")],
            body_bytes: 10,
            received_at: Instant::now(),
            tokens_estimated: 0,
        }
    }

    type Log = Arc<Mutex<Vec<String>>>;
    type Action = (&'static str, fn() -> Pre);

    fn pipeline(actions: &[Action]) -> (Pipeline, Log) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let plugins = actions
            .iter()
            .map(|&(name, action)| -> Arc<dyn Plugin> {
                Arc::new(Probe {
                    name,
                    log: Arc::clone(&log),
                    action,
                })
            })
            .collect();
        let shared = Shared::empty();
        let p = Pipeline::with_plugins(
            plugins,
            &Config::default(),
            &shared,
            Arc::new(PriceTable::default()),
        );
        (p, log)
    }

    fn done(p: &Pipeline, ctx: &RequestCtx, ran: usize, status: u16) {
        let mut outcome = Outcome {
            status,
            ..Outcome::default()
        };
        p.post(ctx, &mut outcome, ran);
    }

    #[test]
    fn pre_in_order_post_in_reverse() {
        let (p, log) = pipeline(&[("a", || Pre::Continue), ("b", || Pre::Continue)]);
        let mut c = ctx();
        let run = p.pre(&mut c);
        assert!(run.stop.is_none());
        assert_eq!(run.ran, 2);
        assert_eq!(c.routes.len(), 2, "a pre-hook may remove routes");
        done(&p, &c, run.ran, 200);
        assert_eq!(
            *log.lock().unwrap(),
            ["pre a", "pre b", "post b 200", "post a 200"]
        );
    }

    #[test]
    fn a_rejection_stops_the_pre_hooks_and_unwinds_the_ones_that_ran() {
        let reject = || Pre::Reject(ApiError::bad_request("no", "refused").into());
        let (p, log) = pipeline(&[
            ("a", || Pre::Continue),
            ("b", reject),
            ("c", || Pre::Continue),
        ]);
        let mut c = ctx();
        let run = p.pre(&mut c);
        assert!(matches!(run.stop, Some(Stop::Reject(_))));
        assert_eq!(run.ran, 2);
        done(&p, &c, run.ran, 400);
        assert_eq!(
            *log.lock().unwrap(),
            ["pre a", "pre b", "post b 400", "post a 400"]
        );
        let times = p.times_of("mock").unwrap();
        assert_eq!(times[1].snapshot().rejected, 1);
        assert_eq!(times[2].snapshot().pre.count, 0);
    }

    #[test]
    fn a_plugin_may_answer_by_itself() {
        let answer = || Pre::Answer(Response::json(200, b"{}".to_vec()));
        let (p, log) = pipeline(&[("cache", answer), ("after", || Pre::Continue)]);
        let mut c = ctx();
        let run = p.pre(&mut c);
        assert!(matches!(run.stop, Some(Stop::Answer(ref r)) if r.status == 200));
        done(&p, &c, run.ran, 200);
        assert_eq!(*log.lock().unwrap(), ["pre cache", "post cache 200"]);
        assert_eq!(p.times_of("mock").unwrap()[0].snapshot().answered, 1);
    }

    #[test]
    fn hook_times_are_kept_per_pool() {
        let (p, _) = pipeline(&[("a", || Pre::Continue)]);
        let mut c = ctx();
        let run = p.pre(&mut c);
        done(&p, &c, run.ran, 200);
        let s = p.times_of("mock").unwrap()[0].snapshot();
        assert_eq!((s.pre.count, s.post.count), (1, 1));
    }
}
