//! startup_timing: measures Cluster::start + Drop per major (first start includes building the template).

use std::time::Instant;

use pgbookend_testkit::{majors, Cluster, ClusterOptions};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    println!("major  first-start  start(avg)  query(avg)  drop(avg)   [{rounds} warm rounds]");
    for major in majors() {
        let t = Instant::now();
        let c = Cluster::start(ClusterOptions::new(major));
        let first = t.elapsed();
        drop(c);
        let (mut start, mut query, mut stop) = (0.0, 0.0, 0.0);
        for _ in 0..rounds {
            let t = Instant::now();
            let c = Cluster::start(ClusterOptions::new(major));
            start += t.elapsed().as_secs_f64();
            let t = Instant::now();
            assert_eq!(c.psql("SELECT 1"), "1");
            query += t.elapsed().as_secs_f64();
            let t = Instant::now();
            drop(c);
            stop += t.elapsed().as_secs_f64();
        }
        let n = rounds.max(1) as f64;
        println!(
            "{major:>5}  {:>9.0}ms  {:>8.0}ms  {:>8.0}ms  {:>7.0}ms",
            first.as_secs_f64() * 1e3,
            start / n * 1e3,
            query / n * 1e3,
            stop / n * 1e3
        );
    }
}
