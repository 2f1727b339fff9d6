//! The catalog's own row for a table, read and written beside iceberg-catalog-sql.
//!
//! - A merge commits with the same conditional `UPDATE` that the crate's own commit runs ([`Warehouse::swap_metadata`]).
//! - Every other commit is read back ([`Warehouse::confirm_commit`]). iceberg-catalog-sql 0.10 runs a table commit's
//!   `UPDATE` in a transaction and drops the result of its `COMMIT` (`let _ = tx.commit()` in `SqlCatalog::execute`).
//!   A `COMMIT` the database refuses is rolled back, but `update_table` still returns the new table as committed.
//!   SQLite refuses one when another connection holds a read lock past the busy timeout, or when the journal cannot
//!   be written (a full disk). An audit saw a run report 3,006 new transactions that no table held: the run had added
//!   their keys to the dedup store and removed its commit intent, so no later run landed them.

use sqlx::{ConnectOptions, Row};

use super::LakeError;
use super::warehouse::{CATALOG_NAME, CatalogDb, NAMESPACE, Warehouse};

/// How long a statement waits for another connection's lock on a SQLite catalog.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Warehouse {
    /// Points the catalog's row for `table` at `next` if it still points at `current` (the same conditional update
    /// iceberg-catalog-sql's commit makes). Whether it did. The statement commits on its own, and a refused commit
    /// is an error here.
    pub(super) async fn swap_metadata(&self, table: &str, current: &str, next: &str) -> Result<bool, LakeError> {
        let db = self.catalog_db();
        let sql = |mark: fn(usize) -> String| {
            format!(
                "UPDATE iceberg_tables SET metadata_location = {}, previous_metadata_location = {} \
                 WHERE catalog_name = {} AND table_namespace = {} AND table_name = {} \
                 AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = {}",
                mark(1),
                mark(2),
                mark(3),
                mark(4),
                mark(5),
                mark(6)
            )
        };
        let binds = [next, current, CATALOG_NAME, NAMESPACE, table, current];
        let affected = match db {
            CatalogDb::Sqlite(path) => {
                let mut conn = sqlite_options(path).connect().await.map_err(|e| failed(db, e))?;
                let sql = sql(|_| "?".to_owned());
                let query = binds.iter().fold(sqlx::query(&sql), |q, b| q.bind(*b));
                query.execute(&mut conn).await.map_err(|e| failed(db, e))?.rows_affected()
            }
            CatalogDb::Postgres(url) => {
                let options: sqlx::postgres::PgConnectOptions = url.parse().map_err(|e| failed(db, e))?;
                let mut conn = options.connect().await.map_err(|e| failed(db, e))?;
                let sql = sql(|i| format!("${i}"));
                let query = binds.iter().fold(sqlx::query(&sql), |q, b| q.bind(*b));
                query.execute(&mut conn).await.map_err(|e| failed(db, e))?.rows_affected()
            }
        };
        Ok(affected == 1)
    }

    /// The metadata file the catalog's row for `table` names now (`None`: no such row).
    pub(super) async fn recorded_location(&self, table: &str) -> Result<Option<String>, LakeError> {
        let db = self.catalog_db();
        let sql = |mark: fn(usize) -> String| {
            format!(
                "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = {} AND table_namespace = {} \
                 AND table_name = {} AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)",
                mark(1),
                mark(2),
                mark(3)
            )
        };
        let binds = [CATALOG_NAME, NAMESPACE, table];
        let location: Option<Option<String>> = match db {
            CatalogDb::Sqlite(path) => {
                let mut conn = sqlite_options(path).connect().await.map_err(|e| failed(db, e))?;
                let sql = sql(|_| "?".to_owned());
                let query = binds.iter().fold(sqlx::query(&sql), |q, b| q.bind(*b));
                let row = query.fetch_optional(&mut conn).await.map_err(|e| failed(db, e))?;
                row.map(|r| r.try_get(0)).transpose().map_err(|e| failed(db, e))?
            }
            CatalogDb::Postgres(url) => {
                let options: sqlx::postgres::PgConnectOptions = url.parse().map_err(|e| failed(db, e))?;
                let mut conn = options.connect().await.map_err(|e| failed(db, e))?;
                let sql = sql(|i| format!("${i}"));
                let query = binds.iter().fold(sqlx::query(&sql), |q, b| q.bind(*b));
                let row = query.fetch_optional(&mut conn).await.map_err(|e| failed(db, e))?;
                row.map(|r| r.try_get(0)).transpose().map_err(|e| failed(db, e))?
            }
        };
        Ok(location.flatten())
    }

    /// Checks that the catalog recorded the commit that made `committed` (see the module's comment): its row names
    /// `committed`'s metadata file, or a later one whose metadata log lists it (another process committed on top).
    pub(super) async fn confirm_commit(&self, table: &str, committed: &iceberg::table::Table) -> Result<(), LakeError> {
        let ours = committed.metadata_location_result()?;
        let now = self.recorded_location(table).await?;
        if now.as_deref() == Some(ours) {
            return Ok(());
        }
        if now.is_some() {
            let current = self.load(table).await?;
            if current.metadata().metadata_log().iter().any(|entry| entry.metadata_file == ours) {
                return Ok(());
            }
        }
        Err(LakeError::Unrecorded { table: table.to_owned(), catalog: self.catalog_db().describe() })
    }
}

fn sqlite_options(path: &std::path::Path) -> sqlx::sqlite::SqliteConnectOptions {
    sqlx::sqlite::SqliteConnectOptions::new().filename(path).busy_timeout(BUSY_TIMEOUT)
}

fn failed(db: &CatalogDb, e: sqlx::Error) -> LakeError {
    let text = e.to_string();
    LakeError::Catalog(format!("catalog {}: {text}{}", db.describe(), super::locked_catalog_hint(&text)))
}
