//! Every YAML example in the README is loaded the way a reader would use it, so the
//! documentation cannot drift from the code: agent files and probe files (fragments of a probe
//! file get a name) pass `slo-probe check` with the variables they name set and the files they
//! name present; a CI step's `slo-probe` command uses only flags its command has. The example
//! probes under `probes/` are checked in `tests/config_check.rs`.

mod common;

use std::path::Path;

use common::{Tree, run};

const README: &str = include_str!("../README.md");

/// The README's fenced `yaml` blocks, with the line each starts on.
fn yaml_blocks() -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in README.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match current.take() {
            None if fence && matches!(line.trim(), "```yaml" | "```yml") => {
                current = Some((i + 2, String::new()));
            }
            None => {}
            Some(block) if fence => out.push(block),
            Some((start, mut text)) => {
                text.push_str(line);
                text.push('\n');
                current = Some((start, text));
            }
        }
    }
    out
}

/// A value for each `${NAME}` a block names, of the kind its name says.
fn variables(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in block.split("${").skip(1) {
        let Some((name, _)) = part.split_once('}') else {
            continue;
        };
        let value = if name.ends_with("_URL") {
            "https://service.example:8443"
        } else if name.ends_with("_DSN") {
            "host=warehouse dbname=orders user=slo_probe"
        } else {
            "s3cret"
        };
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), value.to_string()));
        }
    }
    out
}

/// The block with each absolute path it names (`/etc/...`, `/run/...`, `/secrets/...`) moved
/// under `root`, where the file is created: a PEM certificate for `.pem`, a secret otherwise.
fn with_files(block: &str, root: &Path) -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["example".into()])
        .unwrap()
        .cert
        .pem();
    let mut out = String::new();
    for line in block.lines() {
        // Only values: a path in a trailing comment is an alternative, not a file the line uses.
        let (code, comment) = line.split_once(" #").unwrap_or((line, ""));
        let mut code = code.to_string();
        if let Some((key, value)) = code.split_once(": ")
            && key.trim_end().ends_with("_file")
            && !value.trim().starts_with('/')
        {
            // A file relative to the probe file: the repository's file of that name, as a
            // reader would take it from there.
            let name = value.trim();
            let found = ["probes", "probes/formats", "probes/sinks"]
                .iter()
                .map(|d| Path::new(env!("CARGO_MANIFEST_DIR")).join(d).join(name))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("`{name}` is in no directory of probes/"));
            std::fs::create_dir_all(root.join("probes")).unwrap();
            std::fs::copy(found, root.join("probes").join(name)).unwrap();
        } else if let Some((key, value)) = code.split_once(": ")
            && value.trim().starts_with('/')
            && !key.trim_start().starts_with('/')
        {
            let path = value.trim();
            let moved = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
            let content = if path.ends_with(".pem") {
                cert.as_str()
            } else {
                "s3cret"
            };
            std::fs::write(&moved, content).unwrap();
            code = format!("{key}: {}", moved.display());
        }
        out.push_str(&code);
        if !comment.is_empty() {
            out.push_str(" #");
            out.push_str(comment);
        }
        out.push('\n');
    }
    out
}

fn top_level_keys(block: &str) -> Vec<&str> {
    block
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#') && !l.starts_with('-'))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim()))
        .collect()
}

const AGENT_KEYS: &[&str] = &["site", "clusters", "listen", "window", "tracing"];
const MINIMAL_AGENT: &str = "clusters:\n  primary:\n    bootstrap_servers: kafka:9092\n";
const MINIMAL_PROBE: &str = "name: orders\n";

