//! What a config needs from the operating system at its most (threads and file descriptors),
//! and the warnings when a limit is below it: the systemd unit's `TasksMax` and `LimitNOFILE`
//! for `--check`, the process's own limits at start.

use super::limits::SYSTEMD_LIMIT_NOFILE;
use super::Config;

/// `TasksMax` of systemd/deepintshield.service.
pub const SYSTEMD_TASKS_MAX: u64 = 65_536;
/// Threads beside the pools' workers and the scheduler threads: per pool a supervisor, and the
/// stats reporter, the log writer, the reply nudger, the watchdog, signal handling, the ledger
/// writer, token refreshers, with room to spare.
pub const THREADS_BESIDE_WORKERS: u64 = 32;
/// Descriptors beside client and upstream connections: the event loop, the journal, the
/// database, config and secret files being read.
pub const FDS_BESIDE_CONNECTIONS: u64 = 1024;
/// Memory maps a thread takes: its stack and guard page, and its alternate signal stack and
/// guard page.
pub const MAPS_PER_THREAD: u64 = 4;
/// Idle keep-alive connections a worker keeps to its upstream (each a descriptor).
pub const UPSTREAM_CONNECTIONS_PER_WORKER: u64 = 4;

/// What the config can ask of the OS when every pool is at its `workers_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OsNeeds {
    /// Threads of the running config.
    pub threads: u64,
    /// Threads while a reload runs the old pools and the new side by side.
    pub threads_reload: u64,
    /// Open descriptors: both listeners at `connections_max`, every worker's upstream
    /// connections, and the rest.
    pub fds: u64,
}

impl Config {
    /// Threads and descriptors this config can use at its most.
    pub fn os_needs(&self) -> OsNeeds {
        let workers: u64 = self
            .providers
            .values()
            .map(|p| p.pool.workers_max as u64)
            .sum();
        let beside =
            self.server.threads as u64 + self.providers.len() as u64 + THREADS_BESIDE_WORKERS;
        let fds = 2 * self.server.limits.connections_max as u64
            + workers * UPSTREAM_CONNECTIONS_PER_WORKER
            + FDS_BESIDE_CONNECTIONS;
        OsNeeds {
            threads: workers + beside,
            threads_reload: 2 * workers + beside,
            fds,
        }
    }

    /// Warnings when `tasks_max` threads or `nofile` descriptors are fewer than the config can
    /// use; `None` for a limit not known. `names` says where each limit comes from (e.g.
    /// "TasksMax of systemd/deepintshield.service").
    pub fn os_limit_warnings(
        &self,
        tasks_max: Option<u64>,
        nofile: Option<u64>,
        names: (&str, &str),
    ) -> Vec<String> {
        let needs = self.os_needs();
        let mut out = Vec::new();
        if let Some(limit) = tasks_max {
            if needs.threads_reload > limit {
                out.push(format!(
                    "the pools' workers_max can take {} threads ({} while a reload runs the old \
                     and new pools side by side), more than {limit} ({}): past it a pool cannot \
                     grow or a reload fails; raise the limit or lower workers_max",
                    needs.threads, needs.threads_reload, names.0
                ));
            }
        }
        if let Some(limit) = nofile {
            if needs.fds > limit {
                out.push(format!(
                    "connections_max on both listeners and {UPSTREAM_CONNECTIONS_PER_WORKER} \
                     upstream connections per worker at workers_max can take {} file \
                     descriptors, more than {limit} ({}): raise the limit or lower \
                     connections_max or workers_max",
                    needs.fds, names.1
                ));
            }
        }
        out
    }

    /// A warning when the pools at their `workers_max` would take more than seven eighths of
    /// `max_map_count` memory maps (the kernel's `vm.max_map_count`): each thread takes
    /// [`MAPS_PER_THREAD`], each client connection two, and a thread that cannot map its signal
    /// stack aborts the process (pools stop growing short of it instead).
    pub fn map_count_warning(&self, max_map_count: u64) -> Option<String> {
        let maps = self.os_needs().threads * MAPS_PER_THREAD;
        (maps > max_map_count - max_map_count / 8).then(|| {
            format!(
                "the pools' workers_max can take {} threads of {MAPS_PER_THREAD} memory maps each \
                 ({maps} maps, and each client connection takes 2 more), near or past \
                 vm.max_map_count ({max_map_count}): pools will stop growing short of \
                 workers_max; raise it (sysctl -w vm.max_map_count=262144, and in \
                 /etc/sysctl.d/) or lower workers_max",
                self.os_needs().threads
            )
        })
    }

    /// The warnings against the shipped systemd unit's `TasksMax` and `LimitNOFILE` (`--check`).
    pub fn systemd_unit_warnings(&self) -> Vec<String> {
        self.os_limit_warnings(
            Some(SYSTEMD_TASKS_MAX),
            Some(SYSTEMD_LIMIT_NOFILE as u64),
            (
                "TasksMax of systemd/deepintshield.service",
                "LimitNOFILE of systemd/deepintshield.service",
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text, std::path::Path::new("test.toml")).expect("valid config")
    }

    #[test]
    fn needs_follow_the_pools_maxima() {
        let c = config(
            "[server]\nthreads = 2\nauth = \"off\"\nconnections_max = 1000\n\
             [providers.a]\ntype = \"mock\"\n[providers.a.pool]\nworkers = 8\nworkers_min = 8\nworkers_max = 4096\n\
             [providers.b]\ntype = \"mock\"\n[providers.b.pool]\nworkers = 4\n",
        );
        let needs = c.os_needs();
        let beside = 2 + 2 + THREADS_BESIDE_WORKERS;
        assert_eq!(needs.threads, 4100 + beside);
        assert_eq!(needs.threads_reload, 8200 + beside);
        assert_eq!(
            needs.fds,
            2000 + 4100 * UPSTREAM_CONNECTIONS_PER_WORKER + FDS_BESIDE_CONNECTIONS
        );
        assert!(
            c.systemd_unit_warnings().is_empty(),
            "the shipped unit fits it"
        );
        let w = c.os_limit_warnings(Some(8192), Some(10_000), ("pids.max", "ulimit -n"));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("4136 threads (8236 while a reload"),
            "{}",
            w[0]
        );
        assert!(
            w[1].contains("file descriptors, more than 10000"),
            "{}",
            w[1]
        );
        assert!(c.os_limit_warnings(None, None, ("", "")).is_empty());
        assert!(c.map_count_warning(262_144).is_none());
        let w = c.map_count_warning(16_384).expect("4,136 threads x 4 maps");
        assert!(w.contains("(16544 maps"), "{w}");
    }

    #[test]
    fn the_largest_pools_allowed_exceed_the_shipped_unit_and_say_so() {
        let c = config(
            "[server]\nthreads = 2\nauth = \"off\"\n\
             [providers.a]\ntype = \"mock\"\n[providers.a.pool]\nworkers = 16384\n\
             [providers.b]\ntype = \"mock\"\n[providers.b.pool]\nworkers = 16384\n",
        );
        let w = c.systemd_unit_warnings();
        assert!(
            w.iter()
                .any(|w| w.contains("more than 65536 (TasksMax of systemd/deepintshield.service)")),
            "{w:?}"
        );
    }
}
