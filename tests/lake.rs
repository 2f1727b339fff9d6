//! The lake against a real Iceberg warehouse (SQLite catalog, local files): parsed files land in the silver and
//! bronze tables with exact row counts, snapshot properties and readable values; a table whose schema differs
//! from poslake's definition is read but never written.
#![cfg(feature = "lake")]

mod common;

use std::collections::{BTreeSet, HashMap};

use arrow_array::{Array, StringArray};
use common::dialect_fixtures;
use poslake::lake::{DeadLetter, LakeError, LedgerEntry, Outcome, Warehouse};

fn strings(batches: &[arrow_array::RecordBatch], column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let col = b.column_by_name(column).expect("column");
        let col = col.as_any().downcast_ref::<StringArray>().expect("string column");
        out.extend((0..col.len()).map(|i| if col.is_null(i) { String::new() } else { col.value(i).to_owned() }));
    }
    out
}

#[tokio::test]
async fn parsed_files_land_with_exact_counts_and_snapshot_properties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = std::sync::Arc::new(Warehouse::open(dir.path()).await.expect("open"));
    let files = dialect_fixtures();
    let mut rows = wh.rows();
    for f in &files {
        rows.add_file(f).expect("rows");
    }
    let now = chrono::NaiveDate::from_ymd_opt(2026, 11, 26).and_then(|d| d.and_hms_opt(5, 0, 0)).expect("now");
    for f in &files {
        rows.add_ledger(&ledger_row(f, now)).expect("ledger row");
    }
    rows.add_dead_letter(&DeadLetter {
        run_id: "run-1".into(),
        path: "bad.xml".into(),
        content_hash: "00".into(),
        stage: "parse",
        kind: "truncated",
        reason: "bad.xml: XML ends early".into(),
        line: Some(3),
        column: Some(7),
        attempts: 1,
        at: now,
    })
    .expect("dead letter row");
    let props = HashMap::from([("poslake.batch-id".to_owned(), "run-1/0".to_owned())]);
    let commits = wh.append(rows, &props).await.expect("append");
    // Every table but the quarantine: the fixtures hold rollback mirrors and post-voids, so `sales_voids` too.
    assert_eq!(commits.len(), 7, "{commits:?}");
    assert_eq!(commits.last().map(|c| c.table), Some("file_ledger"), "the ledger commits last");
    assert_eq!(wh.row_count("file_ledger").await.expect("count"), files.len() as u64);
    assert_eq!(strings(&wh.scan("dead_letters").await.expect("scan"), "kind"), vec!["truncated".to_owned()]);

    let txs: u64 = files.iter().map(|f| f.transactions.len() as u64).sum();
    let lines: u64 = files.iter().map(|f| u64::from(f.facts.line_count)).sum();
    let discounts: u64 = files.iter().map(|f| u64::from(f.facts.discount_count)).sum();
    assert_eq!(wh.row_count("sales_header").await.expect("count"), txs);
    assert_eq!(wh.row_count("sales_line").await.expect("count"), lines);
    assert_eq!(wh.row_count("sales_discount").await.expect("count"), discounts);
    assert_eq!(wh.row_count("bronze_transaction").await.expect("count"), txs);
    let voids = files.iter().flat_map(|f| &f.transactions).filter(|t| t.header.voids.is_some()).count() as u64;
    assert!(voids > 0, "the fixtures hold voiding records");
    assert_eq!(wh.row_count("sales_voids").await.expect("count"), voids);

    let table = wh.load("sales_header").await.expect("load");
    let snapshot = table.metadata().current_snapshot().expect("snapshot");
    assert_eq!(snapshot.summary().additional_properties.get("poslake.batch-id").map(String::as_str), Some("run-1/0"));

    // The keys read back are the keys parsed.
    let batches = wh.scan("sales_header").await.expect("scan");
    let got: BTreeSet<(String, String)> =
        strings(&batches, "site").into_iter().zip(strings(&batches, "sequence")).collect();
    let want: BTreeSet<(String, String)> = files
        .iter()
        .flat_map(|f| f.transactions.iter().map(|t| (t.header.key.site.clone(), t.header.key.sequence.clone())))
        .collect();
    assert_eq!(got, want);

    // Reopening finds the same tables; a second append adds to them.
    drop(wh);
    let wh = std::sync::Arc::new(Warehouse::open(dir.path()).await.expect("reopen"));
    let mut rows = wh.rows();
    rows.add_file(&files[0]).expect("rows");
    wh.append(rows, &HashMap::new()).await.expect("append again");
    assert_eq!(wh.row_count("sales_header").await.expect("count"), txs + files[0].transactions.len() as u64);
}

