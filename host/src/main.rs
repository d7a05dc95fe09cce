//! The `taskhost` command line; see `taskhost --help`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// mimalloc serves the process's Rust heap: a task's start allocates and frees a few hundred
/// small blocks and a module's load from the disk cache thousands, which it serves with less
/// CPU than glibc's malloc (README, "Warm start by CPU time"). The library sets no
/// allocator: its user chooses. C code (SQLite) still uses glibc's (`taskhost::memory`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `unparsed`: the worker's settings from the environment that do not parse, waited for
    // (cli/unparsed.rs) instead of a crash loop on every node.
    let (cli, unparsed) = match cli::Cli::try_parse() {
        Ok(cli) => (cli, None),
        Err(e) => match cli::unparsed::from_environment(&e) {
            Some((cli, sentence)) => (cli, Some(sentence)),
            None => {
                // `--help` and `--version` print to stdout and succeed; a usage error says why.
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::from(cli::exit::USAGE)
                } else {
                    ExitCode::SUCCESS
                };
            }
        },
    };
    cli::init_logging(&cli);
    // Fewer malloc arenas, less memory held by idle threads (taskhost::memory); glibc's own
    // MALLOC_ARENA_MAX, when set, wins.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        taskhost::memory::limit_arenas(taskhost::memory::ARENAS);
    }
    // In JSON, every line of stderr is a JSON object, the last error too.
    let json = cli.log_format == taskhost::observe::logs::LogFormat::Json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Timers (lease extensions) are looked at every this many task polls while the
        // workers are busy (tokio's default: 61). A running task's poll lasts up to a fuel
        // yield interval (~1 ms of guest work), so with every slot running 61 polls could
        // hold a due extension back for a tenth of a second and more (issue 19 item 4,
        // tests/bench/lease_lateness.py).
        .event_interval(taskhost::runtime::EVENT_INTERVAL)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::ERROR);
        }
    };
    let run = async {
        match unparsed {
            Some(sentence) => cli::unparsed::wait(cli, sentence).await,
            None => cli::main(cli).await,
        }
    };
    let code = match rt.block_on(run) {
        Ok(code) => code,
        Err(e) if json => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            ExitCode::from(cli::exit::ERROR)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit::ERROR)
        }
    };
    // Blocking work still running (a worker's compile of a module, a read on a hung network
    // filesystem, given up by its shutdown) is not waited for past this: a dropped runtime
    // would wait for it without end, past SHUTDOWN_TIMEOUT_SECONDS. Nothing it leaves undone
    // was acked.
    rt.shutdown_timeout(cli::EXIT_GRACE);
    code
}