#[test]
fn every_yaml_example_in_the_readme_loads() {
    let blocks = yaml_blocks();
    assert!(blocks.len() >= 5, "found {} YAML blocks", blocks.len());
    let (mut agents, mut probes, mut steps) = (0, 0, 0);
    for (line, block) in &blocks {
        let at = format!("README.md:{line}");
        if block.trim_start().lines().any(|l| l.starts_with("- ")) {
            ci_step_flags_exist(&at, block);
            steps += 1;
            continue;
        }
        let t = Tree::new();
        let block = with_files(block, t.path());
        let keys = top_level_keys(&block);
        if keys.iter().any(|k| AGENT_KEYS.contains(k)) {
            t.write("slo-probe.yaml", &block);
            t.write("probes/orders.yaml", MINIMAL_PROBE);
            agents += 1;
        } else {
            let probe = if keys.contains(&"name") {
                block.clone()
            } else {
                format!("name: readme-example\n{block}")
            };
            t.write("slo-probe.yaml", MINIMAL_AGENT);
            t.write("probes/example.yaml", &probe);
            probes += 1;
        }
        let env = variables(&block);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = run(t.path(), &["check"], &env);
        assert_eq!(
            out.code(),
            0,
            "{at}: the example does not pass check:\n{block}\n{}",
            out.stderr
        );
    }
    assert!(
        agents >= 2 && probes >= 3 && steps >= 1,
        "{agents} agent files, {probes} probe files, {steps} CI steps"
    );
}

/// Each `slo-probe` command in a CI step uses only flags its command's `--help` lists.
fn ci_step_flags_exist(at: &str, block: &str) {
    let commands: Vec<&str> = block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("run: "))
        .filter(|c| c.starts_with("slo-probe "))
        .collect();
    assert!(!commands.is_empty(), "{at}: a CI step without slo-probe");
    for command in commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        let sub = words[1];
        let help = run(Path::new("."), &[sub, "--help"], &[]);
        assert_eq!(
            help.code(),
            0,
            "{at}: `slo-probe {sub} --help`: {}",
            help.stderr
        );
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            assert!(
                help.stdout.contains(&format!("{flag} "))
                    || help.stdout.contains(&format!("{flag}\n")),
                "{at}: `{flag}` is not a flag of `slo-probe {sub}`:\n{}",
                help.stdout
            );
        }
    }
}

/// The checks above can fail: an example with a field that does not exist, a variable left
/// unset, or a flag `smoke` does not have is caught.
#[test]
fn a_drifted_example_is_caught() {
    let t = Tree::new();
    t.write("slo-probe.yaml", MINIMAL_AGENT);
    t.write(
        "probes/example.yaml",
        "name: readme-example\nintervall: 5s\n",
    );
    assert_eq!(run(t.path(), &["check"], &[]).code(), 78);
    let block = "verify:\n  http:\n    url: ${SEARCH_URL}/orders/_search\n";
    t.write(
        "probes/example.yaml",
        &format!("name: readme-example\n{block}"),
    );
    assert_eq!(
        run(t.path(), &["check"], &[]).code(),
        78,
        "the variable is unset"
    );
    let env = variables(block);
    assert_eq!(
        env,
        [(
            "SEARCH_URL".to_string(),
            "https://service.example:8443".to_string()
        )]
    );
    let result = std::panic::catch_unwind(|| {
        ci_step_flags_exist("test", "- run: slo-probe smoke --roundz 5\n");
    });
    assert!(result.is_err(), "an unknown flag is caught");
}

/// The README's Flink SQL (the guide "Probing a Flink job") is what the tests run: each fenced
/// `sql` block is the text of one of the job files under `probes/flink/`, whole or a part of
/// it as it stands there.
#[test]
fn the_flink_sql_in_the_readme_is_the_sql_the_tests_run() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("probes/flink");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in README.lines().enumerate() {
        match current.take() {
            None if line.trim() == "```sql" => current = Some((i + 2, String::new())),
            None => {}
            Some(block) if line.trim_start().starts_with("```") => blocks.push(block),
            Some((start, mut text)) => {
                text.push_str(line);
                text.push('\n');
                current = Some((start, text));
            }
        }
    }
    assert!(blocks.len() >= 2, "the guide shows the job's SQL");
    for (line, block) in &blocks {
        assert!(
            files.iter().any(|f| f.contains(block.as_str())),
            "README.md line {line}: this SQL is in no file of probes/flink/ as written:\n{block}"
        );
    }
}
