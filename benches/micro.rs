//! Render and plan throughput, for regressions: `cargo bench --bench micro`.

use std::collections::{BTreeMap, BTreeSet};

use criterion::{Criterion, criterion_group, criterion_main};
use kleene_rdr::core::plan::{Applied, Desired, Observed, RunningJail, Stored, plan};
use kleene_rdr::core::publication::Publication;
use kleene_rdr::core::render::{Gateways, Targets, render_uniform};
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
        b.iter(|| render_uniform(&one_jail, &targets, &gateways()).text())
    });
    let desired = publications(1000, 10);
    let obs = observed(1000);
    let (force, errors) = (BTreeSet::new(), BTreeMap::new());
    let all = |publications| Desired { publications, networks: &[], anchor: "kleene" };
    let nothing = BTreeMap::new();
    let cold = Applied { loaded: &nothing, force: &force, pf_errors: &errors };
    let mut renderer = Renderer::default();
    let first = plan(&all(&desired), &obs, &cold, &mut renderer);
    let loaded = first.wanted.clone();
    let mut current = obs.clone();
    current.anchors = Some(loaded.keys().cloned().collect());
    let settled = Applied { loaded: &loaded, force: &force, pf_errors: &errors };
    c.bench_function("plan 1000 jails x 10 publications, nothing changed (cached)", |b| {
        b.iter(|| plan(&all(&desired), &current, &settled, &mut renderer))
    });
    c.bench_function("plan 1000 jails x 10 publications, cold (no cache)", |b| {
        b.iter(|| plan(&all(&desired), &obs, &cold, &mut Renderer::default()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
