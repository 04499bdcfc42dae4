//! The figures of one scenario run, printed as a table for people and as
//! one JSON line (keys in a fixed order) for comparing runs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use sandbox::clock::civil_from_days;

use crate::procfs;
use crate::stats::round3;

/// Figures in the order they were added.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    scenario: String,
    fields: Vec<(String, Value)>,
    notes: Vec<String>,
    /// When the figures were taken.
    timestamp: String,
}

impl Report {
    /// An empty report for `scenario`, stamped with the time now.
    pub(crate) fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            fields: Vec::new(),
            notes: Vec::new(),
            timestamp: utc_timestamp(SystemTime::now()),
        }
    }

    /// Adds (or replaces) a figure.
    pub(crate) fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(field) => field.1 = value,
            None => self.fields.push((key.to_owned(), value)),
        }
        self
    }

    /// Adds a figure rounded to three decimals (`null` when absent or not
    /// finite).
    pub(crate) fn set_f(&mut self, key: &str, value: Option<f64>) -> &mut Self {
        let value = value
            .filter(|v| v.is_finite())
            .map_or(Value::Null, |v| json!(round3(v)));
        self.set(key, value)
    }

    /// Adds a duration in milliseconds, rounded to three decimals.
    pub(crate) fn set_ms(&mut self, key: &str, value: Duration) -> &mut Self {
        self.set_f(key, Some(value.as_secs_f64() * 1000.0))
    }

    /// A line printed under the table (errors seen, caveats).
    pub(crate) fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// The JSON line: `scenario` first, the figures, then `machine` and
    /// `timestamp`.
    pub(crate) fn json_line(&self) -> String {
        let mut out = String::from("{");
        let machine = procfs::machine();
        let mut push = |key: &str, value: &Value| {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&Value::from(key).to_string());
            out.push(':');
            out.push_str(&value.to_string());
        };
        push("scenario", &Value::from(self.scenario.as_str()));
        for (key, value) in &self.fields {
            push(key, value);
        }
        let mut machine_json = Map::new();
        machine_json.insert("nproc".to_owned(), json!(machine.nproc));
        machine_json.insert("cpu_model".to_owned(), json!(machine.cpu_model));
        machine_json.insert("memory_mb".to_owned(), json!(machine.memory_mib));
        push("machine", &Value::Object(machine_json));
        push("timestamp", &Value::from(self.timestamp.as_str()));
        out.push('}');
        out
    }

    /// The table, the notes, then the JSON line.
    pub(crate) fn print(&self) {
        println!("{}", self.table());
        println!("{}", self.json_line());
    }

    /// The human table.
    pub(crate) fn table(&self) -> String {
        let width = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("\n== {} ==\n", self.scenario);
        for (key, value) in &self.fields {
            let shown = match value {
                Value::String(text) => text.clone(),
                Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            out.push_str(&format!("  {key:<width$}  {shown}\n"));
        }
        for note in &self.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        out
    }
}

/// `2026-11-25T01:40:00Z` for a time after 1970.
pub(crate) fn utc_timestamp(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661);
        assert_eq!(utc_timestamp(leap_day), "2000-02-29T01:01:01Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_795_568_400);
        assert_eq!(utc_timestamp(later), "2026-11-25T01:00:00Z");
    }

    #[test]
    fn the_json_line_keeps_the_order_and_starts_with_the_scenario() {
        let mut report = Report::new("issue");
        report.set("flows", 10).set_f("flows_per_s", Some(1.234_56));
        report.set_f("missing", None).set("flows", 12);
        let line = report.json_line();
        assert!(
            line.starts_with(
                r#"{"scenario":"issue","flows":12,"flows_per_s":1.235,"missing":null,"machine":{"#
            ),
            "{line}"
        );
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert!(parsed["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(report.table().contains("flows_per_s"));
    }
}
