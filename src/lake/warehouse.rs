//! The warehouse: an Iceberg SQL catalog (SQLite in the lake by default, or a PostgreSQL database shared by workers
//! on several hosts) and data files on the lake's file system, with the silver and bronze tables created on first
//! open and checked against their definitions on every open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::TryStreamExt;
use iceberg::arrow::{FieldMatchMode, schema_to_arrow_schema};
use iceberg::spec::{DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::LakeError;
use super::rows::Rows;
use super::tables::{TABLES, TableDef};

/// The namespace poslake's tables live in.
pub const NAMESPACE: &str = "poslake";
/// The SQL catalog's name (its rows in `catalog.db` carry it).
pub const CATALOG_NAME: &str = "poslake";

/// Default target size of one data file: large files keep scans cheap, since iceberg-rust has no compaction.
pub const DEFAULT_TARGET_FILE_BYTES: usize = 128 << 20;

pub struct Warehouse {
    catalog: Arc<SqlCatalog>,
    /// Where the catalog's tables are (for the conditional updates of `merge`).
    catalog_db: CatalogDb,
    namespace: NamespaceIdent,
    root: PathBuf,
    /// Arrow schemas of [`TABLES`], taken from the tables themselves (field ids included).
    schemas: Vec<SchemaRef>,
    /// Tables whose schema another engine changed, with how: read as they are, never written (see `ensure_table`).
    unwritable: Vec<(&'static str, String)>,
    target_file_bytes: usize,
    /// Manifests smaller than this are merged (see `merge`).
    manifest_target_bytes: i64,
}

/// One table's commit.
#[derive(Debug, Clone)]
pub struct Commit {
    pub table: &'static str,
    /// The table's UUID, and the snapshot this commit made and its sequence number.
    pub table_uuid: String,
    pub snapshot_id: i64,
    pub sequence: i64,
    pub data_files: usize,
    pub rows: u64,
    /// Snapshots the table holds after this commit, and how many of them came after its latest manifest merge (a
    /// `replace` snapshot): what decides whether maintenance is overdue.
    pub snapshots: usize,
    pub since_merge: usize,
}

/// The database of a lake's SQL catalog.
#[derive(Debug, Clone)]
pub enum CatalogDb {
    /// `<lake>/catalog.db`: one host.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`), which workers on several hosts can share.
    Postgres(String),
}

impl CatalogDb {
    /// The catalog named by `url` (`postgres://` or `postgresql://`), or SQLite in the lake at `root` when none is.
    pub fn new(root: &Path, url: Option<&str>) -> Result<Self, LakeError> {
        match url {
            None => Ok(CatalogDb::Sqlite(root.join("catalog.db"))),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(CatalogDb::Postgres(u.to_owned()))
            }
            Some(u) => Err(LakeError::Catalog(format!(
                "catalog {}: not a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE); leave it out for SQLite in \
                 the lake",
                redact(u)
            ))),
        }
    }

    /// The sqlx URI.
    pub fn uri(&self) -> String {
        match self {
            CatalogDb::Sqlite(db) => format!("sqlite:{}?mode=rwc", db.display()),
            CatalogDb::Postgres(url) => url.clone(),
        }
    }

    /// For messages: the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            CatalogDb::Sqlite(db) => db.display().to_string(),
            CatalogDb::Postgres(url) => redact(url),
        }
    }
}

/// Whether a catalog error is PostgreSQL refusing a `CREATE TABLE IF NOT EXISTS` that another process won.
fn lost_create_race(error: &str) -> bool {
    // A duplicate row in its type catalog, or the relation or its row type made meanwhile.
    error.contains("duplicate key value") || error.contains("already exists")
}

/// A URL with its password (in its user part or a `password` parameter) replaced by `***`; one that does not parse
/// is not shown at all, since where its password lies is unknown.
fn redact(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else { return "(a URL that does not parse)".to_owned() };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" { "***".to_owned() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Connects once to a PostgreSQL catalog, so that a server that refuses (a closed port, a wrong password, a missing
/// database, TLS) is reported with its reason: the catalog's pool retries until its 30 s timeout and then says only
/// "pool timed out".
async fn probe_postgres(url: &str, db: &CatalogDb) -> Result<(), LakeError> {
    use sqlx::{ConnectOptions, Connection};
    let fail = |why: String| LakeError::Catalog(format!("catalog {}: cannot connect: {why}", db.describe()));
    let options: sqlx::postgres::PgConnectOptions = url.parse().map_err(|e: sqlx::Error| fail(e.to_string()))?;
    match tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail(format!("no answer within {} s", PROBE_TIMEOUT.as_secs()))),
    }
}

