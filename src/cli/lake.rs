//! Commands that read or tend the lake: `tables`, `query`, `verify`, `maintain`, `reconcile`.

use std::process::ExitCode;

use super::args::{LakeArgs, StoreArgs};

/// Commands that read a lake refuse a path that holds none, rather than create an empty one and report nothing
/// (a mistyped `--lake` would otherwise look like an empty lake).
pub fn existing_lake(lake: &std::path::Path, catalog: Option<&str>) -> anyhow::Result<()> {
    poslake::config::check_lake(lake)?;
    // With a catalog of its own, the lake's warehouse folder is what an ingest leaves.
    let mark = if catalog.is_some() { "warehouse" } else { "catalog.db" };
    // `exists` would read a lake this user may not enter as no lake at all: only "not found" means none.
    match std::fs::metadata(lake.join(mark)) {
        Ok(_) => Ok(()),
        // A lake whose catalog is a PostgreSQL database has a warehouse and no catalog.db.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && catalog.is_none() && lake.join("warehouse").is_dir() => {
            anyhow::bail!(
                "the lake at {} has a warehouse but no catalog.db: its catalog is elsewhere (a PostgreSQL database: \
                 give it with --catalog or POSLAKE_CATALOG), or catalog.db was lost (restore it)",
                lake.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no lake at {}: nothing has been ingested there (run `poslake ingest`, or give the lake with --lake or \
             POSLAKE_LAKE)",
            lake.display()
        ),
        Err(e) => anyhow::bail!("the lake at {} cannot be read: {e}", lake.display()),
    }
}

