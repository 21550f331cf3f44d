//! The `roost` command: parses the subcommand and hands it to the library.

use clap::{Parser, Subcommand};
use roost_cli::endpoints::Given;
use roost_common::env;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Roost: a self-hosted Function-as-a-Service platform.
#[derive(Parser)]
#[command(name = "roost", version)]
struct Cli {
    /// The platform's entry (Envoy's public listener). Default: the one in `roost up`'s endpoints file
    /// (`.roost/endpoints.env`, or in ROOST_WORK_DIR), else http://127.0.0.1:8080.
    #[arg(long, global = true, env = env::GATE_URL)]
    gate: Option<String>,
    /// The orchestrator's API. Default: the one in `roost up`'s endpoints file
    /// (`.roost/endpoints.env`, or in ROOST_WORK_DIR), else http://127.0.0.1:18002.
    #[arg(long, global = true, env = env::ORCHESTRATOR_URL)]
    orchestrator: Option<String>,
    /// Redis (for load figures). Default: the one in `roost up`'s endpoints file
    /// (`.roost/endpoints.env`, or in ROOST_WORK_DIR), else redis://127.0.0.1:6379/.
    #[arg(long, global = true, env = env::REDIS_URL)]
    redis: Option<String>,
    /// The control token the orchestrator's API requires. Default: the file
    /// --control-token-file names, else the one in `roost up`'s endpoints file. With
    /// compose: `export ROOST_CONTROL_TOKEN=$(docker-compose exec -T orchestrator cat /run/roost/secrets/control-token)`.
    #[arg(long, global = true, env = env::CONTROL_TOKEN, hide_env_values = true)]
    control_token: Option<String>,
    /// A file holding the control token.
    #[arg(long, global = true, env = env::CONTROL_TOKEN_FILE)]
    control_token_file: Option<PathBuf>,
    /// The management API's token (deploy, rm, describe, scale, logs, calls). Default: the one in
    /// `roost up`'s endpoints file; `roost up` prints it; with compose:
    /// `docker compose exec orchestrator cat /var/lib/roost/api-token`.
    #[arg(long, global = true, env = env::API_TOKEN, hide_env_values = true)]
    api_token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the whole platform on this machine; Ctrl-C stops it.
    Up {
        /// Where replicas run: processes, or Docker containers.
        #[arg(long, env = env::RUNTIME, value_enum, default_value = "process")]
        runtime: roost_cli::up::Runtime,
        /// The platform's port (Envoy's public listener, the entry; the gate listens behind it on a port of its own).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The definitions file.
        #[arg(long, default_value = "faas-runtime/global-function-definition.yml")]
        definitions: PathBuf,
        /// Where logs, state and `endpoints.env` (read by the other commands) go.
        #[arg(long, env = env::WORK_DIR, default_value = roost_cli::endpoints::DEFAULT_WORK_DIR)]
        work_dir: PathBuf,
        /// The repository (envoy/, gateway-lua/, faas-runtime/); default: the current folder.
        #[arg(long, env = env::HOME, default_value = ".")]
        home: PathBuf,
    },
    /// List functions, their replicas and state.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Call a function through the gate (GET, or POST with --data) and print its answer;
    /// with --async, queue the call (a POST to /async/NAME) and print its id.
    Invoke {
        /// Function name.
        function: String,
        /// A JSON body to POST.
        #[arg(long)]
        data: Option<String>,
        /// Path and query after the function name.
        #[arg(long, default_value = "")]
        path: String,
        /// Send the API token (for a function with `auth: token`; never sent otherwise,
        /// so a public function does not see it).
        #[arg(long)]
        auth: bool,
        /// Call asynchronously: the platform queues the call, answers its id at once and
        /// delivers it (with retries); `roost calls ID` shows how it went.
        #[arg(long = "async")]
        asynchronous: bool,
        /// With --async: a repeated submit with the same key (per function, for a day)
        /// answers the first call's id instead of calling again.
        #[arg(long, requires = "asynchronous", value_parser = roost_cli::calls::parse_idempotency_key)]
        idempotency_key: Option<String>,
        /// With --async: a URL the platform POSTs the call's result to once it is done or failed.
        #[arg(long, requires = "asynchronous", value_parser = roost_cli::calls::parse_callback)]
        callback: Option<String>,
        /// With --async: wait until the call is done or failed (asking every 200 ms), then
        /// print the function's answer; exits 1 when it failed, its last error on stderr.
        #[arg(long, requires = "asynchronous")]
        wait: bool,
        /// With --wait: how long to wait at most (500ms, 30s, 2m).
        #[arg(long, requires = "wait", default_value = roost_cli::calls::DEFAULT_TIMEOUT, value_parser = roost_cli::calls::parse_timeout)]
        timeout: Duration,
        /// With --async: print JSON (the accepted call: id, function, status_url,
        /// duplicate; with --wait, the call's record).
        #[arg(long, requires = "asynchronous")]
        json: bool,
    },
    /// Asynchronous calls, newest first (a table: id, function, state, attempts, age, last
    /// error), from the management API; with an ID, that call's record and answer.
    Calls {
        /// A call's id (as `roost invoke --async` prints it): show its record.
        #[arg(value_parser = roost_cli::calls::parse_call_id, conflicts_with_all = ["function", "failed", "limit"])]
        id: Option<String>,
        /// Only this function's calls.
        #[arg(long, value_parser = roost_cli::calls::parse_function)]
        function: Option<String>,
        /// Only failed calls (retries ran out, or a final 4xx), newest failure first.
        #[arg(long)]
        failed: bool,
        /// At most this many calls.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Live replicas, in flight, queued and cold starts, refreshed every second.
    Status {
        /// Print once and exit.
        #[arg(long)]
        once: bool,
        /// Print one JSON object per refresh (one line each).
        #[arg(long)]
        json: bool,
    },
    /// A function's output (its replicas' and its build's), as `<time> <replica> <line>`
    /// with the time in RFC 3339 UTC.
    Logs {
        /// Function name.
        function: String,
        /// Keep printing new lines as they come (Ctrl-C stops).
        #[arg(long, short)]
        follow: bool,
        /// Only lines since then: a duration back from now (10m, 2h) or a time
        /// (2026-12-04T17:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only the last N lines kept (before following).
        #[arg(long)]
        tail: Option<usize>,
        /// Print the orchestrator's NDJSON (one JSON object per line) as it comes.
        #[arg(long)]
        json: bool,
    },
    /// Deploy or update a function: a folder (with its function.yml), one source file
    /// (*.py a Python handler, else a command), or --image with --name.
    Deploy {
        /// The function's folder or source file.
        #[arg(required_unless_present = "image", conflicts_with = "image")]
        path: Option<PathBuf>,
        /// Its name; default: function.yml's `name`, the folder's name or the file's stem.
        #[arg(long)]
        name: Option<String>,
        /// An image already on the Docker engine, serving HTTP on $PORT.
        #[arg(long, requires = "name")]
        image: Option<String>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a deployed function (its replicas drain first).
    Rm {
        /// Function name.
        function: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A function's definition, state, replicas, cold starts and last error.
    Describe {
        /// Function name.
        function: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a deployed function's fewest and most replicas (no replica restarts).
    Scale {
        /// Function name.
        function: String,
        /// scaling.min_replicas.
        #[arg(long)]
        min: Option<u32>,
        /// scaling.max_replicas.
        #[arg(long)]
        max: Option<u32>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a function's folder from a template, ready for `roost deploy NAME`.
    New {
        /// Function name (and folder name).
        name: String,
        /// The handler's language.
        #[arg(long, value_enum, default_value = "python")]
        lang: roost_cli::manage::Lang,
        /// Where to make the folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a definitions file and print every problem.
    Validate {
        /// The file.
        file: PathBuf,
        /// Print the result as JSON (the functions, or every problem).
        #[arg(long)]
        json: bool,
    },
    /// Send requests to a function at a fixed rate and print each second's figures.
    Load {
        /// Function name.
        #[arg(default_value = "hello")]
        function: String,
        /// Requests per second.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Seconds to run.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        seconds: u64,
        /// Path and query after the function name.
        #[arg(long, default_value = "")]
        path: String,
        /// Most requests outstanding at once.
        #[arg(long, default_value_t = 1000)]
        max_outstanding: usize,
        /// Print each second's figures and the total as JSON, one object per line.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // A reader that stops early (`roost ls --json | head`) ends `roost` quietly, as it
    // ends any Unix tool, instead of a panic on the broken pipe (Rust ignores SIGPIPE).
    // SAFETY: setting a signal's disposition to the default, before any thread of ours
    // writes to stdout; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let control_token = match roost_common::auth::ControlToken::configured(cli.control_token.as_deref(), cli.control_token_file.as_deref())
    {
        Ok(t) => t,
        Err(err) => {
            eprintln!("roost: {err}");
            return ExitCode::from(2);
        }
    };
    let api_token = match cli.api_token.as_deref().filter(|t| !t.is_empty()).map(roost_common::auth::ApiToken::new).transpose() {
        Ok(t) => t,
        Err(err) => {
            eprintln!("roost: {err}");
            return ExitCode::from(2);
        }
    };
    let given = Given { gate: cli.gate, orchestrator: cli.orchestrator, redis: cli.redis, control_token, api_token };
    let e = roost_cli::endpoints::from_environment(given);
    let result: anyhow::Result<bool> = match cli.command {
        Cmd::Up { runtime, port, definitions, work_dir, home } => {
            let exe = std::env::current_exe().unwrap_or_default();
            let bin_dir = exe.parent().map(PathBuf::from).unwrap_or_default();
            let home = std::fs::canonicalize(&home).unwrap_or(home);
            let opts = roost_cli::up::UpOptions {
                port,
                home,
                definitions: std::fs::canonicalize(&definitions).unwrap_or(definitions),
                work_dir,
                bin_dir,
                runtime,
            };
            let shutdown = roost_common::shutdown::on_signal();
            roost_cli::up::run(opts, shutdown).await.map(|_| true).map_err(Into::into)
        }
        Cmd::Ls { json } => roost_cli::commands::ls(&e, json).await.map(|_| true),
        Cmd::Invoke { function, data, path, auth, asynchronous: false, .. } => {
            roost_cli::commands::invoke(&e, &function, data.as_deref(), &path, auth).await
        }
        Cmd::Invoke { function, data, path, auth, asynchronous: true, idempotency_key, callback, wait, timeout, json } => {
            let submit =
                roost_cli::calls::Submit { function, data, path, auth, idempotency_key, callback, wait: wait.then_some(timeout), json };
            roost_cli::calls::submit(&e, &submit).await
        }
        Cmd::Calls { id: Some(id), json, .. } => roost_cli::calls::show(&e, &id, json).await.map(|_| true),
        Cmd::Calls { id: None, function, failed, limit, json, .. } => {
            let list = roost_cli::calls::ListRequest { function, failed, limit, json };
            roost_cli::calls::list(&e, &list).await.map(|_| true)
        }
        Cmd::Status { once, json } => roost_cli::commands::watch(&e, once, json).await.map(|_| true),
        Cmd::Logs { function, follow, since, tail, json } => {
            let req = roost_cli::logs::LogsRequest { function, follow, since, tail, json };
            roost_cli::logs::run(&e, &req).await.map(|_| true)
        }
        Cmd::Deploy { path, name, image, json } => {
            let what = match (path, image) {
                (_, Some(image)) => roost_cli::manage::What::Image(image),
                (Some(path), None) => roost_cli::manage::What::Path(path),
                (None, None) => unreachable!("clap requires a path or --image"),
            };
            roost_cli::manage::deploy(&e, &what, name.as_deref(), json).await.map(|_| true)
        }
        Cmd::Rm { function, json } => roost_cli::manage::rm(&e, &function, json).await.map(|_| true),
        Cmd::Describe { function, json } => roost_cli::manage::describe(&e, &function, json).await.map(|_| true),
        Cmd::Scale { function, min, max, json } => {
            let want = roost_common::wire::system::Scale { min_replicas: min, max_replicas: max };
            roost_cli::manage::scale(&e, &function, want, json).await.map(|_| true)
        }
        Cmd::New { name, lang, dir, json } => roost_cli::manage::new(&name, lang, &dir).map(|folder| {
            if json {
                println!("{}", serde_json::json!({ "name": name, "folder": folder }));
            } else {
                println!("made {}: edit it, then `roost deploy {}`", folder.display(), folder.display());
            }
            true
        }),
        Cmd::Validate { file, json } => Ok(roost_cli::commands::validate(&file, json)),
        Cmd::Load { function, rate, seconds, path, max_outstanding, json } => {
            let spec = roost_cli::load::LoadSpec { function, path, rate, duration: Duration::from_secs(seconds), max_outstanding, json };
            roost_cli::load::run(&e, &spec).await.map(|(_, errors)| errors == 0)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("roost: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("roost").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn invoke_async_takes_its_flags() {
        let Ok(Cmd::Invoke { function, asynchronous, idempotency_key, callback, wait, timeout, json, .. }) = parse(&[
            "invoke",
            "add",
            "--async",
            "--idempotency-key",
            "order-42",
            "--callback",
            "http://hooks.example.invalid/done",
            "--wait",
            "--timeout",
            "30s",
            "--json",
        ]) else {
            panic!("parses")
        };
        assert_eq!(function, "add");
        assert!(asynchronous && wait && json);
        assert_eq!(idempotency_key.as_deref(), Some("order-42"));
        assert_eq!(callback.as_deref(), Some("http://hooks.example.invalid/done"));
        assert_eq!(timeout, Duration::from_secs(30));
        // The defaults: no wait, 120 s once waiting.
        let Ok(Cmd::Invoke { asynchronous, wait, timeout, json, .. }) = parse(&["invoke", "add", "--async"]) else { panic!("parses") };
        assert!(asynchronous && !wait && !json);
        assert_eq!(timeout, Duration::from_secs(120));
        let Ok(Cmd::Invoke { asynchronous: false, .. }) = parse(&["invoke", "add", "--data", "{}"]) else { panic!("a plain invoke") };
    }

    #[test]
    fn the_async_flags_want_async_and_good_values() {
        for args in [
            &["invoke", "f", "--wait"][..],
            &["invoke", "f", "--idempotency-key", "k"],
            &["invoke", "f", "--callback", "http://h/"],
            &["invoke", "f", "--json"],
            &["invoke", "f", "--async", "--timeout", "5s"],
        ] {
            assert_eq!(parse(args).err().map(|e| e.kind()), Some(ErrorKind::MissingRequiredArgument), "{args:?}");
        }
        for args in [
            &["invoke", "f", "--async", "--callback", "ftp://h/"][..],
            &["invoke", "f", "--async", "--wait", "--timeout", "0s"],
            &["invoke", "f", "--async", "--idempotency-key", ""],
        ] {
            assert_eq!(parse(args).err().map(|e| e.kind()), Some(ErrorKind::ValueValidation), "{args:?}");
        }
    }

    #[test]
    fn calls_lists_or_shows_one() {
        let Ok(Cmd::Calls { id: None, function, failed, limit, json }) =
            parse(&["calls", "--function", "hello", "--failed", "--limit", "10", "--json"])
        else {
            panic!("parses")
        };
        assert_eq!((function.as_deref(), failed, limit, json), (Some("hello"), true, 10, true));
        let Ok(Cmd::Calls { id: None, function: None, failed: false, limit: 50, json: false, .. }) = parse(&["calls"]) else {
            panic!("the defaults")
        };
        let Ok(Cmd::Calls { id: Some(id), json: true, .. }) = parse(&["calls", "0a1b2c", "--json"]) else { panic!("one call") };
        assert_eq!(id, "0a1b2c");
        for (args, kind) in [
            (&["calls", "0a1b", "--failed"][..], ErrorKind::ArgumentConflict),
            (&["calls", "0a1b", "--limit", "5"], ErrorKind::ArgumentConflict),
            (&["calls", "--limit", "0"], ErrorKind::ValueValidation),
            (&["calls", "--limit", "1001"], ErrorKind::ValueValidation),
            (&["calls", "--function", "Bad"], ErrorKind::ValueValidation),
            (&["calls", "../x"], ErrorKind::ValueValidation),
        ] {
            assert_eq!(parse(args).err().map(|e| e.kind()), Some(kind), "{args:?}");
        }
    }
}