/// How long the first connection to a PostgreSQL catalog may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Warehouse {
    /// Opens (creating if needed) the warehouse under `root`: `root/catalog.db` and `root/warehouse/`.
    pub async fn open(root: &Path) -> Result<Self, LakeError> {
        Self::open_with(root, None).await
    }

    /// Opens (creating if needed) the warehouse under `root` with its catalog in `catalog` (a PostgreSQL URL), or in
    /// `root/catalog.db` when that is `None`. A catalog shared by several hosts needs the lake mounted at the same
    /// path on each (table metadata names its files by absolute path); a catalog whose tables lie under another
    /// lake is refused.
    pub async fn open_with(root: &Path, catalog: Option<&str>) -> Result<Self, LakeError> {
        std::fs::create_dir_all(root.join("warehouse"))
            .map_err(|e| LakeError::Io { path: root.to_path_buf(), source: e })?;
        let (catalog, catalog_db, root, warehouse_location) = open_catalog(root, catalog).await?;
        let namespace = NamespaceIdent::new(NAMESPACE.to_owned());
        refuse_a_second_history(&catalog, &namespace, &root, &catalog_db).await?;
        // Two processes opening a new lake at once both see it empty: the loser of a create finds the winner's.
        if !catalog.namespace_exists(&namespace).await?
            && let Err(e) = catalog.create_namespace(&namespace, HashMap::new()).await
            && !catalog.namespace_exists(&namespace).await?
        {
            return Err(e.into());
        }
        let mut schemas = Vec::new();
        let mut unwritable = Vec::new();
        for def in TABLES {
            let (table, differs) = ensure_table(&catalog, &namespace, def, &catalog_db).await?;
            if let Some(reason) = differs {
                unwritable.push((def.name, reason));
            }
            check_location(&table, def, &warehouse_location, &catalog_db)?;
            schemas.push(Arc::new(schema_to_arrow_schema(table.metadata().current_schema())?));
        }
        Ok(Self::assembled(catalog, catalog_db, namespace, root, schemas, unwritable))
    }

    /// Opens the lake at `root` to read it only: nothing is written to the catalog or the warehouse. A table an
    /// ingest would create is left absent, one an earlier poslake made is read without the columns poslake now
    /// appends, and no commit can be made through it ([`Warehouse::check_writable`] refuses). For `poslake query`
    /// and `poslake tables`, which must not change a lake they look at (nor race an ingest's commits).
    pub async fn open_to_read(root: &Path, catalog: Option<&str>) -> Result<Self, LakeError> {
        let (catalog, catalog_db, root, warehouse_location) = open_catalog(root, catalog).await?;
        let namespace = NamespaceIdent::new(NAMESPACE.to_owned());
        // Not the lake's catalog: showing its tables absent would hide where the lake's are.
        refuse_a_second_history(&catalog, &namespace, &root, &catalog_db).await?;
        let present = catalog.namespace_exists(&namespace).await?;
        let mut schemas = Vec::new();
        for def in TABLES {
            let ident = TableIdent::new(namespace.clone(), def.name.to_owned());
            let schema = match present && catalog.table_exists(&ident).await? {
                true => {
                    let table = catalog.load_table(&ident).await?;
                    check_location(&table, def, &warehouse_location, &catalog_db)?;
                    table.metadata().current_schema().clone()
                }
                false => Arc::new(def.schema()?),
            };
            schemas.push(Arc::new(schema_to_arrow_schema(&schema)?));
        }
        let unwritable = TABLES.iter().map(|def| (def.name, "the lake was opened to read only".to_owned())).collect();
        Ok(Self::assembled(catalog, catalog_db, namespace, root, schemas, unwritable))
    }

    /// A warehouse of these parts, with the default file and manifest sizes.
    fn assembled(
        catalog: SqlCatalog,
        catalog_db: CatalogDb,
        namespace: NamespaceIdent,
        root: PathBuf,
        schemas: Vec<SchemaRef>,
        unwritable: Vec<(&'static str, String)>,
    ) -> Self {
        Warehouse {
            catalog: Arc::new(catalog),
            catalog_db,
            namespace,
            root,
            schemas,
            unwritable,
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
            manifest_target_bytes: super::merge::DEFAULT_MANIFEST_TARGET_BYTES,
        }
    }

    /// Whether the catalog holds the table (a lake opened to read may lack one an ingest would create).
    pub async fn has_table(&self, table: &str) -> Result<bool, LakeError> {
        let ident = TableIdent::new(self.namespace.clone(), table.to_owned());
        Ok(self.catalog.namespace_exists(&self.namespace).await? && self.catalog.table_exists(&ident).await?)
    }

    pub(super) fn catalog_ref(&self) -> &SqlCatalog {
        self.catalog.as_ref()
    }

    /// The Iceberg catalog (for SQL engines and other readers).
    pub fn catalog(&self) -> Arc<dyn Catalog> {
        self.catalog.clone()
    }

    /// Sets the size under which manifests are merged (default [`super::merge::DEFAULT_MANIFEST_TARGET_BYTES`]).
    pub fn set_manifest_target_bytes(&mut self, bytes: i64) {
        self.manifest_target_bytes = bytes;
    }

    pub fn manifest_target_bytes(&self) -> i64 {
        self.manifest_target_bytes
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The catalog's database.
    pub fn catalog_db(&self) -> &CatalogDb {
        &self.catalog_db
    }

    /// Refuses a lake with a table whose schema differs from poslake's definition (another engine added or changed
    /// a column): it is read as it is, but rows built to the definition must not be written into it.
    pub fn check_writable(&self) -> Result<(), LakeError> {
        match self.unwritable.first() {
            Some((table, reason)) => Err(LakeError::Schema { table, reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// An empty set of rows for [`Warehouse::append`].
    pub fn rows(&self) -> Rows {
        Rows::new(self.schemas.clone())
    }

    /// The Arrow schema of one of [`TABLES`], as the table has it.
    pub fn schema_of(&self, table: &str) -> Option<SchemaRef> {
        TABLES.iter().position(|def| def.name == table).and_then(|i| self.schemas.get(i).cloned())
    }

    /// The Arrow schemas of the tables, in [`super::tables::TABLES`] order.
    pub fn schemas(&self) -> Vec<SchemaRef> {
        self.schemas.clone()
    }

    pub async fn load(&self, table: &str) -> Result<Table, LakeError> {
        Ok(self.catalog.load_table(&TableIdent::new(self.namespace.clone(), table.to_owned())).await?)
    }

    /// Writes the rows and commits them at once (a [`LakeWriter`] for one batch). Tables with no rows are not
    /// committed.
    pub async fn append(
        self: &Arc<Self>,
        rows: Rows,
        properties: &HashMap<String, String>,
    ) -> Result<Vec<Commit>, LakeError> {
        let mut writer = LakeWriter::new(self.clone());
        writer.write(rows).await?;
        writer.commit(properties).await
    }

    /// Rows in the table's current snapshot, from the snapshot summary (no data is read).
    pub async fn row_count(&self, table: &str) -> Result<u64, LakeError> {
        let loaded = self.load(table).await?;
        let Some(snapshot) = loaded.metadata().current_snapshot() else { return Ok(0) };
        let total = |name: &str| -> u64 {
            snapshot.summary().additional_properties.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        // poslake writes no delete files, but another engine may (a row deleted with PyIceberg or Spark): a position
        // delete removes one row of the records counted; an equality delete, any number, so then the rows are
        // counted by a scan.
        if total("total-equality-deletes") > 0 {
            let first = loaded.metadata().current_schema().as_struct().fields().first().map(|f| f.name.clone());
            let mut rows = 0;
            let mut batches = self.scan_columns(table, &first.iter().map(String::as_str).collect::<Vec<_>>()).await?;
            while let Some(batch) = futures::StreamExt::next(&mut batches).await {
                rows += batch?.num_rows() as u64;
            }
            return Ok(rows);
        }
        Ok(total("total-records").saturating_sub(total("total-position-deletes")))
    }

    /// Streams the named columns of the table's current snapshot, a batch at a time (nothing if it has none).
    pub async fn scan_columns(
        &self,
        table: &str,
        columns: &[&str],
    ) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch, LakeError>>, LakeError> {
        let table = self.load(table).await?;
        if table.metadata().current_snapshot().is_none() {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let stream = table.scan().select(columns.iter().copied()).build()?.to_arrow().await?;
        Ok(Box::pin(stream.map_err(LakeError::from)))
    }

    /// Reads the whole table (for tests and small tables).
    pub async fn scan(&self, table: &str) -> Result<Vec<RecordBatch>, LakeError> {
        let table = self.load(table).await?;
        if table.metadata().current_snapshot().is_none() {
            return Ok(Vec::new());
        }
        let stream = table.scan().select_all().build()?.to_arrow().await?;
        Ok(stream.try_collect().await?)
    }
}

/// Refuses to make a new SQLite catalog for a lake whose warehouse already holds tables: their catalog is elsewhere
/// (a PostgreSQL database the command was not given) or was lost. A new one would start a second history of the
/// same tables in the same folders (an audit saw an ingest without `--catalog` land every file again), and an
/// orphan sweep through either would delete the other's files.
fn refuse_a_lost_catalog(root: &Path, db: &Path) -> Result<(), LakeError> {
    // An empty file (a failed restore, a full disk, a `touch`) is no catalog either.
    if std::fs::metadata(db).is_ok_and(|m| m.len() > 0) {
        return Ok(());
    }
    let tables = root.join("warehouse").join(NAMESPACE);
    let holds_tables = std::fs::read_dir(&tables)
        .map(|entries| entries.flatten().any(|table| table.path().join("metadata").is_dir()))
        .unwrap_or(false);
    if !holds_tables {
        return Ok(());
    }
    Err(LakeError::Catalog(format!(
        "the lake at {} holds tables in {} but no catalog.db (or an empty one): its catalog is elsewhere (a PostgreSQL database: give \
         it with --catalog or POSLAKE_CATALOG), or catalog.db was lost (restore it; a new one would start the tables \
         over beside their files)",
        root.display(),
        tables.display()
    )))
}

/// Refuses to create a table the catalog lacks when the warehouse already holds that table's committed history
/// (a metadata file past the first, which only a commit writes): the catalog given is not the lake's (another
/// PostgreSQL database, one restored empty, a lost `catalog.db`). A new table there would start a second history
/// in the same folder, land every file again, and an orphan sweep through either catalog would delete the other's
/// files. The first metadata file alone is what a creation that failed before its catalog row leaves: no history.
async fn refuse_a_second_history(
    catalog: &SqlCatalog,
    ns: &NamespaceIdent,
    root: &Path,
    db: &CatalogDb,
) -> Result<(), LakeError> {
    let present = catalog.namespace_exists(ns).await?;
    for def in TABLES {
        if present && catalog.table_exists(&TableIdent::new(ns.clone(), def.name.to_owned())).await? {
            continue;
        }
        let metadata = root.join("warehouse").join(NAMESPACE).join(def.name).join("metadata");
        let Some(committed) = committed_metadata(&metadata) else { continue };
        return Err(LakeError::Catalog(format!(
            "catalog {} has no table {}, but the warehouse holds its committed history ({} in {}): this lake's \
             catalog is another database, or it was lost (restore it; a new table would start a second history \
             beside those files and land every file again); if the table was dropped on purpose, move its folder \
             away first",
            db.describe(),
            def.name,
            committed,
            metadata.display()
        )));
    }
    Ok(())
}

/// The name of a table metadata file of a version past the first (`00001-….metadata.json` on), if `dir` holds one.
fn committed_metadata(dir: &Path) -> Option<String> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name().into_string().ok()?;
        let version = name.strip_suffix(".metadata.json")?.split_once('-')?.0.parse::<u64>().ok()?;
        (version > 0).then_some(name)
    })
}

/// Refuses a table that lies outside this lake. A shared catalog may hold another lake's tables (one database named
/// for two lakes, or this lake mounted at another path on another host): writing beside them would mix the two, and
/// reading them would show the other lake's rows as this one's.
fn check_location(table: &Table, def: &TableDef, warehouse_location: &str, db: &CatalogDb) -> Result<(), LakeError> {
    let location = table.metadata().location();
    if location.starts_with(&format!("{warehouse_location}/")) {
        return Ok(());
    }
    Err(LakeError::Catalog(format!(
        "catalog {}: table {} lies at {location}, not under this lake ({warehouse_location}); give each lake its own \
         catalog database, and mount a shared lake at the same path on every host",
        db.describe(),
        def.name
    )))
}

/// Loads the lake's SQL catalog: its canonical root and the warehouse location its tables lie under.
async fn open_catalog(
    root: &Path,
    catalog: Option<&str>,
) -> Result<(SqlCatalog, CatalogDb, PathBuf, String), LakeError> {
    let root = root.canonicalize().map_err(|e| LakeError::Io { path: root.to_path_buf(), source: e })?;
    let catalog_db = CatalogDb::new(&root, catalog)?;
    let warehouse_location = format!("file://{}", root.join("warehouse").display());
    if let CatalogDb::Sqlite(db) = &catalog_db {
        refuse_a_lost_catalog(&root, db)?;
    }
    if let CatalogDb::Postgres(url) = &catalog_db {
        probe_postgres(url, &catalog_db).await?;
    }
    // Loading creates the catalog's own tables if absent (`CREATE TABLE IF NOT EXISTS`), which PostgreSQL can
    // refuse to one of two processes doing it at once (a duplicate row in its own type catalog, or the relation
    // made meanwhile): the retry finds them made.
    let mut tries = 0;
    let catalog = loop {
        let loaded = SqlCatalogBuilder::default()
            .uri(catalog_db.uri())
            .warehouse_location(warehouse_location.clone())
            .sql_bind_style(match catalog_db {
                CatalogDb::Sqlite(_) => SqlBindStyle::QMark,
                CatalogDb::Postgres(_) => SqlBindStyle::DollarNumeric,
            })
            .with_storage_factory(Arc::new(iceberg::io::LocalFsStorageFactory))
            .load(CATALOG_NAME, HashMap::new())
            .await;
        match loaded {
            Ok(catalog) => break catalog,
            Err(e) if tries < 3 && lost_create_race(&e.to_string()) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100 * tries)).await;
            }
            Err(e) => {
                let text = crate::error_text::chain(&e);
                let hint = super::locked_catalog_hint(&text);
                return Err(LakeError::Catalog(format!("catalog {}: {text}{hint}", catalog_db.describe())));
            }
        }
    };
    Ok((catalog, catalog_db, root, warehouse_location))
}

/// Loads the table, creating it from its definition if absent. For an existing table whose columns differ from the
/// definition (names, types, nullability, order), also how they differ: such a table is read, never written to
/// ([`Warehouse::check_writable`]).
async fn ensure_table(
    catalog: &SqlCatalog,
    ns: &NamespaceIdent,
    def: &TableDef,
    db: &CatalogDb,
) -> Result<(Table, Option<String>), LakeError> {
    let ident = TableIdent::new(ns.clone(), def.name.to_owned());
    let want = def.schema()?;
    let table = if catalog.table_exists(&ident).await? {
        catalog.load_table(&ident).await?
    } else {
        let creation = TableCreation::builder()
            .name(def.name.to_owned())
            .schema(want.clone())
            .partition_spec(def.partition_spec()?)
            .build();
        match catalog.create_table(ns, creation).await {
            // The creation's COMMIT is not checked by the crate either (see `catalog_row`).
            Ok(table) if catalog.table_exists(&ident).await? => table,
            Ok(_) => {
                return Err(LakeError::Unrecorded { table: def.name.to_owned(), catalog: db.describe() });
            }
            // Another process created it meanwhile (see `Warehouse::open`).
            Err(_) if catalog.table_exists(&ident).await? => catalog.load_table(&ident).await?,
            Err(e) => return Err(e.into()),
        }
    };
    // A failed addition leaves the table as it was: read, not written (a reader of the lake, such as `poslake query`
    // on a read-only catalog, still opens it), with the failure in the reason an ingest is refused with.
    let (table, not_added) = match appended_columns(table.metadata().current_schema(), &want) {
        added if added.is_empty() => (table, None),
        added => match add_columns(catalog, &ident, &table, &added, db).await {
            Ok(evolved) => (evolved, None),
            Err(e) => {
                tracing::warn!(table = def.name, error = %e, "could not add the columns the table lacks");
                (table, Some(e))
            }
        },
    };
    let have = table.metadata().current_schema();
    let shape = |s: &iceberg::spec::Schema| {
        s.as_struct()
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.field_type.to_string(), f.required))
            .collect::<Vec<_>>()
    };
    let differs = (shape(have) != shape(&want)).then(|| {
        let (have, want) = (shape(have), shape(&want));
        let extra: Vec<&str> = have.iter().filter(|c| !want.contains(c)).map(|c| c.0.as_str()).collect();
        let missing: Vec<&str> = want.iter().filter(|c| !have.contains(c)).map(|c| c.0.as_str()).collect();
        format!(
            "the table's schema differs from poslake's definition (columns not poslake's or changed: {extra:?}; \
             poslake's missing or changed: {missing:?}): {}, so poslake reads the table but does not write to it",
            match not_added {
                Some(e) => format!("adding the columns poslake's definition appends failed: {e}"),
                None => "another engine or another poslake version changed it, and poslake only adds optional \
                         columns its definition appends"
                    .to_owned(),
            }
        )
    });
    // Columns added by this process, or by one that stopped before its empty append, are read at once.
    let table = match differs {
        None => current_snapshot_on_current_schema(catalog, &ident, table).await?,
        Some(_) => table,
    };
    Ok((table, differs))
}

