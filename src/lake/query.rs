//! SQL over the lake with DataFusion: the Iceberg catalog is registered as the default catalog and schema, so
//! tables are named plainly (`SELECT … FROM sales_header h JOIN sales_line l USING (site, business_date, …)`).

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg_datafusion::IcebergCatalogProvider;

use super::LakeError;
use super::warehouse::{NAMESPACE, Warehouse};

/// The catalog name tables are registered under.
pub const CATALOG: &str = "poslake";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("query: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// A DataFusion session over the warehouse's tables.
pub async fn session(warehouse: &Warehouse) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new().with_default_catalog_and_schema(CATALOG, NAMESPACE);
    let ctx = SessionContext::new_with_config(config);
    let provider = IcebergCatalogProvider::try_new(warehouse.catalog()).await.map_err(LakeError::from)?;
    ctx.register_catalog(CATALOG, Arc::new(provider));
    Ok(ctx)
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
    let frame = ctx.sql(statement).await?;
    let schema = frame.schema().inner().clone();
    Ok((schema, frame.collect().await?))
}
