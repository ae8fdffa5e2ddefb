//! How results are shown: an aligned table for people (the default), or JSON (`-o json`) for
//! programs, written whole to stdout; progress goes to stderr.

use std::io::Write;

use serde::Serialize;

use crate::error::Result;
use crate::migration::{Plan, State};
use crate::orphans::{self, Report as OrphanReport};
use crate::status::Report;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// Writes `value` as pretty JSON.
pub fn json(out: &mut dyn Write, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Writes rows under headers, each column as wide as its widest cell.
pub fn table(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.trim_end().to_owned()
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// The migration plan as a table.
pub fn plan_table(out: &mut dyn Write, plan: &Plan) -> Result<()> {
    if plan.volumes.is_empty() {
        writeln!(
            out,
            "no FlexVolume PersistentVolumes of CCE's drivers found"
        )?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = plan
        .volumes
        .iter()
        .map(|e| {
            let state = match &e.state {
                State::Ready => {
                    let steps: Vec<&str> = e.steps.iter().map(|s| s.name()).collect();
                    format!("ready: {}", steps.join(", "))
                }
                State::InUse { pods } => format!(
                    "in use by {} (--force-in-use to migrate anyway)",
                    pods.join(", ")
                ),
                State::Skipped { reason } => format!("skipped: {reason}"),
                State::Done => "done".to_owned(),
            };
            vec![
                or_dash(e.claim.as_deref()),
                e.persistent_volume.clone(),
                or_dash(e.driver.map(|d| d.name())),
                or_dash(e.capacity.as_deref()),
                or_dash(e.volume_handle.as_deref()),
                state,
            ]
        })
        .collect();
    table(
        out,
        &["CLAIM", "VOLUME", "FROM", "SIZE", "TO", "STATE"],
        &rows,
    )
}

/// The status report as tables.
pub fn status_table(out: &mut dyn Write, report: &Report) -> Result<()> {
    let backends: Vec<Vec<String>> = report
        .backends
        .iter()
        .map(|b| {
            vec![
                b.backend.clone(),
                or_dash(b.kind.as_deref()),
                b.persistent_volumes.to_string(),
                b.cloud_volumes
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ]
        })
        .collect();
    table(out, &["BACKEND", "KIND", "PVS", "CLOUD VOLUMES"], &backends)?;
    writeln!(out)?;
    let rows: Vec<Vec<String>> = report
        .attachments
        .iter()
        .map(|r| {
            vec![
                r.backend.clone(),
                or_dash(r.node.as_deref()),
                r.volume_handle.clone(),
                or_dash(r.persistent_volume.as_deref()),
                r.cluster.clone(),
                r.cloud.clone(),
                r.problem
                    .as_ref()
                    .map_or_else(|| "ok".to_owned(), |p| format!("MISMATCH: {p}")),
            ]
        })
        .collect();
    table(
        out,
        &[
            "BACKEND", "NODE", "VOLUME", "PV", "CLUSTER", "CLOUD", "CHECK",
        ],
        &rows,
    )?;
    writeln!(out)?;
    writeln!(out, "{} disagreement(s)", report.disagreements)?;
    Ok(())
}

/// The orphan report as tables: what each instance held, then the stranded volumes (with what
/// `--delete` did, once it ran), then the counts that were not listed and why.
pub fn orphans_table(out: &mut dyn Write, report: &OrphanReport) -> Result<()> {
    let backends: Vec<Vec<String>> = report
        .backends
        .iter()
        .map(|b| {
            let n = |v: usize| {
                if b.checked {
                    v.to_string()
                } else {
                    "-".to_owned()
                }
            };
            vec![
                b.backend.clone(),
                b.kind.clone(),
                if b.checked { "yes" } else { "no" }.to_owned(),
                n(b.volumes),
                n(b.ours),
                n(b.in_use),
                n(b.other_clusters),
                n(b.too_young + b.age_unknown),
                n(b.orphans),
            ]
        })
        .collect();
    table(
        out,
        &[
            "BACKEND",
            "KIND",
            "CHECKED",
            "VOLUMES",
            "OURS",
            "IN USE",
            "OTHER CLUSTERS",
            "HELD BACK",
            "ORPHANS",
        ],
        &backends,
    )?;
    for b in report.unchecked() {
        writeln!(
            out,
            "{} ({}): {}",
            b.backend,
            b.kind,
            or_dash(b.note.as_deref())
        )?;
    }
    writeln!(out)?;
    let min_age = report.min_age;
    if report.orphans.is_empty() {
        writeln!(
            out,
            "no orphans of cluster {} older than {min_age}",
            report.cluster_id
        )?;
    } else {
        let with_outcome = report.orphans.iter().any(|o| o.outcome.is_some());
        let rows: Vec<Vec<String>> = report
            .orphans
            .iter()
            .map(|o| {
                let claim = match (&o.pvc_namespace, &o.pvc_name) {
                    (Some(ns), Some(name)) => format!("{ns}/{name}"),
                    (None, Some(name)) => name.clone(),
                    _ => "-".to_owned(),
                };
                let attached = if o.attached_to.is_empty() {
                    "-".to_owned()
                } else {
                    o.attached_to.join(",")
                };
                let mut row = vec![
                    o.backend.clone(),
                    o.kind.clone(),
                    o.volume_handle.to_string(),
                    o.size_bytes
                        .map_or_else(|| "-".to_owned(), orphans::format_size),
                    o.age.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    or_dash(o.created_at.as_deref()),
                    or_dash(o.pv_name.as_deref()),
                    claim,
                    attached,
                    o.on_delete
                        .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                ];
                if with_outcome {
                    row.push(
                        o.outcome
                            .as_ref()
                            .map_or_else(|| "-".to_owned(), ToString::to_string),
                    );
                }
                row
            })
            .collect();
        let mut headers = vec![
            "BACKEND",
            "KIND",
            "VOLUME",
            "SIZE",
            "AGE",
            "CREATED",
            "PV",
            "CLAIM",
            "ATTACHED",
            "ON DELETE",
        ];
        if with_outcome {
            headers.push("RESULT");
        }
        table(out, &headers, &rows)?;
        writeln!(out)?;
        writeln!(
            out,
            "{} orphan(s) of cluster {} older than {min_age}",
            report.orphans.len(),
            report.cluster_id
        )?;
    }
    if report.other_clusters > 0 {
        writeln!(
            out,
            "{} volume(s) skipped as other clusters'",
            report.other_clusters
        )?;
    }
    if report.held_back > 0 {
        writeln!(
            out,
            "{} volume(s) without a PV not listed: younger than {min_age} (or of unknown age), \
             possibly still being provisioned",
            report.held_back
        )?;
    }
    Ok(())
}