/// The columns poslake's definition has after all of the table's, when the table's are the definition's first ones
/// unchanged and those after are optional and of a primitive type: a table an earlier poslake made, before columns
/// were added to its definition. Empty otherwise (the same columns, or a difference that is not such an addition).
fn appended_columns(have: &iceberg::spec::Schema, want: &iceberg::spec::Schema) -> Vec<iceberg::spec::NestedFieldRef> {
    let (have, want) = (have.as_struct().fields(), want.as_struct().fields());
    let same = |a: &iceberg::spec::NestedField, b: &iceberg::spec::NestedField| {
        a.name == b.name && a.required == b.required && a.field_type.to_string() == b.field_type.to_string()
    };
    if want.len() <= have.len() || !have.iter().zip(want).all(|(h, w)| same(h, w)) {
        return Vec::new();
    }
    let added = &want[have.len()..];
    match added.iter().all(|f| !f.required && f.field_type.is_primitive()) {
        true => added.to_vec(),
        false => Vec::new(),
    }
}

/// Adds `added` to the table's schema, after its columns (Iceberg gives them fresh ids; rows written before read
/// them as null), and returns the table as the catalog then holds it. Another process that adds them first is as
/// good: the commit that loses is refused by its schema-id requirement, and the table is read again.
async fn add_columns(
    catalog: &SqlCatalog,
    ident: &TableIdent,
    table: &Table,
    added: &[iceberg::spec::NestedFieldRef],
    db: &CatalogDb,
) -> Result<Table, LakeError> {
    use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
    let names: Vec<&str> = added.iter().map(|f| f.name.as_str()).collect();
    let tx = Transaction::new(table);
    let action = added
        .iter()
        .fold(tx.update_schema(), |a, f| a.add_column(AddColumn::optional(&f.name, (*f.field_type).clone())));
    let committed = action.apply(tx)?.commit(catalog).await;
    // Read back from the catalog's row, whatever the commit said: iceberg-catalog-sql may report a commit the
    // database refused as made (see `catalog_row`).
    let now = catalog.load_table(ident).await?;
    let holds_all = names.iter().all(|n| now.metadata().current_schema().field_by_name(n).is_some());
    let now = match (committed, holds_all) {
        (Ok(_), true) => {
            tracing::info!(
                table = %ident.name(),
                columns = ?names,
                "added columns that this poslake's definition of the table has and the lake's lacked (the lake was \
                 written by an earlier poslake); rows written before read them as null"
            );
            now
        }
        // Another process added them first.
        (Err(_), true) => now,
        (Err(e), false) => return Err(e.into()),
        (Ok(_), false) => {
            return Err(LakeError::Unrecorded { table: ident.name().to_owned(), catalog: db.describe() });
        }
    };
    Ok(now)
}

