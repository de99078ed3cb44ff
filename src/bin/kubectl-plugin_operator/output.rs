//! How the commands print: aligned tables, JSON or YAML, ages, and colour on a terminal.
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::{Failure, Output};

/// The rows as JSON or YAML when asked for, else `None` (a table is printed).
pub fn as_data<T: Serialize>(rows: &T, output: Option<Output>) -> Result<Option<String>, Failure> {
    match output {
        Some(Output::Json) => serde_json::to_string_pretty(rows)
            .map(|s| Some(s + "\n"))
            .map_err(|e| Failure::Other(e.to_string())),
        Some(Output::Yaml) => serde_yaml::to_string(rows)
            .map(Some)
            .map_err(|e| Failure::Other(e.to_string())),
        Some(Output::Wide) | None => Ok(None),
    }
}

pub fn dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".to_owned())
}

/// Column widths as kubectl computes them: each as wide as its widest cell.
pub fn widths(header: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    widths
}

/// One line of a table with these widths: three spaces apart, no trailing spaces.
pub fn line(row: &[String], widths: &[usize]) -> String {
    let line = row
        .iter()
        .zip(widths)
        .map(|(cell, width)| {
            let pad = width.saturating_sub(cell.chars().count());
            format!("{cell}{}", " ".repeat(pad))
        })
        .collect::<Vec<_>>()
        .join("   ");
    format!("{}\n", line.trim_end())
}

/// Columns aligned as kubectl aligns them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths = widths(header, rows);
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    std::iter::once(&header)
        .chain(rows)
        .map(|row| line(row, &widths))
        .collect()
}

/// An age as kubectl prints it: `45s`, `3m12s`, `4h5m`, `2d3h`; `0s` for a time in the future
/// (clocks of two machines).
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let seconds = now.duration_since(since).as_secs().max(0);
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if m < 10 && s > 0 => format!("{m}m{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, _) if m > 0 => format!("{h}h{m}m"),
        (0, _, _) => format!("{h}h"),
        (_, _, _) if h > 0 && d < 8 => format!("{d}d{h}h"),
        _ => format!("{d}d"),
    }
}

/// A duration from the command line: `90s`, `5m`, `1h30m` (jiff's friendly format).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration: SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 90s, 5m or 1h30m: {e}"))?;
    std::time::Duration::try_from(duration).map_err(|_| format!("{text:?} is negative"))
}

/// Phases coloured on a terminal: Active green, Error red, the ones in between yellow. Applied
/// after alignment so the escape codes do not count as width.
pub fn colour_phases(text: &str) -> String {
    const PHASES: &[(&str, &str)] = &[
        (" Active ", "32"),
        (" Error ", "31"),
        (" Restarting ", "33"),
        (" Starting ", "33"),
        (" Connecting ", "33"),
    ];
    text.lines()
        .map(|line| {
            let mut line = line.to_owned();
            for (phase, code) in PHASES {
                if let Some(at) = line.find(phase) {
                    let word = phase.trim();
                    let start = at + 1;
                    line.replace_range(
                        start..start + word.len(),
                        &format!("\x1b[{code}m{word}\x1b[0m"),
                    );
                    break;
                }
            }
            line + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let rows = vec![
            vec!["a".to_owned(), "-".to_owned()],
            vec!["longer".to_owned(), "x".to_owned()],
        ];
        assert_eq!(
            table(&["NAME", "V"], &rows),
            "NAME     V\na        -\nlonger   x\n"
        );
    }

    #[test]
    fn tree_prefixes_count_as_one_column_each() {
        let rows = vec![vec!["└── a".to_owned(), "x".to_owned()]];
        assert_eq!(table(&["OBJECT", "V"], &rows), "OBJECT   V\n└── a    x\n");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let t = |s: i64| Timestamp::from_second(1_000_000 + s).expect("time");
        let start = t(0);
        assert_eq!(age(start, t(45)), "45s");
        assert_eq!(age(start, t(192)), "3m12s");
        assert_eq!(age(start, t(720)), "12m");
        assert_eq!(age(start, t(3 * 3600 + 300)), "3h5m");
        assert_eq!(age(start, t(2 * 86_400 + 3 * 3600)), "2d3h");
        assert_eq!(age(start, t(-5)), "0s");
    }

    #[test]
    fn durations_in_the_friendly_format() {
        assert_eq!(
            parse_duration("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("5m"),
            Ok(std::time::Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("1h30m"),
            Ok(std::time::Duration::from_secs(5400))
        );
        assert!(parse_duration("soon").is_err());
    }
}
