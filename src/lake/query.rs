//! SQL over the lake with DataFusion: the Iceberg catalog is registered as the default catalog and schema, so
//! tables are named plainly (`SELECT … FROM sales_header h JOIN sales_line l USING (site, business_date, …)`).
//! Beside the tables, the schema holds one view, [`CURRENT_HEADER_VIEW`]: `sales_header` with the voids of
//! `sales_voids` applied, wherever the voiding record landed.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider, Session, TableProvider,
    view::ViewTable,
};
use datafusion::common::tree_node::TreeNode;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg_datafusion::IcebergCatalogProvider;

use super::LakeError;
use super::tables::SALES_HEADER;
use super::warehouse::{NAMESPACE, Warehouse};

/// `sales_header` as it stands once every void is applied: the same columns, with `voided`,
/// `excluded_from_sales` and `transaction_type` (`void` for a sale or refund) set for a ticket that a record in
/// `sales_voids` voids, even one that landed in another file or run than its post-void or rollback.
pub const CURRENT_HEADER_VIEW: &str = "sales_header_current";

/// The catalog name tables are registered under.
pub const CATALOG: &str = "poslake";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("query: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A statement that would write (DDL, DML, `SET`), refused by the session's options.
    #[error("poslake query only reads: the lake is written by the ingest's commits alone, never by SQL ({0})")]
    ReadOnly(String),
    /// A table the lake does not have, in a lake with no tables at all.
    #[error("{0} (this lake has no tables yet: nothing has been ingested into its catalog)")]
    NoTables(DataFusionError),
}

/// A DataFusion session over the warehouse's tables and the [`CURRENT_HEADER_VIEW`] view.
pub async fn session(warehouse: &Warehouse) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new().with_default_catalog_and_schema(CATALOG, NAMESPACE);
    let ctx = SessionContext::new_with_config(config);
    let provider = IcebergCatalogProvider::try_new(warehouse.catalog()).await.map_err(LakeError::from)?;
    // A catalog no ingest has written to yet (a new PostgreSQL database) has no namespace: a lake with no tables.
    let tables = provider.schema(NAMESPACE).unwrap_or_else(|| Arc::new(MemorySchemaProvider::new()));
    let schema = Arc::new(LakeSchema { tables, views: RwLock::new(HashMap::new()) });
    let catalog = MemoryCatalogProvider::new();
    catalog.register_schema(NAMESPACE, schema.clone())?;
    ctx.register_catalog(CATALOG, Arc::new(catalog));
    // The view's plan holds the tables it reads; the schema then serves it beside them. A lake whose sales_header or
    // sales_voids lacks a column the view joins on (another engine dropped it), or has no sales_voids yet, gets no
    // view, rather than no session: the tables themselves are queried as they are.
    let header_columns: Vec<String> = warehouse
        .schema_of(SALES_HEADER.name)
        .map(|schema| schema.fields().iter().map(|f| f.name().clone()).collect())
        .unwrap_or_default();
    if !schema.table_exist(SALES_HEADER.name) {
        // No sales_header (a lake no ingest has written yet): no view over it.
        return Ok(ctx);
    }
    let view_sql = current_header_sql(&header_columns);
    match ctx.sql(&view_sql).await {
        Ok(view) => {
            let view = ViewTable::new(view.into_unoptimized_plan(), Some(view_sql));
            schema.register_table(CURRENT_HEADER_VIEW.to_owned(), Arc::new(view))?;
        }
        Err(e) => tracing::warn!(
            error = %e,
            "no {CURRENT_HEADER_VIEW} view in this session: sales_voids is absent or lacks a column the view reads, or \
             sales_header lacks one it joins on (a lake an earlier poslake wrote, which the next ingest upgrades, or \
             a table another engine changed); the tables themselves are queried as they are"
        ),
    }
    Ok(ctx)
}

/// The view's query. A ticket counts as voided when a `sales_voids` row names its key; only primary records can be
/// voided that way (a rollback mirror or a post-void keeps its own flags).
/// Its columns are the table's own: a lake an earlier poslake wrote, opened to read, lacks the columns poslake
/// appends since, and its view lacks them too.
fn current_header_sql(header_columns: &[String]) -> String {
    let columns: Vec<String> = header_columns
        .iter()
        .map(|name| (name, format!("\"{}\"", name.replace('"', "\"\""))))
        .map(|(name, quoted)| match name.as_str() {
            "voided" | "excluded_from_sales" => format!("h.{quoted} OR v.voided_sequence IS NOT NULL AS {quoted}"),
            "transaction_type" => "CASE WHEN v.voided_sequence IS NOT NULL AND h.transaction_type IN ('sale', \
                                   'refund') THEN 'void' ELSE h.transaction_type END AS transaction_type"
                .to_owned(),
            _ => format!("h.{quoted}"),
        })
        .collect();
    format!(
        "SELECT {} FROM sales_header h LEFT JOIN (SELECT DISTINCT voided_site, voided_business_date, voided_register, \
         voided_sequence FROM sales_voids) v ON h.key_variant = 'primary' AND v.voided_site = h.site \
         AND v.voided_business_date = h.business_date AND (v.voided_register IS NOT DISTINCT FROM h.register) \
         AND v.voided_sequence = h.sequence",
        columns.join(", ")
    )
}