/// iceberg-rust 0.10 scans a table with the schema of its current snapshot, not its current schema: after columns
/// are added, a query naming them failed, and one over a column dropped and added again read the old values, until
/// the table's next commit. An empty append (a snapshot with no files, whose summary says why) makes a snapshot of
/// the current schema at once. Not needed for a table without snapshots (nothing to read) nor, the usual case, one
/// whose current snapshot has the current schema; harmless if another process makes one too; a failure leaves the
/// table as it is, to be put right by its next commit or the next open.
async fn current_snapshot_on_current_schema(
    catalog: &SqlCatalog,
    ident: &TableIdent,
    table: Table,
) -> Result<Table, LakeError> {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    let meta = table.metadata();
    let stale = meta.current_snapshot().is_some_and(|s| s.schema_id() != Some(meta.current_schema_id()));
    if !stale {
        return Ok(table);
    }
    let tx = Transaction::new(&table);
    let properties = HashMap::from([("poslake.schema-update".to_owned(), "columns added".to_owned())]);
    let action = tx.fast_append().set_snapshot_properties(properties);
    if let Err(e) = action.apply(tx)?.commit(catalog).await {
        tracing::warn!(
            table = %ident.name(),
            error = %e,
            "queries keep reading the columns as they were until the table's next commit"
        );
    }
    Ok(catalog.load_table(ident).await?)
}

