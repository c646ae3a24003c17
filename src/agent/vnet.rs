//! The addresses of VNET jails, read in the background.
//!
//! A VNET jail's addresses live in its own network stack and are read with the host's
//! `ifconfig -j JID -a`. That read runs on a worker thread, never under the engine's lock, so a
//! slow or failing read delays nothing but the publications of that one jail: requests and the
//! other jails go on. Each jail incarnation (jid) has one entry:
//!
//! - no read has finished yet: its publications are `pending`;
//! - the last read failed and none ever succeeded: `error`, with the tool's own message, retried
//!   with exponential backoff (1 s, 2 s, 4 s ... up to the refresh interval);
//! - a read succeeded: those addresses are used, and read again every `vnet_refresh_ms`, on
//!   `kleenectl reconcile`, and for every new jid. A failed re-read keeps the addresses last read
//!   (a failing tool says nothing about the addresses) and is reported by `kleenectl check`.
//!
//! A failure is never cached as "no addresses". At most [`MAX_READERS`] reads run at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::core::model::JailName;
use crate::core::plan::AddrsUnknown;
use crate::sys::host::Interfaces;

use super::log;

/// Reads that may run at once.
pub const MAX_READERS: usize = 4;

/// The first retry after a failed read; doubled after each further failure.
const FIRST_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    name: JailName,
    /// The addresses of the last successful read.
    addrs: Option<Vec<IpAddr>>,
    /// The error of the last read, when it failed.
    error: Option<String>,
    failures: u32,
    /// When the entry should be read again.
    due: Instant,
    in_flight: bool,
    queued: bool,
}

impl Entry {
    /// A jail not read yet: due now.
    fn new(name: &JailName, now: Instant) -> Entry {
        Entry { name: name.clone(), addrs: None, error: None, failures: 0, due: now, in_flight: false, queued: false }
    }
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<u32, Entry>,
    queue: Vec<u32>,
    running: usize,
}

/// See the module documentation.
pub struct VnetAddrs {
    inner: Mutex<Inner>,
    done: Condvar,
    ifaces: Mutex<Arc<dyn Interfaces>>,
    refresh: Mutex<Duration>,
    /// Told after every finished read, so that the agent plans again.
    wake: Sender<()>,
}

