//! Runs the file-list walk on a directory, for `bench/filelist.sh`:
//! `filelist_walk DIR OUT.zst [START.zst]` walks DIR into OUT (or, given START, walks it
//! again and keeps what is also in START, as `stop` does) and prints the count.

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: filelist_walk DIR OUT.zst [START.zst]");
        std::process::exit(2);
    }
    let res = match args.get(3) {
        Some(start) => pgbookend::bundle::filelist::intersect_walk(
            Path::new(&args[1]),
            Path::new(start),
            Path::new(&args[2]),
        ),
        None => pgbookend::bundle::filelist::walk_to(Path::new(&args[1]), Path::new(&args[2])),
    };
    match res {
        Ok(n) => println!("{n}"),
        Err(e) => {
            eprintln!("filelist_walk: {e}");
            std::process::exit(1);
        }
    }
}
