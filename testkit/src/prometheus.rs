//! A real Prometheus (Debian's package, installed by `monitoring/check.sh`) for tests that
//! check what the monitoring sees: scrape and rule evaluation every second, the shipped alert
//! rules, and the HTTP API's queries and alerts.
//!
//! The only change a test may make to the shipped rules is [`shipped_rules_with_for`]: every
//! `for:` window shortened, so a test waits seconds where production waits minutes. Expressions,
//! thresholds and rate windows stay as shipped (docs/RUNBOOK.md, "Testing the rules").

use crate::{free_port, http_get, unique};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The shipped alert rules.
pub const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../monitoring/alert_rules.yml");

/// The shipped rules with every `for:` window replaced by `window` (e.g. `"5s"`): the test
/// override documented in docs/RUNBOOK.md. Panics when the file has no `for:` to replace.
pub fn shipped_rules_with_for(window: &str) -> String {
    let text = std::fs::read_to_string(RULES).expect("monitoring/alert_rules.yml");
    let mut replaced = 0;
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            let body = line.trim_start();
            if body.starts_with("for: ") {
                replaced += 1;
                format!("{}for: {window}", &line[..line.len() - body.len()])
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(replaced > 0, "no `for:` in {RULES}");
    out.join("\n") + "\n"
}

/// One alert from `/api/v1/alerts`.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
    pub labels: serde_json::Map<String, serde_json::Value>,
}

impl Alert {
    /// The value of label `k` ("" when absent).
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).and_then(|v| v.as_str()).unwrap_or("")
    }
}

/// A Prometheus process owned by one test, on a free loopback port and its own data directory.
pub struct Prometheus {
    pub addr: String,
    dir: PathBuf,
    child: Child,
}

impl Prometheus {
    /// Starts Prometheus with `rules` (YAML text) and `scrape_configs` (the YAML list under
    /// `scrape_configs:`, indented by two spaces); scrape and evaluation every second.
    pub fn start(rules: &str, scrape_configs: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("prometheus"));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let rules_file = dir.join("rules.yml");
        std::fs::write(&rules_file, rules).expect("rules file");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 1s}}\n\
             rule_files: [{:?}]\nscrape_configs:\n{scrape_configs}",
            rules_file.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("Debian's prometheus at /usr/bin/prometheus (monitoring/check.sh installs it)");
        Self { addr, dir, child }
    }

    /// The `data.result` array of an instant query, `None` while Prometheus does not answer
    /// or the result is empty.
    pub async fn query(&self, promql: &str) -> Option<Vec<serde_json::Value>> {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={q}"))
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?.clone();
        (status == 200 && !result.is_empty()).then_some(result)
    }

    /// The value of a query returning one sample, `None` when there is none.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        self.query(promql).await?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// Every pending or firing alert, `None` while Prometheus does not answer.
    pub async fn alerts(&self) -> Option<Vec<Alert>> {
        let (status, body) = http_get(&self.addr, "/api/v1/alerts").await.ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(
            v["data"]["alerts"]
                .as_array()?
                .iter()
                .filter_map(|a| {
                    let labels = a["labels"].as_object()?.clone();
                    Some(Alert {
                        name: labels.get("alertname")?.as_str()?.to_string(),
                        state: a["state"].as_str()?.to_string(),
                        labels,
                    })
                })
                .collect(),
        )
    }

    /// How many rules Prometheus loaded, over every group.
    pub async fn rules_loaded(&self) -> Option<usize> {
        let (_, body) = http_get(&self.addr, "/api/v1/rules").await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(
            v["data"]["groups"]
                .as_array()?
                .iter()
                .filter_map(|g| g["rules"].as_array().map(Vec::len))
                .sum(),
        )
    }

    /// The end of Prometheus's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_for_window_is_replaced_and_nothing_else() {
        let shipped = std::fs::read_to_string(RULES).unwrap();
        let short = shipped_rules_with_for("5s");
        let windows = |t: &str| {
            t.lines()
                .filter(|l| l.trim_start().starts_with("for: "))
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        };
        assert!(windows(&shipped).len() > 20);
        assert_eq!(windows(&shipped).len(), windows(&short).len());
        assert!(windows(&short).iter().all(|w| w == "for: 5s"));
        let others = |t: &str| {
            t.lines()
                .filter(|l| !l.trim_start().starts_with("for: "))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(others(&shipped), others(&short));
    }
}
