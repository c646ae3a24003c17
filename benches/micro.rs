//! Render and plan throughput, and the parsing of an idle poll's reads, for regressions:
//! `cargo bench --bench micro` (the publish ones alone: `cargo bench --bench micro -- publish`).

use std::collections::{BTreeMap, BTreeSet};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kleene_rdr::core::plan::{Applied, Desired, Observed, Plan, RunningJail, Stored, plan, plan_publish};
use kleene_rdr::core::publication::Publication;
use kleene_rdr::core::render::{Gateways, HostView, Targets, render_uniform};
use kleene_rdr::core::renderer::Renderer;

fn publications(jails: usize, per_jail: usize) -> Vec<Stored> {
    let mut out = Vec::new();
    for i in 0..jails {
        for k in 0..per_jail {
            out.push(Stored {
                seq: out.len() as u64 + 1,
                publication: Publication::new(
                    format!("j{i}").parse().unwrap(),
                    format!("{}:{}", 10000 + i * per_jail + k, 80 + k).parse().unwrap(),
                    vec![],
                    false,
                    None,
                ),
            });
        }
    }
    out
}

fn gateways() -> Gateways {
    Gateways { inet: Some("em0".parse().unwrap()), inet6: Some("em0".parse().unwrap()) }
}

fn observed(jails: usize) -> Observed {
    Observed {
        jails: (0..jails)
            .map(|i| RunningJail {
                name: format!("j{i}").parse().unwrap(),
                jid: 100 + i as u32,
                vnet: false,
                addrs: Ok(vec![format!("10.{}.{}.2", 1 + i / 250, i % 250).parse().unwrap()]),
            })
            .collect(),
        gateways: gateways(),
        anchors: Some(BTreeSet::new()),
        ..Observed::default()
    }
}

fn bench(c: &mut Criterion) {
    let one_jail: Vec<Publication> = publications(1, 10).into_iter().map(|s| s.publication).collect();
    let targets = Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00::2".parse().unwrap()]);
    c.bench_function("render one anchor (10 publications, dual stack)", |b| {
        b.iter(|| render_uniform(&one_jail, &targets, &HostView::new(gateways()), false).text())
    });
    let desired = publications(1000, 10);
    let obs = observed(1000);
    let (force, errors) = (BTreeSet::new(), BTreeMap::new());
    let all = |publications| Desired { publications, networks: &[], anchor: "kleene", reach: Default::default() };
    let nothing = BTreeMap::new();
    let cold = Applied { loaded: &nothing, force: &force, pf_errors: &errors };
    let mut renderer = Renderer::default();
    let first = plan(&all(&desired), &obs, &cold, &mut renderer);
    let loaded = first.wanted.clone();
    let mut current = obs.clone();
    current.anchors = Some(loaded.keys().cloned().collect());
    let settled = Applied { loaded: &loaded, force: &force, pf_errors: &errors };
    // Each plan replaces the one before, as in the agent: a plan dropped before the next is made
    // lets glibc hand the top of the heap back, and the next plan pays page faults for it.
    let mut last = Plan::default();
    c.bench_function("plan 1000 jails x 10 publications, nothing changed (cached)", |b| {
        b.iter(|| last = plan(&all(&desired), &current, &settled, &mut renderer))
    });
    c.bench_function("plan 1000 jails x 10 publications, cold (no cache)", |b| {
        b.iter(|| last = plan(&all(&desired), &obs, &cold, &mut Renderer::default()))
    });

    // A publish of one port into jail j500 (which holds 10 already), pf settled. Two
    // alternative publishes (seqs 10001 and 10002) take turns, so that every iteration renders
    // the jail's anchor again rather than finding it remembered.
    let before = plan(&all(&desired), &current, &settled, &mut renderer);
    let with = |seq: u64, port: u16| {
        let mut d = desired.clone();
        let spec = format!("{port}:80").parse().unwrap();
        d.push(Stored { seq, publication: Publication::new("j500".parse().unwrap(), spec, vec![], false, None) });
        d
    };
    let turns = [with(10_001, 30_001), with(10_002, 30_002)];
    let mut turn = 0;
    let mut group = c.benchmark_group("publish into 10,000 publications (plan + render, no processes)");
    group.bench_function("incremental: plan_publish + merge", |b| {
        b.iter_batched(
            || before.clone(),
            |mut p| {
                turn = 1 - turn;
                let publish = plan_publish(&all(&turns[turn]), &current, &settled, &p.held, &mut renderer);
                let publish = publish.expect("a publish into one jail");
                assert_eq!(publish.actions.len(), 1);
                p.merge(publish);
                p
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("full plan (cached renderer)", |b| {
        b.iter(|| {
            turn = 1 - turn;
            last = plan(&all(&turns[turn]), &current, &settled, &mut renderer);
        })
    });
    group.finish();
    // What an idle poll parses: jls's list of 1,000 jails, as the fake jls prints it.
    let jls: String = {
        let jails: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"jid": "{}", "name": "j{i}", "ip4.addr": ["10.{}.{}.2"], "ip6.addr": [], "vnet": "inherit"}}"#,
                    100 + i,
                    1 + i / 250,
                    i % 250
                )
            })
            .collect();
        format!(r#"{{"__version": "2", "jail-information": {{"jail": [{}]}}}}"#, jails.join(", "))
    };
    c.bench_function("parse jls --libxo json, 1000 jails", |b| {
        b.iter(|| kleene_rdr::sys::parse::parse_jls(&jls).unwrap())
    });
    let anchors: String = (0..1000).map(|i| format!("  kleene/j{i}\n")).collect();
    c.bench_function("parse pfctl -s Anchors, 1000 anchors", |b| {
        b.iter(|| kleene_rdr::sys::parse::parse_anchors(&anchors))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