/// iceberg-catalog-sql 0.10 drops the result of a table commit's `COMMIT`, so a commit the catalog database refused
/// came back as made (an audit saw a run report 3,006 new transactions that no table held). The commit is read back.
#[tokio::test]
async fn a_commit_the_catalog_database_refuses_is_an_error_not_a_success() {
    use sqlx::Executor;
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = std::sync::Arc::new(Warehouse::open(dir.path()).await.expect("open"));
    let files = dialect_fixtures();
    let txs: u64 = files.iter().map(|f| f.transactions.len() as u64).sum();
    let mut rows = wh.rows();
    for f in &files {
        rows.add_file(f).expect("rows");
    }
    wh.append(rows, &HashMap::new()).await.expect("first append");

    let mut reader = common::hold_catalog_read_lock(dir.path()).await;
    let mut rows = wh.rows();
    for f in &files {
        rows.add_file(f).expect("rows");
    }
    let err = wh.append(rows, &HashMap::new()).await.expect_err("a refused commit is an error");
    assert!(matches!(err, LakeError::Unrecorded { .. }), "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("did not record"), "{err}");
    reader.execute("COMMIT").await.expect("end the read");

    assert_eq!(wh.row_count("sales_header").await.expect("count"), txs, "nothing of the refused commit is visible");
    let mut rows = wh.rows();
    for f in &files {
        rows.add_file(f).expect("rows");
    }
    wh.append(rows, &HashMap::new()).await.expect("append once the lock is gone");
    assert_eq!(wh.row_count("sales_header").await.expect("count"), 2 * txs);
}

/// An expiry the catalog database refused deleted the manifest lists of snapshots the catalog still named, so a
/// later read of the table's history failed on a missing file.
#[tokio::test]
async fn an_expiry_the_catalog_database_refuses_deletes_nothing() {
    use sqlx::Executor;
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = std::sync::Arc::new(Warehouse::open(dir.path()).await.expect("open"));
    let files = dialect_fixtures();
    for _ in 0..3 {
        let mut rows = wh.rows();
        rows.add_file(&files[0]).expect("rows");
        wh.append(rows, &HashMap::new()).await.expect("append");
    }
    let table = wh.load("sales_header").await.expect("load");
    let current = table.metadata().current_snapshot_id();
    let old: Vec<i64> =
        table.metadata().snapshots().map(|s| s.snapshot_id()).filter(|id| Some(*id) != current).collect();
    assert_eq!(old.len(), 2);

    let mut reader = common::hold_catalog_read_lock(dir.path()).await;
    let err = wh.expire_snapshots("sales_header", &old).await.expect_err("a refused expiry is an error");
    assert!(matches!(err, LakeError::Unrecorded { .. }), "{err}");
    reader.execute("COMMIT").await.expect("end the read");

    let table = wh.load("sales_header").await.expect("load");
    assert_eq!(table.metadata().snapshots().count(), 3, "the catalog still names every snapshot");
    for s in table.metadata().snapshots() {
        let list = s.manifest_list().strip_prefix("file://").unwrap_or(s.manifest_list());
        assert!(std::path::Path::new(list).exists(), "snapshot {} lost its manifest list", s.snapshot_id());
    }
    let expired = wh.expire_snapshots("sales_header", &old).await.expect("expire once the lock is gone");
    assert_eq!(expired.snapshots, 2);
}

#[tokio::test]
async fn a_table_with_another_schema_is_read_but_not_written() {
    use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
    use iceberg::{Catalog, NamespaceIdent, TableCreation, TableIdent};

    let dir = tempfile::tempdir().expect("tempdir");
    drop(Warehouse::open(dir.path()).await.expect("open"));
    let catalog = sqlite_catalog(dir.path()).await;
    let ns = NamespaceIdent::new("poslake".into());
    catalog.drop_table(&TableIdent::new(ns.clone(), "sales_line".into())).await.expect("drop");
    let schema = Schema::builder()
        .with_fields(vec![NestedField::required(1, "site", Type::Primitive(PrimitiveType::Long)).into()])
        .build()
        .expect("schema");
    catalog
        .create_table(&ns, TableCreation::builder().name("sales_line".into()).schema(schema).build())
        .await
        .expect("create");

    // Read as it is (a table another engine changed stays readable; until session 27 even `poslake tables` and
    // `poslake query` were refused), never written.
    let wh = Warehouse::open(dir.path()).await.expect("a changed table is opened for reading");
    match wh.check_writable() {
        Err(LakeError::Schema { table, reason }) => {
            assert_eq!(table, "sales_line");
            assert!(reason.contains("does not write"), "{reason}");
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
    assert_eq!(common::scalar(&wh, "SELECT count(*) FROM sales_line").await, 0);
    let wh = std::sync::Arc::new(wh);
    // Refused when the rows are built to the table's columns (here `site` changed type), or else when written.
    let mut rows = wh.rows();
    let refused = match rows.add_file(&common::dialect_fixtures()[0]) {
        Err(e) => Err(e),
        Ok(()) => poslake::lake::LakeWriter::new(wh.clone()).write(rows).await.map(|_| ()),
    };
    match refused {
        Err(LakeError::Schema { table, .. }) => assert_eq!(table, "sales_line"),
        other => panic!("a mismatched table was written: {other:?}"),
    }
    // An ingest is refused at its start, with the reason.
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let paths = poslake::ingest::IngestPaths { staging, lake: dir.path().to_path_buf(), archive: None, catalog: None };
    let setup = poslake::ingest::IngestSetup::new(paths);
    let opened = poslake::ingest::PosStages::open(&setup, "run".into()).await;
    let error = opened.err().expect("an ingest into a changed table is refused").to_string();
    assert!(error.contains("sales_line") && error.contains("does not write"), "{error}");
}

/// A lake an earlier poslake wrote, before a column was added at the end of a table's definition, is written to
/// again: the column is added to the table at open, and rows written after carry it. A table lacking a column
/// elsewhere is still refused.
#[tokio::test]
async fn a_column_appended_to_a_definition_is_added_to_an_earlier_lakes_table() {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    use iceberg::{Catalog, NamespaceIdent, TableIdent};

    // Files without a fuel unit price go in before the column is taken away, those with one after it is back: the
    // count of the column's values is then exactly what the second write carried.
    let (before, after): (Vec<_>, Vec<_>) = dialect_fixtures()
        .into_iter()
        .partition(|f| f.transactions.iter().flat_map(|t| &t.lines).all(|l| l.fuel_unit_price.is_none()));
    let priced: usize = after
        .iter()
        .flat_map(|f| &f.transactions)
        .flat_map(|t| &t.lines)
        .filter(|l| l.fuel_unit_price.is_some())
        .count();
    assert!(!before.is_empty() && priced > 0, "the fixtures hold files with and without fuel unit prices");
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = std::sync::Arc::new(Warehouse::open(dir.path()).await.expect("open"));
    let mut rows = wh.rows();
    for f in &before {
        rows.add_file(f).expect("rows");
    }
    wh.append(rows, &HashMap::new()).await.expect("append");
    let lines_before = wh.row_count("sales_line").await.expect("count");
    drop(wh);

    // The table as an earlier definition without its last column made it.
    let catalog = sqlite_catalog(dir.path()).await;
    let ident = TableIdent::new(NamespaceIdent::new("poslake".into()), "sales_line".into());
    let table = catalog.load_table(&ident).await.expect("load");
    let old_id = table.metadata().current_schema().field_by_name("fuel_unit_price").expect("column").id;
    let tx = Transaction::new(&table);
    let tx = tx.update_schema().delete_column("fuel_unit_price").apply(tx).expect("delete column");
    tx.commit(&catalog).await.expect("commit");

    let wh = std::sync::Arc::new(Warehouse::open(dir.path()).await.expect("open the earlier lake"));
    wh.check_writable().expect("the earlier lake is writable");
    let schema = wh.load("sales_line").await.expect("load").metadata().current_schema().clone();
    let added = schema.field_by_name("fuel_unit_price").expect("the column is added");
    assert!(!added.required && added.id > old_id, "a new optional column with a fresh id: {added:?}");
    // Read at once under the new schema: iceberg-rust scans with the current snapshot's schema, so an empty snapshot
    // of the new one is committed (without it the old files' values of the dropped column came back here).
    let table = wh.load("sales_line").await.expect("load");
    let snapshot = table.metadata().current_snapshot().expect("a snapshot");
    assert_eq!(snapshot.schema_id(), Some(table.metadata().current_schema_id()));
    assert!(snapshot.summary().additional_properties.contains_key("poslake.schema-update"));
    assert_eq!(common::scalar(&wh, "SELECT count(*) FROM sales_line").await, lines_before as i64);
    assert_eq!(common::scalar(&wh, "SELECT count(fuel_unit_price) FROM sales_line").await, 0);
    let mut rows = wh.rows();
    for f in &after {
        rows.add_file(f).expect("rows");
    }
    wh.append(rows, &HashMap::new()).await.expect("append after");
    let lines_after: u64 = after.iter().map(|f| u64::from(f.facts.line_count)).sum();
    assert_eq!(wh.row_count("sales_line").await.expect("count"), lines_before + lines_after);
    assert_eq!(common::scalar(&wh, "SELECT count(fuel_unit_price) FROM sales_line").await, priced as i64);
    drop(wh);

    // A column missing before the last is no such addition: the table is read, not written.
    let table = catalog.load_table(&ident).await.expect("load");
    let tx = Transaction::new(&table);
    let tx = tx.update_schema().delete_column("description").apply(tx).expect("delete column");
    tx.commit(&catalog).await.expect("commit");
    let wh = Warehouse::open(dir.path()).await.expect("open");
    match wh.check_writable() {
        Err(LakeError::Schema { table, reason }) => {
            assert_eq!(table, "sales_line");
            assert!(reason.contains("description") && reason.contains("does not write"), "{reason}");
        }
        other => panic!("expected a schema error, got {other:?}"),
    }

    // A sales_header without a column the `sales_header_current` view passes through: the view has the table's
    // columns.
    drop(wh);
    let ident = TableIdent::new(NamespaceIdent::new("poslake".into()), "sales_header".into());
    let drop_column = |name: &'static str| {
        let catalog = &catalog;
        let ident = &ident;
        async move {
            let table = catalog.load_table(ident).await.expect("load");
            let tx = Transaction::new(&table);
            let tx = tx.update_schema().delete_column(name).apply(tx).expect("delete column");
            tx.commit(catalog).await.expect("commit");
        }
    };
    drop_column("cashier").await;
    let wh = Warehouse::open(dir.path()).await.expect("open");
    let headers = common::scalar(&wh, "SELECT count(*) FROM sales_header").await;
    assert_eq!(common::scalar(&wh, "SELECT count(*) FROM sales_header_current").await, headers);
    let cashier = poslake::lake::query::sql(&wh, "SELECT cashier FROM sales_header_current").await;
    assert!(cashier.is_err(), "the view has no column the table lacks");

    // Without a column the view joins on, the view is left out and the session still queries every table (it failed
    // to start at all, found by an audit).
    drop(wh);
    drop_column("key_variant").await;
    let wh = Warehouse::open(dir.path()).await.expect("open");
    assert_eq!(common::scalar(&wh, "SELECT count(*) FROM sales_line").await, (lines_before + lines_after) as i64);
    let view = poslake::lake::query::sql(&wh, "SELECT count(*) FROM sales_header_current").await;
    assert!(view.is_err(), "no view over a sales_header without the columns it joins on");
}

/// A lake opened to read (`poslake query`, `poslake tables`) is not changed: a table an earlier poslake made
/// without a column poslake now appends is read as it is, and a table not made yet stays absent.
#[tokio::test]
async fn a_lake_opened_to_read_is_not_written() {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    use iceberg::{Catalog, NamespaceIdent, TableIdent};

    let dir = tempfile::tempdir().expect("tempdir");
    let wh = lake_with_fixtures(dir.path()).await;
    let (headers, lines) = (wh.row_count("sales_header").await.expect("count"), wh.row_count("sales_line").await);
    drop(wh);
    // An earlier poslake's lake: sales_line without its last column, and no quarantine table yet.
    let catalog = sqlite_catalog(dir.path()).await;
    let ns = NamespaceIdent::new("poslake".into());
    let line = TableIdent::new(ns.clone(), "sales_line".into());
    let table = catalog.load_table(&line).await.expect("load");
    let tx = Transaction::new(&table);
    let tx = tx.update_schema().delete_column("fuel_unit_price").apply(tx).expect("delete column");
    tx.commit(&catalog).await.expect("commit");
    let quarantine = TableIdent::new(ns, "sales_duplicates".into());
    catalog.drop_table(&quarantine).await.expect("drop");
    let metadata_before = catalog.load_table(&line).await.expect("load").metadata_location().map(str::to_owned);

    let wh = Warehouse::open_to_read(dir.path(), None).await.expect("open to read");
    assert!(matches!(wh.check_writable(), Err(LakeError::Schema { .. })), "nothing is written through it");
    assert!(!wh.has_table("sales_duplicates").await.expect("has"), "a missing table is not created");
    assert_eq!(common::scalar(&wh, "SELECT count(*) FROM sales_line").await, lines.expect("lines") as i64);
    assert_eq!(common::scalar(&wh, "SELECT count(*) FROM sales_header_current").await, headers as i64);
    let column = poslake::lake::query::sql(&wh, "SELECT fuel_unit_price FROM sales_line").await;
    assert!(column.is_err(), "the column is not added");
    drop(wh);
    let after = catalog.load_table(&line).await.expect("load");
    assert_eq!(after.metadata_location().map(str::to_owned), metadata_before, "no commit to the table");
    assert!(!catalog.table_exists(&quarantine).await.expect("exists"), "the quarantine is still absent");

    // An ingest's open upgrades it, as before.
    let wh = Warehouse::open(dir.path()).await.expect("open");
    wh.check_writable().expect("upgraded");
    assert!(wh.has_table("sales_duplicates").await.expect("has"));
    assert_eq!(common::scalar(&wh, "SELECT count(fuel_unit_price) FROM sales_line").await, 0);
}

/// The ledger row an ingest writes for a file it landed whole.
fn ledger_row(f: &poslake::ParsedFile, at: chrono::NaiveDateTime) -> LedgerEntry {
    LedgerEntry {
        run_id: "run-1".into(),
        path: f.facts.name.clone(),
        bytes: f.facts.bytes,
        content_hash: f.facts.content_hash.clone(),
        dialect: Some(f.facts.dialect.id().into()),
        site: f.facts.site.clone(),
        outcome: Outcome::Ingested,
        transactions: f.facts.transaction_count,
        new_transactions: f.facts.transaction_count,
        duplicate_transactions: 0,
        quarantined_transactions: 0,
        lines: f.facts.line_count,
        discounts: f.facts.discount_count,
        at,
        trace_id: None,
        envelope: f.envelope.to_json(),
    }
}

/// A new lake at `dir` holding every dialect fixture, appended in one commit.
async fn lake_with_fixtures(dir: &std::path::Path) -> std::sync::Arc<Warehouse> {
    let wh = std::sync::Arc::new(Warehouse::open(dir).await.expect("open"));
    let mut rows = wh.rows();
    for f in &dialect_fixtures() {
        rows.add_file(f).expect("rows");
    }
    wh.append(rows, &HashMap::new()).await.expect("append");
    wh
}

/// The lake's SQLite catalog, opened as another engine (or another process) would.
async fn sqlite_catalog(lake: &std::path::Path) -> iceberg_catalog_sql::SqlCatalog {
    use iceberg::CatalogBuilder;
    let root = lake.canonicalize().expect("canonical");
    iceberg_catalog_sql::SqlCatalogBuilder::default()
        .uri(format!("sqlite:{}?mode=rwc", root.join("catalog.db").display()))
        .warehouse_location(format!("file://{}", root.join("warehouse").display()))
        .sql_bind_style(iceberg_catalog_sql::SqlBindStyle::QMark)
        .with_storage_factory(std::sync::Arc::new(iceberg::io::LocalFsStorageFactory))
        .load("poslake", HashMap::new())
        .await
        .expect("catalog")
}

/// A process that added a column and stopped before the empty snapshot that makes it readable: the next open makes
/// that snapshot (without it, a query of the column failed, or read a dropped column's old values, until the table's
/// next commit).
#[tokio::test]
async fn an_open_makes_the_snapshot_a_process_that_added_columns_did_not() {
    use iceberg::spec::{PrimitiveType, Type};
    use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
    use iceberg::{Catalog, NamespaceIdent, TableIdent};

    let dir = tempfile::tempdir().expect("tempdir");
    let wh = lake_with_fixtures(dir.path()).await;
    assert!(common::scalar(&wh, "SELECT count(fuel_unit_price) FROM sales_line").await > 0);
    drop(wh);
    let catalog = sqlite_catalog(dir.path()).await;
    let ident = TableIdent::new(NamespaceIdent::new("poslake".into()), "sales_line".into());
    for change in ["drop", "add"] {
        let table = catalog.load_table(&ident).await.expect("load");
        let tx = Transaction::new(&table);
        let tx = match change {
            "drop" => tx.update_schema().delete_column("fuel_unit_price").apply(tx),
            _ => {
                let decimal = Type::Primitive(PrimitiveType::Decimal { precision: 18, scale: 4 });
                tx.update_schema().add_column(AddColumn::optional("fuel_unit_price", decimal)).apply(tx)
            }
        };
        tx.expect("schema update").commit(&catalog).await.expect("commit");
    }
    let table = catalog.load_table(&ident).await.expect("load");
    let meta = table.metadata();
    assert_ne!(meta.current_snapshot().and_then(|s| s.schema_id()), Some(meta.current_schema_id()));

    let wh = Warehouse::open(dir.path()).await.expect("open");
    wh.check_writable().expect("the table is poslake's");
    let table = wh.load("sales_line").await.expect("load");
    let meta = table.metadata();
    assert_eq!(meta.current_snapshot().and_then(|s| s.schema_id()), Some(meta.current_schema_id()));
    assert_eq!(common::scalar(&wh, "SELECT count(fuel_unit_price) FROM sales_line").await, 0);
}

/// Bronze `fields` values get neither a dictionary nor statistics (they cost a hash and a comparison per value and
/// prune nothing); bronze keys keep their dictionary; silver columns keep their statistics.
#[tokio::test]
async fn bronze_map_values_skip_dictionary_and_statistics() {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let dir = tempfile::tempdir().expect("tempdir");
    let _wh = lake_with_fixtures(dir.path()).await;

    let mut parquet_files = Vec::new();
    let mut dirs = vec![dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                parquet_files.push(p);
            }
        }
    }
    let (mut bronze, mut header) = (0, 0);
    for p in &parquet_files {
        let reader = SerializedFileReader::new(std::fs::File::open(p).expect("open")).expect("parquet");
        for rg in reader.metadata().row_groups() {
            for c in rg.columns() {
                let path = c.column_path().string();
                let s = p.display().to_string();
                if s.contains("bronze_transaction") && path == "fields.key_value.value" {
                    bronze += 1;
                    assert!(c.dictionary_page_offset().is_none(), "{s}: values must not be dictionary-encoded");
                    assert!(c.statistics().is_none(), "{s}: values carry no statistics");
                } else if s.contains("bronze_transaction") && path == "fields.key_value.key" {
                    assert!(c.dictionary_page_offset().is_some(), "{s}: keys keep their dictionary");
                    assert!(c.statistics().is_none(), "{s}: keys carry no statistics");
                } else if s.contains("sales_header") && path == "site" {
                    header += 1;
                    assert!(c.statistics().is_some(), "{s}: silver columns keep their statistics");
                }
            }
        }
    }
    assert!(bronze > 0 && header > 0, "no bronze or header data files among {parquet_files:?}");
}

