//! Printing a command's output (human or JSON) and its failure, with the exit code.

use pgbookend::error::Error;
use pgbookend::output::Output;
use std::process::ExitCode;

pub(crate) fn print(out: &Output, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out.json).unwrap_or_default()
        );
    } else {
        print!("{}", out.human);
    }
    if let Some(e) = &out.error {
        eprintln!("pgbookend: error: {e}");
    }
}

pub(crate) fn fail(e: &Error, json: bool) -> ExitCode {
    if json {
        let v = serde_json::json!({ "error": e });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    eprintln!("pgbookend: error: {e}");
    ExitCode::from(e.class().exit_code() as u8)
}
