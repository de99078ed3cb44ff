//! Cost of resolving an install's version against a plugin with 1,000 versions (issue 4).
//! Run with `cargo bench --bench resolve`; prints figures, asserts nothing about speed.
use std::{hint::black_box, time::Instant};

use plugin_operator::{
    lifecycle::resolve::{Candidate, Request, resolve},
    resources::{UpgradeMode, VersionSelector},
};
use semver::Version;

fn versions(count: usize) -> Vec<Candidate> {
    (0..count)
        .map(|i| Candidate {
            version: Version::new((i / 100) as u64, ((i / 10) % 10) as u64, (i % 10) as u64),
            // Every seventh is a draft, every thirteenth a pre-release of the next.
            formal: i % 7 != 0,
        })
        .chain((0..count / 13).map(|i| Candidate {
            version: Version::parse(&format!("{}.0.0-rc.{i}", i % 10)).expect("version"),
            formal: true,
        }))
        .collect()
}

fn main() {
    let candidates = versions(1_000);
    let failed: Vec<Version> = (0..20).map(|i| Version::new(9, i % 10, 9)).collect();
    let running = Version::new(3, 4, 5);
    let approved = Version::new(4, 0, 0);
    let cases: [(&str, &str, UpgradeMode); 5] = [
        ("exact", "5.5.5", UpgradeMode::Manual),
        ("caret, Auto", "^3", UpgradeMode::Auto),
        ("caret, Manual with approval", "^4", UpgradeMode::Manual),
        ("range with comparators", ">=2.1 <8", UpgradeMode::Auto),
        ("any", "*", UpgradeMode::Auto),
    ];
    println!(
        "resolution against {} versions ({} failed), per call:",
        candidates.len(),
        failed.len()
    );
    for (name, selector, mode) in cases {
        let selector = VersionSelector::parse(selector).expect("selector");
        let request = Request {
            selector: &selector,
            mode,
            approved: Some(&approved),
            running: Some(&running),
            failed: &failed,
        };
        // Warm up, then time enough calls for a stable figure.
        for _ in 0..100 {
            black_box(resolve(black_box(&request), black_box(&candidates)).ok());
        }
        let iterations = 5_000;
        let started = Instant::now();
        for _ in 0..iterations {
            black_box(resolve(black_box(&request), black_box(&candidates)).ok());
        }
        let per_call = started.elapsed() / iterations;
        let target = resolve(&request, &candidates)
            .map(|r| r.target.to_string())
            .unwrap_or_else(|e| e.to_string());
        println!("  {name:<30} {per_call:>10.2?}  -> {target}");
    }
}
