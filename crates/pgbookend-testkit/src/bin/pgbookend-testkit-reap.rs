//! pgbookend-testkit-reap: CI's final sweep; kills leftover test servers and removes leftover harness directories.

fn main() {
    let reaped = pgbookend_testkit::reap_leftovers();
    for pid in &reaped.killed {
        println!("killed postgres pid {pid}");
    }
    for dir in &reaped.removed {
        println!("removed {}", dir.display());
    }
    println!(
        "pgbookend-testkit-reap: {} process(es) killed, {} dir(s) removed",
        reaped.killed.len(),
        reaped.removed.len()
    );
}