type DataWriter = DataFileWriter<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// Partitions (business dates) with an open data file per table at most; more are closed coldest first.
const MAX_OPEN_PARTITIONS: usize = 3;

/// Bytes per Parquet row group at most: each open writer buffers one row group in memory.
const ROW_GROUP_BYTES: usize = 8 << 20;

/// Rows per Parquet row group, which a writer buffers in memory: bronze rows are large (every value of a
/// transaction), silver rows small.
fn row_group_rows(def: &TableDef) -> usize {
    if def.name == "bronze_transaction" { 4096 } else { 65536 }
}

/// One table's open data files, one writer per partition, until the next commit.
struct TableWriter {
    builder: DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>,
    spec: iceberg::spec::PartitionSpec,
    schema: iceberg::spec::SchemaRef,
    open: std::collections::BTreeMap<Option<chrono::NaiveDate>, DataWriter>,
    /// Partitions in the order they were last written to (least recent first), to close the coldest.
    recent: Vec<Option<chrono::NaiveDate>>,
    /// Data files already closed (to bound memory), waiting for the commit.
    closed: Vec<iceberg::spec::DataFile>,
    rows: u64,
}

impl TableWriter {
    /// Writes one table's batches, one data file per business date; hands itself back with the outcome so that
    /// it can run on a task of its own.
    async fn write(mut self, batches: Vec<(Option<chrono::NaiveDate>, RecordBatch)>) -> (Self, Result<(), LakeError>) {
        let result = self.write_batches(batches).await;
        (self, result)
    }

