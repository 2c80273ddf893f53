//! The report as text: `keybridge audit --format table` and `--format csv`.

use std::fmt::Write as _;

use super::model::*;

/// `keybridge audit --format table`.
pub fn render_table(r: &AuditReport) -> String {
    let header = [
        "INTEGRATION",
        "INSTANCE",
        "MODE",
        "STATE",
        "API_KEY",
        "OAUTH",
        "FALLBACK",
        "DENIED",
        "THROTTLED",
        "LAST SEEN",
        "NEEDED SCOPES",
        "CONFIGURED",
        "MISSING",
        "UNUSED",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for i in &r.integrations {
        rows.push(vec![
            i.name.clone(),
            or_dash(i.instance.clone().unwrap_or_default()),
            i.mode.map(|m| m.as_str()).unwrap_or("-").to_owned(),
            i.state.clone(),
            i.requests["api_key"].to_string(),
            i.requests["oauth"].to_string(),
            i.requests["fallback"].to_string(),
            i.requests["denied"].to_string(),
            i.requests["throttled"].to_string(),
            i.last_seen.clone().unwrap_or_else(|| "never".into()),
            or_dash(i.scopes.needed.join(" ")),
            if i.scopes.requests_all_scopes {
                "(all granted)".to_owned()
            } else {
                or_dash(i.scopes.configured.join(" "))
            },
            or_dash(i.scopes.missing.join(" ")),
            or_dash(i.scopes.unused.join(" ")),
        ]);
    }
    let mut out = table(&rows);
    let _ = writeln!(
        out,
        "\nIntegrations sending keys: {} of {}",
        r.integrations_sending_keys,
        plural(r.integrations.len(), "integration")
    );
    let _ = writeln!(
        out,
        "Key share of forwarded traffic: {}",
        r.key_share_percent
            .map(|p| format!("{p}%"))
            .unwrap_or_else(|| "no traffic".into())
    );
    if !r.unknown_keys.is_empty() {
        let mut rows = vec![vec![
            "UNKNOWN KEY".to_owned(),
            "REQUESTS".into(),
            "LAST SEEN".into(),
            "IPS".into(),
        ]];
        for u in &r.unknown_keys {
            rows.push(vec![
                u.name.clone(),
                u.total.to_string(),
                u.last_seen.clone().unwrap_or_default(),
                u.ip_addresses.join(" "),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `keybridge audit --format csv`.
pub fn render_csv(r: &AuditReport) -> String {
    let mut out = String::from(
        "integration,mode,state,api_key,oauth,fallback,denied,native,rejected,throttled,last_seen,needed_scopes,configured_scopes,missing_scopes,unused_scopes\n",
    );
    for i in &r.integrations {
        let fields = [
            i.name.clone(),
            i.mode.map(|m| m.as_str()).unwrap_or("").to_owned(),
            i.state.clone(),
            i.requests["api_key"].to_string(),
            i.requests["oauth"].to_string(),
            i.requests["fallback"].to_string(),
            i.requests["denied"].to_string(),
            i.requests["native"].to_string(),
            i.requests["rejected"].to_string(),
            i.requests["throttled"].to_string(),
            i.last_seen.clone().unwrap_or_default(),
            i.scopes.needed.join(" "),
            if i.scopes.requests_all_scopes {
                "*".to_owned()
            } else {
                i.scopes.configured.join(" ")
            },
            i.scopes.missing.join(" "),
            i.scopes.unused.join(" "),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn csv_field(f: &str) -> String {
    // Quote always-safe; also defuse spreadsheet formulas.
    let f = if f.starts_with(['=', '+', '-', '@']) {
        format!("'{f}")
    } else {
        f.to_owned()
    };
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f
    }
}

/// `1 integration`, `3 integrations`.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(
            csv_field("canary (30% OAuth, 1 fallback)"),
            "\"canary (30% OAuth, 1 fallback)\""
        );
    }
}
