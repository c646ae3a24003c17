//! Threads kept for the agent's short jobs: a connection's request, a state file's write.
//!
//! A thread started and ended for every job costs more than its work on a small host: creating
//! it, and at its end glibc giving its stack back (`madvise`) and std unmapping its signal stack,
//! each of which makes the kernel flush the TLB of every other CPU the agent runs on (an
//! interrupt to each; in a VM, an exit to the hypervisor). Profiled on the project's 2-vCPU VM
//! (BENCHMARKS.md, sixth round), the `madvise` of ending a publish's two threads alone was 8% of
//! the agent's CPU samples; publishes to two agents in turn, one keeping its threads, were 0.5
//! ms faster at the median on the one that kept them.
//!
//! So a job goes to a thread that finished its last one and waits for another, and a new thread
//! starts only when none waits. A waiting thread ends after `linger` without work: an idle
//! agent keeps no more threads than its busiest moment needed, and not for long. Each job still
//! has a thread of its own while it runs, so a slow job (a silent client) delays no other.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A set of threads that run jobs and wait for more. Cloning gives another handle to the same
/// threads.
#[derive(Clone)]
pub struct Workers {
    shared: Arc<Shared>,
}

struct Shared {
    jobs: Mutex<Jobs>,
    /// Signalled when a job is queued.
    queued: Condvar,
    /// How long a thread waits for a job before it ends.
    linger: Duration,
    /// The name of the threads (shown by ps -H, top -H and a debugger).
    name: &'static str,
}

/// Jobs not taken yet, and the threads waiting for one: a job is queued only when a waiting
/// thread is there to take it.
#[derive(Default)]
struct Jobs {
    queue: VecDeque<Job>,
    waiting: usize,
}

impl Workers {
    /// No thread yet; threads named `name` wait `linger` for a job before they end.
    pub fn new(name: &'static str, linger: Duration) -> Workers {
        Workers { shared: Arc::new(Shared { jobs: Mutex::default(), queued: Condvar::new(), linger, name }) }
    }

    /// Runs `job` on a waiting thread, or on a new one when none waits. Fails only when a new
    /// thread is needed and cannot be started; `job` is then dropped unrun.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let mut jobs = self.shared.lock();
        if jobs.waiting > jobs.queue.len() {
            jobs.queue.push_back(Box::new(job));
            drop(jobs);
            self.shared.queued.notify_one();
            return Ok(());
        }
        drop(jobs);
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new().name(self.shared.name.to_string()).spawn(move || shared.work(Box::new(job)))?;
        Ok(())
    }

    /// Threads waiting for a job now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.shared.lock().waiting
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Jobs> {
        // A job runs with the lock released, so a panicking job cannot poison it; the queue is
        // consistent at every unlock anyway.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `job`, then the jobs queued for this thread, until none comes within `linger`.
    fn work(&self, mut job: Job) {
        loop {
            job();
            let mut jobs = self.lock();
            jobs.waiting += 1;
            job = loop {
                if let Some(next) = jobs.queue.pop_front() {
                    jobs.waiting -= 1;
                    break next;
                }
                let (guard, wait) = self.queued.wait_timeout(jobs, self.linger).unwrap_or_else(|p| p.into_inner());
                jobs = guard;
                // Under the lock: a job queued from now on finds one waiting thread fewer, so
                // none is left in the queue without a thread to take it.
                if wait.timed_out() && jobs.queue.is_empty() {
                    jobs.waiting -= 1;
                    return;
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    fn thread_id(workers: &Workers) -> std::thread::ThreadId {
        let (tx, rx) = mpsc::channel();
        workers.run(move || tx.send(std::thread::current().id()).unwrap()).unwrap();
        rx.recv().unwrap()
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_job_after_another_runs_on_the_same_thread() {
        let workers = Workers::new("test", Duration::from_secs(60));
        let first = thread_id(&workers);
        wait_until("the thread to wait", || workers.waiting() == 1);
        assert_eq!(thread_id(&workers), first);
        assert_ne!(first, std::thread::current().id());
    }

    #[test]
    fn a_job_while_another_runs_gets_a_thread_of_its_own() {
        let workers = Workers::new("test", Duration::from_secs(60));
        let (release, blocked) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel();
        workers
            .run(move || {
                started.send(()).unwrap();
                blocked.recv().unwrap();
            })
            .unwrap();
        running.recv().unwrap();
        let (tx, rx) = mpsc::channel();
        workers.run(move || tx.send("done").unwrap()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("done"), "not stuck behind the blocked job");
        release.send(()).unwrap();
    }

    #[test]
    fn idle_threads_end_after_lingering() {
        let workers = Workers::new("test", Duration::from_millis(20));
        for _ in 0..3 {
            thread_id(&workers);
        }
        wait_until("the idle thread to end", || workers.waiting() == 0);
        let (tx, rx) = mpsc::channel();
        workers.run(move || tx.send(7).unwrap()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(7), "a job after the threads ended runs");
    }

    #[test]
    fn every_job_of_a_crowd_runs_exactly_once() {
        let workers = Workers::new("test", Duration::from_millis(1));
        let (tx, rx) = mpsc::channel();
        for round in 0..20 {
            for i in 0..20 {
                let tx = tx.clone();
                workers.run(move || tx.send(round * 20 + i).unwrap()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(round % 3));
        }
        let mut got: Vec<u64> =
            (0..400).map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("every job runs")).collect();
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "and none twice");
        got.sort_unstable();
        assert_eq!(got, (0..400).collect::<Vec<u64>>());
    }

    #[test]
    fn a_panicking_job_takes_only_its_thread() {
        let workers = Workers::new("test", Duration::from_secs(60));
        workers.run(|| panic!("a job's bug")).unwrap();
        let (tx, rx) = mpsc::channel();
        workers.run(move || tx.send("after").unwrap()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("after"));
    }
}