pub async fn tables(args: LakeArgs) -> anyhow::Result<ExitCode> {
    existing_lake(&args.lake, args.catalog())?;
    // Looking at a lake changes nothing in it: a table not made yet is shown absent, not created.
    let wh = poslake::lake::Warehouse::open_to_read(&args.lake, args.catalog()).await?;
    say!("{:<20} {:>20} {:>10} {:>10} {:>12}", "table", "snapshot", "snapshots", "manifests", "rows");
    for def in poslake::lake::tables::TABLES {
        if !wh.has_table(def.name).await? {
            say!("{:<20} {:>20}", def.name, "(absent: the next ingest creates it)");
            continue;
        }
        let table = wh.load(def.name).await?;
        let meta = table.metadata();
        let snapshot = meta.current_snapshot().map_or("-".to_owned(), |s| s.snapshot_id().to_string());
        let manifests = match meta.current_snapshot() {
            Some(s) => table.manifest_list_reader(s).load().await?.entries().len(),
            None => 0,
        };
        let rows = wh.row_count(def.name).await?;
        say!("{:<20} {:>20} {:>10} {:>10} {:>12}", def.name, snapshot, meta.snapshots().count(), manifests, rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// `maintain --remove-orphans-older-than-hours`: the grace period, and whether the user confirmed that no ingest runs.
pub struct Sweep {
    pub hours: u64,
    pub no_ingest_running: bool,
}

pub async fn maintain(
    store: StoreArgs,
    keep: Option<usize>,
    sweep: Option<Sweep>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(s) = &sweep {
        // A running ingest's data files are unreferenced until its commit: without grace, a sweep deletes them and
        // the commit then names files that are gone (the lake no longer reads). Checked before anything is done.
        anyhow::ensure!(
            s.hours >= 1 || s.no_ingest_running,
            "--remove-orphans-older-than-hours {} would delete the files an ingest running now has written and not yet \
             committed, which breaks the lake: give a grace of at least 1 hour (72 is usual), or add \
             --no-ingest-running once none runs",
            s.hours
        );
    }
    let c = store.config()?;
    // 0 keeps every snapshot, as `keep_snapshots = 0` does for an ingest; manifests are still merged.
    let keep = keep.unwrap_or(c.keep_snapshots);
    existing_lake(&c.lake, c.catalog.as_deref())?;
    let started = std::time::Instant::now();
    let report =
        poslake::ingest::maintain(&c.lake, c.catalog.as_deref(), &c.dedup, keep, c.min_manifests_to_merge).await?;
    let orphans = match sweep.map(|s| s.hours) {
        Some(hours) => {
            let older_than = std::time::SystemTime::now()
                .checked_sub(std::time::Duration::from_secs(hours.saturating_mul(3600)))
                .unwrap_or(std::time::UNIX_EPOCH);
            poslake::ingest::remove_orphans(&c.lake, c.catalog.as_deref(), &c.dedup, older_than).await?
        }
        None => Vec::new(),
    };
    if json {
        let out = serde_json::json!({ "maintenance": report, "orphans": orphans });
        say!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (table, o) in &orphans {
        say!(
            "{table:<20} {:>8} orphan files removed ({:.1} MB), {} younger ones kept",
            o.removed,
            o.removed_bytes as f64 / 1e6,
            o.kept
        );
    }
    for (table, m) in &report.merged {
        match m.delete_files {
            0 => say!("{table:<20} {:>8} manifests merged ({} data files)", m.manifests, m.data_files),
            d => {
                say!("{table:<20} {:>8} manifests merged ({} data files, {d} delete files)", m.manifests, m.data_files)
            }
        }
    }
    for (table, e) in &report.expired {
        say!("{table:<20} {:>8} snapshots expired, {:>8} files deleted", e.snapshots, e.files_deleted);
    }
    if keep == 0 {
        say!("no snapshots expired (keep 0: every snapshot is kept) in {:.1}s", started.elapsed().as_secs_f64());
    } else {
        say!(
            "expired {} snapshots in {:.1}s, keeping the newest {keep} per table and every commit not yet complete",
            report.snapshots(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn query(sql: String, args: LakeArgs) -> anyhow::Result<ExitCode> {
    existing_lake(&args.lake, args.catalog())?;
    let wh = poslake::lake::Warehouse::open_to_read(&args.lake, args.catalog()).await?;
    let (schema, batches) = poslake::lake::query::sql_with_schema(&wh, &sql).await?;
    // With the schema, an empty result still shows its column names.
    say!("{}", datafusion::arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)?);
    Ok(ExitCode::SUCCESS)
}

/// Business dates a command is limited to, both ends included.
pub struct DateRange {
    pub from: Option<chrono::NaiveDate>,
    pub to: Option<chrono::NaiveDate>,
}

pub async fn verify(args: LakeArgs, range: DateRange, examples: usize, json: bool) -> anyhow::Result<ExitCode> {
    use poslake::lake::verify::Severity;
    if let (Some(from), Some(to)) = (range.from, range.to)
        && from > to
    {
        // A usage error, as clap's own (exit 2); with --json, said on stdout too, as other failures are.
        let message = format!("--from {from} is after --to {to}: no business date is in that range");
        if json {
            say!("{}", serde_json::json!({ "error": message }));
        }
        eprintln!("error: {message}");
        return Ok(ExitCode::from(2));
    }
    existing_lake(&args.lake, args.catalog())?;
    let wh = poslake::lake::Warehouse::open_to_read(&args.lake, args.catalog()).await?;
    let report = poslake::lake::verify::verify(&wh, range.from, range.to, examples).await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for check in &report.checks {
            let mark = match (&check.skipped, check.found, check.severity) {
                (Some(_), _, _) => "skip",
                (None, 0, _) => "ok",
                (None, _, Severity::Violation) => "FAIL",
                (None, _, Severity::Pending) => "todo",
            };
            match &check.skipped {
                Some(why) => say!("{mark:<4}  {}: {why}", check.rule),
                None if check.found == 0 => say!("{mark:<4}  {}", check.rule),
                None if check.severity == Severity::Pending => {
                    say!("{mark:<4}  {}: {} to settle ({})", check.rule, check.found, check.name)
                }
                None => say!("{mark:<4}  {}: {} break it ({})", check.rule, check.found, check.name),
            }
            for example in &check.examples {
                say!("        {example}");
            }
        }
        let pending = report.checks.iter().any(|c| c.severity == Severity::Pending && c.found > 0);
        let unsettled = report.unsettled();
        let verdict = match (report.exact(), unsettled.is_empty()) {
            (false, _) => "the lake is NOT exact".to_owned(),
            (true, true) => "the lake is exact".to_owned(),
            (true, false) => format!(
                "the lake is exact in what was checked; {} checks were left out while commits landed: run verify again",
                unsettled.len()
            ),
        };
        say!("{verdict}{}", if pending { "; run `poslake reconcile` to settle the quarantine" } else { "" });
    }
    // Not 1: a script must tell a lake that is not exact (3), or not wholly checked (4), from a command that failed
    // (1) or was misused (2).
    Ok(match (report.exact(), report.unsettled().is_empty()) {
        (false, _) => ExitCode::from(3),
        (true, false) => ExitCode::from(4),
        (true, true) => ExitCode::SUCCESS,
    })
}

pub async fn reconcile(store: StoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    let c = store.config()?;
    existing_lake(&c.lake, c.catalog.as_deref())?;
    let report = poslake::ingest::reconcile::reconcile(&c.lake, c.catalog.as_deref(), &c.dedup).await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        say!(
            "quarantine: {} rows; {} keys confirmed as duplicates; {} false positives promoted{}{}",
            report.quarantined,
            report.confirmed_duplicates,
            report.promoted,
            report.commit.as_deref().map(|c| format!(" (commit {c})")).unwrap_or_default(),
            match report.left {
                0 => String::new(),
                n => format!("; {n} keys quarantined meanwhile, left for the next reconcile"),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