    async fn write_batches(&mut self, batches: Vec<(Option<chrono::NaiveDate>, RecordBatch)>) -> Result<(), LakeError> {
        for (date, batch) in batches {
            self.rows += batch.num_rows() as u64;
            if !self.open.contains_key(&date) && self.open.len() >= MAX_OPEN_PARTITIONS {
                // Each open writer buffers a row group: close the coldest partition's file (it joins the next
                // commit) so that memory does not grow with the number of business dates in flight.
                let coldest = self.recent.remove(0);
                if let Some(mut w) = self.open.remove(&coldest) {
                    self.closed.extend(w.close().await?);
                }
            }
            self.recent.retain(|d| *d != date);
            self.recent.push(date);
            if !self.open.contains_key(&date) {
                let key = match date {
                    Some(date) if !self.spec.is_unpartitioned() => {
                        let days = (date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days();
                        let data = Struct::from_iter([Some(Literal::date(days as i32))]);
                        Some(PartitionKey::new(self.spec.clone(), self.schema.clone(), data))
                    }
                    _ => None,
                };
                self.open.insert(date, self.builder.build(key).await?);
            }
            if let Some(w) = self.open.get_mut(&date) {
                w.write(batch).await?;
            }
        }
        Ok(())
    }
}

/// Writes rows into Parquet data files that stay open across batches (so files are large however small the
/// batches), and commits them all at once. Nothing written is visible until [`LakeWriter::commit`]; dropping the
/// writer abandons uncommitted files (they stay orphaned on disk, never referenced by a snapshot).
pub struct LakeWriter {
    warehouse: Arc<Warehouse>,
    /// Indexed like [`TABLES`].
    tables: Vec<Option<TableWriter>>,
}

impl LakeWriter {
    pub fn new(warehouse: Arc<Warehouse>) -> Self {
        LakeWriter { warehouse, tables: TABLES.iter().map(|_| None).collect() }
    }