impl VnetAddrs {
    pub fn new(ifaces: Arc<dyn Interfaces>, refresh: Duration, wake: Sender<()>) -> Arc<VnetAddrs> {
        Arc::new(VnetAddrs {
            inner: Mutex::new(Inner::default()),
            done: Condvar::new(),
            ifaces: Mutex::new(ifaces),
            refresh: Mutex::new(refresh),
            wake,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New tools or a new refresh interval (SIGHUP); every entry is read again.
    pub fn reconfigure(self: &Arc<Self>, ifaces: Arc<dyn Interfaces>, refresh: Duration) {
        *self.ifaces.lock().unwrap_or_else(|p| p.into_inner()) = ifaces;
        *self.refresh.lock().unwrap_or_else(|p| p.into_inner()) = refresh;
        self.invalidate_all();
    }

    fn refresh(&self) -> Duration {
        *self.refresh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The addresses of VNET jail `jid` (`name`) as last read, or why they are not known; starts a
    /// read when one is due.
    pub fn lookup(self: &Arc<Self>, jid: u32, name: &JailName) -> Result<Vec<IpAddr>, AddrsUnknown> {
        let now = Instant::now();
        let mut inner = self.lock();
        let entry = inner.entries.entry(jid).or_insert_with(|| Entry::new(name, now));
        if entry.name != *name {
            // A jid is reused only after its jail is gone: this is another jail.
            *entry = Entry::new(name, now);
        }
        let answer = match (&entry.addrs, &entry.error) {
            (Some(a), _) => Ok(a.clone()),
            (None, Some(e)) => Err(AddrsUnknown {
                reason: format!("cannot read the addresses of VNET jail {name} (jid {jid}): {e}; retrying"),
                pending: false,
            }),
            (None, None) => Err(AddrsUnknown {
                reason: format!("reading the addresses of VNET jail {name} (jid {jid})"),
                pending: true,
            }),
        };
        if entry.due <= now && !entry.in_flight && !entry.queued {
            entry.queued = true;
            inner.queue.push(jid);
            self.start_readers(&mut inner);
        }
        answer
    }

    /// Forgets the entries of jails that are no longer running.
    pub fn retain(&self, live: &BTreeSet<u32>) {
        let mut inner = self.lock();
        inner.entries.retain(|jid, _| live.contains(jid));
        inner.queue.retain(|jid| live.contains(jid));
    }

    /// Makes every entry due now (`kleenectl reconcile`): the next lookup reads it again.
    pub fn invalidate_all(&self) {
        let now = Instant::now();
        for e in self.lock().entries.values_mut() {
            e.due = now;
        }
    }

    /// Waits until no read is queued or running, or until `deadline`; returns whether all are
    /// done. Called without the engine's lock.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        let mut inner = self.lock();
        loop {
            if inner.queue.is_empty() && inner.running == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = self.done.wait_timeout(inner, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Problems of the last reads, for `kleenectl check`: (jail, jid, message, whether the last
    /// good addresses are still used).
    pub fn problems(&self) -> Vec<(JailName, u32, String, bool)> {
        self.lock()
            .entries
            .iter()
            .filter_map(|(jid, e)| e.error.as_ref().map(|m| (e.name.clone(), *jid, m.clone(), e.addrs.is_some())))
            .collect()
    }

    fn start_readers(self: &Arc<Self>, inner: &mut Inner) {
        while inner.running < MAX_READERS {
            let Some(jid) = inner.queue.pop() else { break };
            let Some(e) = inner.entries.get_mut(&jid) else { continue };
            e.queued = false;
            e.in_flight = true;
            inner.running += 1;
            let me = Arc::clone(self);
            let ifaces = Arc::clone(&self.ifaces.lock().unwrap_or_else(|p| p.into_inner()));
            std::thread::spawn(move || {
                let result = ifaces.jail_addrs(jid).map_err(|e| e.to_string());
                me.finish(jid, result);
            });
        }
    }

    fn finish(self: &Arc<Self>, jid: u32, result: Result<Vec<IpAddr>, String>) {
        let refresh = self.refresh();
        let mut inner = self.lock();
        inner.running -= 1;
        if let Some(e) = inner.entries.get_mut(&jid) {
            e.in_flight = false;
            let now = Instant::now();
            match result {
                Ok(addrs) => {
                    if e.addrs.as_ref() != Some(&addrs) {
                        let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                        log::info(&format!("VNET jail {} (jid {jid}) has addresses: {}", e.name, list.join(", ")));
                    }
                    e.addrs = Some(addrs);
                    e.error = None;
                    e.failures = 0;
                    e.due = now + refresh;
                }
                Err(msg) => {
                    if e.error.as_ref() != Some(&msg) {
                        log::warn(&format!("cannot read the addresses of VNET jail {} (jid {jid}): {msg}", e.name));
                    }
                    e.error = Some(msg);
                    e.failures = e.failures.saturating_add(1);
                    let backoff = FIRST_RETRY.saturating_mul(1 << e.failures.min(16).saturating_sub(1)).min(refresh);
                    e.due = now + backoff;
                }
            }
        }
        self.start_readers(&mut inner);
        // Told while the lock is held, so that whoever sees this read finished is also told.
        let _ = self.wake.send(());
        drop(inner);
        self.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::host::SysError;
    use crate::sys::parse::ParseError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    /// One scripted answer of `ifconfig -j`.
    type Answer = Result<Vec<IpAddr>, String>;

    /// Answers from a script: per jid, a list of answers (the last one repeats), optionally slow.
    struct Scripted {
        answers: Mutex<BTreeMap<u32, Vec<Answer>>>,
        delay: Duration,
        calls: AtomicUsize,
    }

    impl Interfaces for Scripted {
        fn host_addrs(&self) -> Result<crate::sys::parse::HostInterfaces, SysError> {
            Ok(Default::default())
        }

        fn jail_addrs(&self, jid: u32) -> Result<Vec<IpAddr>, SysError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            let mut a = self.answers.lock().unwrap();
            let list = a.get_mut(&jid).expect("scripted jid");
            let next = if list.len() > 1 { list.remove(0) } else { list[0].clone() };
            next.map_err(|e| ParseError(e).into())
        }
    }

    fn scripted(answers: Vec<(u32, Vec<Answer>)>, delay: Duration) -> Arc<Scripted> {
        Arc::new(Scripted { answers: Mutex::new(answers.into_iter().collect()), delay, calls: AtomicUsize::new(0) })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn name(s: &str) -> JailName {
        s.parse().unwrap()
    }

    fn settle(v: &VnetAddrs) {
        assert!(v.wait_idle(Instant::now() + Duration::from_secs(10)), "reads finished");
    }

    #[test]
    fn pending_then_known_then_refreshed_only_when_due() {
        let s = scripted(vec![(7, vec![Ok(vec![ip("10.13.37.5")])])], Duration::ZERO);
        let (tx, rx) = mpsc::channel();
        let v = VnetAddrs::new(s.clone(), Duration::from_secs(3600), tx);
        let first = v.lookup(7, &name("web")).unwrap_err();
        assert!(first.pending && first.reason.contains("reading the addresses of VNET jail web (jid 7)"), "{first:?}");
        settle(&v);
        assert!(rx.try_recv().is_ok(), "a finished read wakes the agent");
        assert_eq!(v.lookup(7, &name("web")).unwrap(), vec![ip("10.13.37.5")]);
        settle(&v);
        assert_eq!(s.calls.load(Ordering::SeqCst), 1, "not due again before the refresh interval");
        v.invalidate_all();
        v.lookup(7, &name("web")).unwrap();
        settle(&v);
        assert_eq!(s.calls.load(Ordering::SeqCst), 2, "reconcile reads again");
    }

    #[test]
    fn a_failure_is_an_error_never_no_addresses_and_is_retried() {
        let s = scripted(
            vec![(7, vec![Err("ifconfig: jail \"7\" not found".into()), Ok(vec![ip("10.13.37.5")])])],
            Duration::ZERO,
        );
        let (tx, _rx) = mpsc::channel();
        let v = VnetAddrs::new(s.clone(), Duration::from_secs(3600), tx);
        let _ = v.lookup(7, &name("web"));
        settle(&v);
        let e = v.lookup(7, &name("web")).unwrap_err();
        assert!(!e.pending && e.reason.contains("not found") && e.reason.contains("retrying"), "{e:?}");
        assert_eq!(v.problems().len(), 1);
        std::thread::sleep(FIRST_RETRY + Duration::from_millis(50));
        let _ = v.lookup(7, &name("web"));
        settle(&v);
        assert_eq!(v.lookup(7, &name("web")).unwrap(), vec![ip("10.13.37.5")]);
        assert!(v.problems().is_empty());
    }

    #[test]
    fn a_failed_reread_keeps_the_last_good_addresses() {
        let s = scripted(vec![(7, vec![Ok(vec![ip("10.13.37.5")]), Err("killed".into())])], Duration::ZERO);
        let (tx, _rx) = mpsc::channel();
        let v = VnetAddrs::new(s, Duration::from_secs(3600), tx);
        let _ = v.lookup(7, &name("web"));
        settle(&v);
        v.invalidate_all();
        let _ = v.lookup(7, &name("web"));
        settle(&v);
        assert_eq!(v.lookup(7, &name("web")).unwrap(), vec![ip("10.13.37.5")]);
        let p = v.problems();
        assert!(p.len() == 1 && p[0].3, "reported, with the old addresses still in use: {p:?}");
    }

    #[test]
    fn a_slow_read_does_not_block_lookups_of_others() {
        let s = scripted(
            vec![(7, vec![Ok(vec![ip("10.13.37.5")])]), (8, vec![Ok(vec![ip("10.13.37.6")])])],
            Duration::from_millis(300),
        );
        let (tx, _rx) = mpsc::channel();
        let v = VnetAddrs::new(s, Duration::from_secs(3600), tx);
        let started = Instant::now();
        assert!(v.lookup(7, &name("slow")).unwrap_err().pending);
        assert!(v.lookup(8, &name("other")).unwrap_err().pending);
        assert!(started.elapsed() < Duration::from_millis(250), "lookups never wait for a read");
        settle(&v);
        assert!(v.lookup(8, &name("other")).is_ok());
    }

    #[test]
    fn gone_jails_are_forgotten_and_a_reused_jid_is_read_anew() {
        let s = scripted(vec![(7, vec![Ok(vec![ip("10.13.37.5")]), Ok(vec![ip("10.13.37.9")])])], Duration::ZERO);
        let (tx, _rx) = mpsc::channel();
        let v = VnetAddrs::new(s, Duration::from_secs(3600), tx);
        let _ = v.lookup(7, &name("web"));
        settle(&v);
        assert!(v.lookup(7, &name("db")).unwrap_err().pending, "another jail under an old jid");
        settle(&v);
        v.retain(&BTreeSet::new());
        assert!(v.lookup(7, &name("db")).unwrap_err().pending);
    }
}
