//! Thread-per-core placement: pool workers are named `<provider>-<n>` and pinned to the pool's
//! cores, scheduler threads to `server.cores`, and a core that does not exist is a start-up error.

mod common;

use common::*;

/// `(thread name, Cpus_allowed_list)` of every thread of a process.
fn threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default();
        out.push((name.trim().to_string(), allowed.trim().to_string()));
    }
    out
}

#[test]
fn workers_and_scheduler_threads_are_pinned_and_named() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (front, pool) = if cores >= 2 { (0, 1) } else { (0, 0) };
    let cfg = base_config().replace("threads = 2", &format!("threads = 1\ncores = [{front}]"))
        + &format!(
            "[providers.mock]\ntype = \"mock\"\n[providers.mock.pool]\nworkers = 3\ncores = [{pool}]\n"
        );
    let gw = Gateway::start(&cfg);
    assert_eq!(gw.chat("mock/m", "x").status, 200);
    let t = threads(gw.proc.child.id());
    let is_worker = |n: &str| {
        n.strip_prefix("mock-")
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
    };
    let workers: Vec<_> = t.iter().filter(|(n, _)| is_worker(n)).collect();
    let mut names: Vec<_> = workers.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["mock-0", "mock-1", "mock-2"], "{t:?}");
    assert!(workers.iter().all(|(_, a)| *a == pool.to_string()), "{t:?}");
    // The scheduler thread runs on the front core only; the main thread kept the full mask.
    assert!(t.iter().any(|(_, a)| *a == front.to_string()), "{t:?}");
    if cores >= 2 {
        let main = &t
            .iter()
            .find(|(n, _)| n == "deepintshield")
            .expect("main thread")
            .1;
        assert_ne!(main, &front.to_string(), "{t:?}");
    }
}

#[test]
fn a_core_that_does_not_exist_is_a_start_up_error() {
    let cfg = format!(
        "{}[providers.mock]\ntype = \"mock\"\n[providers.mock.pool]\ncores = [4096]\n",
        base_config()
    );
    let path = write_config(&cfg);
    let out = std::process::Command::new(gateway_bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("providers.mock.pool.cores"), "{err}");
}