/// What `poslake replay` selects, from ledger and dead-letter rows written directly: the newest ledger row per
/// path and size decides, the archived content hash survives a later failure that read nothing, a file only ever
/// deferred is left to the ingest, a corrected copy of another size landing later retires a dead letter (one landing
/// earlier does not), and the kind filter looks at a file's latest refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_selects_by_each_files_newest_ledger_row_and_latest_refusal() {
    use poslake::ingest::replay::{ReplayFilter, select};
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = std::sync::Arc::new(Warehouse::open(dir.path()).await.expect("open"));
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 1).expect("date");
    let at = |minute: u32| day.and_hms_opt(0, minute, 0).expect("time");
    let mut rows = wh.rows();
    let mut row = |path: &str, bytes: u64, hash: &str, outcome: Outcome, minute: u32, kind: &'static str| {
        if outcome != Outcome::Ingested {
            let stage = if hash.is_empty() { "download" } else { "parse" };
            let dead = DeadLetter {
                run_id: format!("run{minute}"),
                path: path.into(),
                content_hash: hash.into(),
                stage,
                kind,
                reason: format!("{kind} at {minute}"),
                line: None,
                column: None,
                attempts: 1,
                at: at(minute),
            };
            rows.add_dead_letter(&dead).expect("dead letter");
        }
        let entry = LedgerEntry::without_transactions(
            format!("run{minute}"),
            path.into(),
            bytes,
            hash.into(),
            outcome,
            at(minute),
        );
        rows.add_ledger(&entry).expect("ledger");
    };
    let (h1, h2) = ("a".repeat(64), "b".repeat(64));
    // Refused by the parser, then a replay that could not read it: the archived hash is still the parser's.
    row("kept.xml", 10, &h1, Outcome::DeadLetter, 1, "malformed");
    row("kept.xml", 10, "", Outcome::DeadLetter, 2, "outside_staging");
    // Only ever deferred: the ingest retries it.
    row("deferred.xml", 11, "", Outcome::Deferred, 1, "gave_up");
    // Dead, then deferred by a replay: only a replay takes it again.
    row("stuck.xml", 12, &h2, Outcome::DeadLetter, 1, "truncated");
    row("stuck.xml", 12, "", Outcome::Deferred, 3, "gave_up");
    // A corrected copy of another size landed later: retired.
    row("retired.xml", 13, &h1, Outcome::DeadLetter, 1, "malformed");
    row("retired.xml", 14, &h2, Outcome::Ingested, 2, "");
    // An older version landed before the file was refused: still a dead letter.
    row("newer.xml", 15, &h1, Outcome::Ingested, 1, "");
    row("newer.xml", 16, &h2, Outcome::DeadLetter, 2, "malformed");
    // Landed by a replay.
    row("landed.xml", 17, &h1, Outcome::DeadLetter, 1, "malformed");
    row("landed.xml", 17, &h1, Outcome::Ingested, 2, "");
    wh.append(rows, &HashMap::new()).await.expect("append");

    let all = select(&wh, &ReplayFilter::default()).await.expect("select");
    let got: Vec<(&str, u64, &str, &str)> =
        all.iter().map(|f| (f.path.as_str(), f.bytes, f.content_hash.as_str(), f.kind.as_str())).collect();
    assert_eq!(
        got,
        [
            ("kept.xml", 10, h1.as_str(), "outside_staging"),
            ("newer.xml", 16, h2.as_str(), "malformed"),
            ("stuck.xml", 12, h2.as_str(), "gave_up"),
        ]
    );
    // The filter sees each file's latest refusal, not an older one.
    let malformed = ReplayFilter { kinds: vec!["malformed".into()], ..ReplayFilter::default() };
    let names: Vec<String> = select(&wh, &malformed).await.expect("select").into_iter().map(|f| f.path).collect();
    assert_eq!(names, ["newer.xml"]);
}