    /// Rows written since the last commit.
    pub fn pending_rows(&self) -> u64 {
        self.tables.iter().flatten().map(|t| t.rows).sum()
    }

    pub async fn write(&mut self, rows: Rows) -> Result<(), LakeError> {
        // Each table encodes on a task of its own: Parquet encoding is most of a write's CPU and the tables are
        // independent, so a batch's write uses every core instead of one, and the pipeline behind it waits less.
        // Tables are opened first, so that a failure to open one leaves no task of another running.
        let mut work = Vec::new();
        for (i, (def, batches)) in rows.finish()?.into_iter().enumerate() {
            if batches.is_empty() {
                continue;
            }
            if self.tables[i].is_none() {
                let warehouse = self.warehouse.clone();
                self.tables[i] = Some(open_table(&warehouse, def).await?);
            }
            work.push((i, def.name, batches));
        }
        let mut tasks = Vec::new();
        for (i, table, batches) in work {
            if let Some(tw) = self.tables[i].take() {
                tasks.push((i, table, tokio::spawn(tw.write(batches))));
            }
        }
        let mut result = Ok(());
        for (i, table, task) in tasks {
            match task.await {
                Ok((tw, written)) => {
                    self.tables[i] = Some(tw);
                    if let Err(e) = written {
                        result = result.and(Err(e.in_table(table)));
                    }
                }
                // A panic stays a panic, for the supervisor to see, as if the write had run on this task.
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(_) => result = result.and(Err(LakeError::Cancelled { table })),
            }
        }
        result
    }

    /// Closes every open data file and commits each table that has any with a fast append carrying `properties`
    /// in its snapshot summary, in [`TABLES`] order (the ledger last). Not atomic across tables: the ingest goes
    /// through [`LakeWriter::prepare`] and the commit log instead.
    pub async fn commit(&mut self, properties: &HashMap<String, String>) -> Result<Vec<Commit>, LakeError> {
        let tables = self.prepare().await?;
        let id = properties.get(super::commit_log::COMMIT_PROPERTY).cloned().unwrap_or_default();
        let commit = super::commit_log::PreparedCommit { id, properties: properties.clone(), tables, counts: None };
        self.warehouse.apply(commit).await
    }