/// The lake's schema: the Iceberg tables, and views kept in memory for the session (a `CREATE VIEW` lands here
/// too, instead of being taken for a new Iceberg table).
#[derive(Debug)]
struct LakeSchema {
    tables: Arc<dyn SchemaProvider>,
    views: RwLock<HashMap<String, Arc<dyn TableProvider>>>,
}

impl LakeSchema {
    fn views(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<dyn TableProvider>>> {
        self.views.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        let mut names = self.tables.table_names();
        names.extend(self.views().keys().cloned());
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let view = self.views().get(name).cloned();
        match view {
            Some(v) => Ok(Some(v)),
            None => {
                let metadata = name.contains('$');
                let table = self.tables.table(name).await?;
                Ok(table.map(|t| Arc::new(LakeTable { inner: t, metadata }) as Arc<dyn TableProvider>))
            }
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.views().contains_key(name) || self.tables.table_exist(name)
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if self.table_exist(&name) {
            return Err(DataFusionError::Plan(format!("{name} already exists")));
        }
        let mut views = self.views.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(views.insert(name, table))
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let mut views = self.views.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(views.remove(name))
    }
}

/// Runs one SQL statement and collects its result.
pub async fn sql(warehouse: &Warehouse, statement: &str) -> Result<Vec<RecordBatch>, QueryError> {
    Ok(sql_with_schema(warehouse, statement).await?.1)
}

/// [`sql`], with the result's schema: known even when no row comes back.
pub async fn sql_with_schema(
    warehouse: &Warehouse,
    statement: &str,
) -> Result<(arrow_schema::SchemaRef, Vec<RecordBatch>), QueryError> {
    let ctx = session(warehouse).await?;
    // Queries only: no DDL, no DML (`INSERT`, `COPY … TO` a file, which could overwrite the lake's own data files),
    // no `SET`. The lake is written by the ingest's commits alone.
    let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let frame = ctx.sql_with_options(statement, read_only).await.map_err(|e| match e {
        datafusion::error::DataFusionError::Plan(m)
            if ["DDL", "DML", "Statement"].iter().any(|k| m.starts_with(&format!("{k} not supported"))) =>
        {
            QueryError::ReadOnly(m)
        }
        e if matches!(e.find_root(), DataFusionError::Plan(m) if m.contains("not found"))
            && ctx.catalog_names().iter().all(|c| no_tables(&ctx, c)) =>
        {
            QueryError::NoTables(e)
        }
        e => QueryError::DataFusion(e),
    })?;
    let schema = frame.schema().inner().clone();
    Ok((schema, frame.collect().await?))
}

/// Whether the session's catalog `name` holds no table or view (DataFusion's own `information_schema` aside).
fn no_tables(ctx: &SessionContext, name: &str) -> bool {
    ctx.catalog(name).is_none_or(|c| {
        c.schema_names()
            .iter()
            .filter(|s| *s != "information_schema")
            .all(|s| c.schema(s).is_none_or(|s| s.table_names().is_empty()))
    })
}

/// An Iceberg table as queries see it: read only (writes go through the ingest's exactly-once commits, not SQL), and
/// with no filter pushed down that casts a column. iceberg-datafusion 0.10 drops such casts when it turns a filter
/// into an Iceberg predicate (apache/iceberg-rust#3223, not merged): `CAST(sequence AS INT) > 50` fails on a string
/// column, and a narrowing cast can prune rows the SQL matches. DataFusion applies those filters itself.
/// A metadata table (`sales_header$snapshots`) is scanned whole and projected here: iceberg-datafusion's metadata
/// tables return every column whatever the projection, which DataFusion then rejects.
#[derive(Debug)]
struct LakeTable {
    inner: Arc<dyn TableProvider>,
    metadata: bool,
}

#[async_trait]
impl TableProvider for LakeTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !self.metadata {
            return self.inner.scan(state, projection, filters, limit).await;
        }
        let whole = self.inner.scan(state, None, filters, limit).await?;
        let Some(columns) = projection else { return Ok(whole) };
        let schema = whole.schema();
        let exprs = columns
            .iter()
            .map(|&i| {
                let name = schema.field(i).name().clone();
                Ok(ProjectionExpr { expr: Arc::new(Column::new(&name, i)), alias: name })
            })
            .collect::<DfResult<Vec<_>>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, whole)?))
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        let mut answers = self.inner.supports_filters_pushdown(filters)?;
        for (answer, filter) in answers.iter_mut().zip(filters) {
            if casts_a_column(filter)? {
                *answer = TableProviderFilterPushDown::Unsupported;
            }
        }
        Ok(answers)
    }
}

/// Whether `expr` casts anything but a literal.
fn casts_a_column(expr: &Expr) -> DfResult<bool> {
    expr.exists(|e| {
        Ok(match e {
            Expr::Cast(c) => !matches!(*c.expr, Expr::Literal(..)),
            Expr::TryCast(c) => !matches!(*c.expr, Expr::Literal(..)),
            _ => false,
        })
    })
}