/// A lake whose warehouse holds tables but which has no catalog.db (its catalog is a PostgreSQL database the command
/// was not given, or catalog.db was lost) is refused, not given a new empty catalog: an audit saw an ingest without
/// `--catalog` land every file again into a second history of the same tables.
#[tokio::test]
async fn a_lake_with_tables_and_no_catalog_is_not_given_a_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(lake_with_fixtures(dir.path()).await);
    std::fs::rename(dir.path().join("catalog.db"), dir.path().join("elsewhere.db")).expect("move the catalog away");
    for opened in [Warehouse::open(dir.path()).await.err(), Warehouse::open_to_read(dir.path(), None).await.err()] {
        let error = opened.expect("refused").to_string();
        assert!(error.contains("no catalog.db") && error.contains("--catalog"), "{error}");
    }
    assert!(!dir.path().join("catalog.db").exists(), "no new catalog was made");
    // An empty file in its place is no catalog either (a failed restore, a full disk).
    std::fs::write(dir.path().join("catalog.db"), b"").expect("an empty catalog.db");
    let error = Warehouse::open(dir.path()).await.err().expect("refused").to_string();
    assert!(error.contains("no catalog.db"), "{error}");
    assert_eq!(std::fs::metadata(dir.path().join("catalog.db")).expect("still there").len(), 0, "left as it was");
    std::fs::remove_file(dir.path().join("catalog.db")).expect("remove");
    // Put back, the lake opens as before.
    std::fs::rename(dir.path().join("elsewhere.db"), dir.path().join("catalog.db")).expect("restore");
    let wh = Warehouse::open(dir.path()).await.expect("open");
    assert!(wh.row_count("sales_header").await.expect("rows") > 0);
}