    /// Closes every open data file and hands them over, per table in [`TABLES`] order, ready to commit.
    pub async fn prepare(&mut self) -> Result<Vec<super::commit_log::PreparedTable>, LakeError> {
        let mut out = Vec::new();
        for (i, def) in TABLES.iter().enumerate() {
            let Some(mut tw) = self.tables[i].take() else { continue };
            let mut files = std::mem::take(&mut tw.closed);
            for (_, mut w) in std::mem::take(&mut tw.open) {
                files.extend(w.close().await.map_err(|e| LakeError::from(e).in_table(def.name))?);
            }
            if !files.is_empty() {
                out.push(super::commit_log::PreparedTable { table: def.name, files, rows: tw.rows });
            }
        }
        Ok(out)
    }
}

/// Opens writers for one table (a free function: the writer itself is not `Sync`, so no `&LakeWriter` may be held
/// across an await).
async fn open_table(warehouse: &Warehouse, def: &TableDef) -> Result<TableWriter, LakeError> {
    if let Some((_, reason)) = warehouse.unwritable.iter().find(|(t, _)| *t == def.name) {
        return Err(LakeError::Schema { table: def.name, reason: reason.clone() });
    }
    {
        let table = warehouse.load(def.name).await?;
        let meta = table.metadata();
        let schema = meta.current_schema().clone();
        let spec = meta.default_partition_spec().as_ref().clone();
        // Rows are split into files by business date alone (`TableWriter::write_batches`): a table another engine
        // has repartitioned is refused here, as a changed schema is at open, rather than written with partition
        // values of the wrong shape (iceberg-rust then panics on every write).
        let columns = |fields: Vec<(i32, String)>| {
            fields
                .into_iter()
                .map(|(source, transform)| {
                    let name = schema.field_by_id(source).map_or_else(|| format!("#{source}"), |f| f.name.clone());
                    format!("{transform}({name})")
                })
                .collect::<Vec<_>>()
        };
        let have = columns(spec.fields().iter().map(|f| (f.source_id, f.transform.to_string())).collect());
        let want =
            columns(def.partition_spec()?.fields().iter().map(|f| (f.source_id, f.transform.to_string())).collect());
        if have != want {
            return Err(LakeError::Schema {
                table: def.name,
                reason: format!(
                    "the table is partitioned by {have:?} (partition spec {}), not by {want:?} as poslake writes it: \
                     another engine changed its partitioning; poslake reads such a table but does not write to it",
                    spec.spec_id()
                ),
            });
        }
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(row_group_rows(def)))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES));
        for (field, entries, key, value) in map_columns(&schema_to_arrow_schema(&schema)?) {
            // Bronze maps hold every value of a transaction: min/max bounds of `key_value.value` prune nothing and
            // cost a string comparison per value, and its values are too varied for a dictionary to pay (it fills
            // and falls back to plain encoding after hashing each one). Keys repeat: they keep their dictionary.
            let key_path = ColumnPath::new(vec![field.clone(), entries.clone(), key]);
            let value_path = ColumnPath::new(vec![field, entries, value]);
            props = props
                .set_column_statistics_enabled(key_path, EnabledStatistics::None)
                .set_column_statistics_enabled(value_path.clone(), EnabledStatistics::None)
                .set_column_dictionary_enabled(value_path, false);
        }
        let props = props.build();
        let names = DefaultFileNameGenerator::new(uuid::Uuid::new_v4().to_string(), None, DataFileFormat::Parquet);
        let rolling = RollingFileWriterBuilder::new(
            // Columns matched to the schema by name, not by the field id in each Arrow field's metadata: Iceberg's
            // NaN count walks the schema for every batch written, and an id costs a hashed metadata lookup and a
            // parse per column compared. The batches are built from this schema, so names and ids agree.
            ParquetWriterBuilder::new_with_match_mode(props, schema.clone(), FieldMatchMode::Name),
            warehouse.target_file_bytes,
            table.file_io().clone(),
            DefaultLocationGenerator::new(meta)?,
            names,
        );
        Ok(TableWriter {
            builder: DataFileWriterBuilder::new(rolling),
            spec,
            schema,
            open: Default::default(),
            recent: Vec::new(),
            closed: Vec::new(),
            rows: 0,
        })
    }
}

/// The Parquet column names of each string map column: (field, entries, key, value).
fn map_columns(schema: &arrow_schema::Schema) -> Vec<(String, String, String, String)> {
    schema
        .fields()
        .iter()
        .filter_map(|f| match f.data_type() {
            arrow_schema::DataType::Map(entries, _) => match entries.data_type() {
                arrow_schema::DataType::Struct(kv) if kv.len() == 2 => {
                    Some((f.name().clone(), entries.name().clone(), kv[0].name().clone(), kv[1].name().clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_url_is_named_without_its_password() {
        let root = Path::new("/lake");
        let pg = CatalogDb::new(root, Some("postgres://poslake:s3cret@db:5432/lake")).expect("postgres");
        assert_eq!(pg.uri(), "postgres://poslake:s3cret@db:5432/lake");
        assert_eq!(pg.describe(), "postgres://poslake:***@db:5432/lake");
        let err = CatalogDb::new(root, Some("mysql://root:s3cret@db/lake")).expect_err("not PostgreSQL").to_string();
        assert!(err.contains("not a PostgreSQL URL") && !err.contains("s3cret"), "{err}");
        let query =
            CatalogDb::new(root, Some("postgres://db/lake?user=p&password=s3cret&sslmode=require")).expect("pg");
        assert_eq!(query.describe(), "postgres://db/lake?user=p&password=***&sslmode=require");
        let broken = CatalogDb::new(root, Some("postgres://p:s3cret@db:notaport/lake")).expect("pg");
        assert!(!broken.describe().contains("s3cret"), "{}", broken.describe());
        let sqlite = CatalogDb::new(root, None).expect("sqlite");
        assert_eq!(sqlite.uri(), "sqlite:/lake/catalog.db?mode=rwc");
    }

    /// The two ways PostgreSQL refuses one of two concurrent `CREATE TABLE IF NOT EXISTS` (both seen in tests).
    #[test]
    fn a_lost_create_race_is_told_from_other_errors() {
        let prefix = "Unexpected => operation failed for hitting sqlx error, source: error returned from database: ";
        for lost in [
            "duplicate key value violates unique constraint \"pg_type_typname_nsp_index\"",
            "relation \"iceberg_tables\" already exists",
            "type \"iceberg_tables\" already exists",
        ] {
            assert!(lost_create_race(&format!("{prefix}{lost}")), "{lost}");
        }
        for other in ["password authentication failed for user \"poslake\"", "database \"lake\" does not exist"] {
            assert!(!lost_create_race(&format!("{prefix}{other}")), "{other}");
        }
    }
}
