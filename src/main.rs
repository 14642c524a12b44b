//! The `lifeboat` binary: parse, set up tracing, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use lifeboat::cli::{self, Cli};

fn main() -> ExitCode {
    let args = match Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and version are not failures; a rejected command line with --json still
            // gives its JSON error object on stdout.
            if e.use_stderr() && std::env::args().any(|a| a == "--json") {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                let message = first.strip_prefix("error: ").unwrap_or(first);
                let json = cli::json_error(message, 2, false);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).expect("serialises")
                );
            }
            e.exit()
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match args.global.verbose {
            0 => "warn",
            1 => "info,aws=warn",
            _ => "debug,aws=info,hyper=info",
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("error: {}", e.one_line());
            ExitCode::from(code)
        }
    }
}