/// `poslake verify` finds what would make the lake inexact, and nothing in a lake that is: a sale landed twice (in
/// sales_header and bronze), lines landed without their header, a file ingested twice, and quarantined keys that
/// reconcile has yet to settle; a date range limits the transaction checks.
#[tokio::test]
async fn verify_finds_what_makes_a_lake_inexact_and_nothing_else() {
    use poslake::lake::rows::{FileRows, Quarantine, Source};
    use poslake::lake::tables::TABLES;
    use poslake::lake::verify::{VerifyReport, verify};

    fn found(report: &VerifyReport, name: &str) -> u64 {
        let check = report.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}"));
        assert!(check.skipped.is_none(), "{name} skipped: {:?}", check.skipped);
        check.found
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = lake_with_fixtures(dir.path()).await;
    let files = dialect_fixtures();
    let now = chrono::NaiveDate::from_ymd_opt(2026, 11, 26).and_then(|d| d.and_hms_opt(5, 0, 0)).expect("now");
    let ledger = |f: &poslake::ParsedFile| ledger_row(f, now);
    // The ledger and the quarantine, as an ingest leaves them: every file once, a quarantined copy of a landed key.
    let mut rows = wh.rows();
    for f in &files {
        rows.add_ledger(&ledger(f)).expect("ledger row");
    }
    let landed = &files[0].transactions[0];
    let quarantine = Quarantine { run_id: "run-1", reason: "filter", at: now };
    rows.add_quarantine(&Source::of(&files[0]), landed, &quarantine).expect("quarantine row");
    wh.append(rows, &HashMap::new()).await.expect("append");
    let exact = verify(&wh, None, None, 5).await.expect("verify");
    assert!(exact.exact(), "{exact:#?}");
    assert!(exact.checks.iter().all(|c| c.found == 0 && c.skipped.is_none()), "{exact:#?}");

    // One file's transactions a second time, with its ledger row; and a quarantined key no table holds.
    let twice = files.iter().find(|f| f.transactions.len() > 1).expect("a file of several transactions");
    let mut rows = wh.rows();
    rows.add_file(twice).expect("rows");
    rows.add_ledger(&ledger(twice)).expect("ledger row");
    let mut absent = landed.clone();
    absent.header.key.sequence = "999999".into();
    rows.add_quarantine(&Source::of(&files[0]), &absent, &quarantine).expect("quarantine row");
    wh.append(rows, &HashMap::new()).await.expect("append");
    // And lines of a transaction whose header never landed (as a table landed apart from the others would leave).
    let mut orphan = files.iter().find(|f| f.transactions.iter().any(|t| !t.lines.is_empty())).expect("lines").clone();
    orphan.transactions.retain(|t| !t.lines.is_empty());
    orphan.transactions.truncate(1);
    let orphan_lines = orphan.transactions[0].lines.len() as u64;
    orphan.transactions[0].header.key.sequence = "888888".into();
    let built = FileRows::build(wh.schemas(), &orphan).expect("builds");
    let mut rows = wh.rows();
    let lines_only =
        built.select(&[true]).expect("select").into_iter().filter(|(t, _, _)| TABLES[*t].name == "sales_line");
    rows.add_built(lines_only);
    wh.append(rows, &HashMap::new()).await.expect("append lines alone");

    let report = verify(&wh, None, None, 3).await.expect("verify");
    assert!(!report.exact(), "{report:#?}");
    let keys: BTreeSet<String> = twice.transactions.iter().map(|t| t.header.key.canonical()).collect();
    assert_eq!(found(&report, "sales_header_keys_twice"), keys.len() as u64);
    assert_eq!(found(&report, "bronze_keys_twice"), keys.len() as u64);
    assert_eq!(found(&report, "files_ingested_twice"), 1);
    assert_eq!(found(&report, "quarantine_to_reconcile"), 1);
    assert_eq!(found(&report, "line_counts"), 1, "the orphan lines' key, and no key landed whole");
    assert_eq!(found(&report, "headers_without_bronze"), 0);
    assert_eq!(found(&report, "bronze_without_header"), 0);
    assert_eq!(found(&report, "discount_counts"), 0);
    let lines = report.checks.iter().find(|c| c.name == "line_counts").expect("check");
    assert!(
        lines
            .examples
            .iter()
            .any(|e| e.contains("sequence=888888") && e.contains(&format!("rows_found={orphan_lines}"))),
        "{lines:?}"
    );
    let doubled = report.checks.iter().find(|c| c.name == "sales_header_keys_twice").expect("check");
    assert_eq!(doubled.examples.len(), keys.len().min(3), "{doubled:?}");
    assert!(doubled.examples.iter().all(|e| e.contains("copies=2")), "{doubled:?}");

    // Dates after every transaction's: nothing of the transaction checks counts; the ledger is checked whole.
    let last = files.iter().flat_map(|f| &f.transactions).map(|t| t.header.key.business_date).max().expect("dates");
    let after = last.succ_opt().expect("a day after");
    let later = verify(&wh, Some(after), None, 3).await.expect("verify");
    assert_eq!(found(&later, "sales_header_keys_twice"), 0);
    assert_eq!(found(&later, "line_counts"), 0);
    assert_eq!(found(&later, "files_ingested_twice"), 1);
    // A commit left unfinished (its intent still there): its tables may be landed in part, so the checks across
    // tables are left out, not reported broken; those within one table still count.
    let commits = dir.path().join("commits");
    std::fs::create_dir_all(&commits).expect("commits");
    std::fs::write(commits.join("left.json"), r#"{"id": "run-9/0"}"#).expect("intent");
    let unsettled = verify(&wh, None, None, 3).await.expect("verify");
    assert_eq!(unsettled.unfinished_commits, 1);
    let line_counts = unsettled.checks.iter().find(|c| c.name == "line_counts").expect("check");
    assert!(line_counts.skipped.as_deref().is_some_and(|why| why.contains("1 commits unfinished")), "{line_counts:?}");
    assert!(unsettled.unsettled().contains(&"line_counts"), "{unsettled:?}");
    assert_eq!(found(&unsettled, "sales_header_keys_twice"), keys.len() as u64);
    std::fs::remove_file(commits.join("left.json")).expect("rm");

    let day = twice.transactions[0].header.key.business_date;
    let that_day = verify(&wh, Some(day), Some(day), 3).await.expect("verify");
    let on_day: BTreeSet<String> = twice
        .transactions
        .iter()
        .filter(|t| t.header.key.business_date == day)
        .map(|t| t.header.key.canonical())
        .collect();
    assert_eq!(found(&that_day, "sales_header_keys_twice"), on_day.len() as u64);
}
