//! The `flotilla` binary: one node of a flotilla cluster.

use clap::{Parser, Subcommand};
use flotilla::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

mod bench;

/// sled frees on its epoch-collector threads what the actors allocated; glibc's allocator spends
/// much of a write-heavy node's time consolidating such frees (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A replicated key-value store of many Raft groups, spoken to over the Redis protocol.
///
/// With no argument, starts a single node on the built-in defaults (the same as
/// config/single-node.toml): clients on 127.0.0.1:6380, data in ./flotilla-data.
#[derive(Parser, Debug)]
#[command(name = "flotilla", version)]
struct Cli {
    /// Start the node this TOML file describes.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(Subcommand, Debug)]
enum Tool {
    /// Run a scenario file (config/scenarios/*.toml): a whole cluster in this process, its
    /// steps in order, one line each; exits 1 at the first unmet expectation, 2 if the file
    /// is malformed.
    Script {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Run the deterministic simulation for seeds SEED..SEED+SEEDS: whole clusters in this
    /// process in virtual time, random clients and faults, checked for linearizability.
    Sim {
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How many seeds.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Simulated seconds per seed.
        #[arg(long, default_value_t = 60)]
        duration: u64,
    },
    /// Put a load of SETs and GETs on a RESP server (flotilla or Redis) and print ops/s, errors
    /// and latency percentiles; `flotilla bench report FILE...` compares saved results.
    Bench(Box<bench::BenchArgs>),
}

fn main() -> ExitCode {
    // Transparent huge pages off for this process: mimalloc asks for them, and the kernel then
    // zeroes 2 MiB at each fault of memory mimalloc returned and takes again (a tenth of a
    // follower's Store thread under writes; see README, Performance).
    // SAFETY: prctl with these arguments only sets a flag of this process.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let cli = Cli::parse();
    if let Some(Tool::Bench(args)) = &cli.command {
        return bench::main(args);
    }
    if let Some(Tool::Sim {
        seed,
        seeds,
        duration,
    }) = cli.command
    {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
        return flotilla::sim::run_many(seed, seeds, std::time::Duration::from_secs(duration));
    }
    if let Some(Tool::Script { file }) = &cli.command {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
        let scenario = match flotilla::scenario::load(file) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("flotilla: scenario file error: {e}");
                return ExitCode::from(2);
            }
        };
        return match flotilla::scenario::run(file, scenario) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flotilla: scenario failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,raft=warn"))
        .format_timestamp_millis()
        .init();
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("flotilla: config error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let passed_raft = match flotilla::run::passed_raft_socket(config.raft_addr) {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("flotilla: {e}");
            return ExitCode::FAILURE;
        }
    };
    flotilla::run::abort_on_panic();
    let system = actix::System::new();
    match system.block_on(flotilla::run::run(config, passed_raft)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla: {e}");
            ExitCode::FAILURE
        }
    }
}
