//! Merging a table's small manifests, so that each commit's manifest list stays short.
//!
//! A fast append writes one manifest and a manifest list naming every manifest of the table, so the list grows by one
//! entry per commit ever made, and each commit rewrites it whole. Java Iceberg's merge append bins small manifests
//! together; iceberg-rust 0.10 has no such action and keeps the means to add one private (`TransactionAction`,
//! `TableCommit`'s builder). So the merge is made here from its public parts: the small manifests' live entries are
//! rewritten as *existing* entries (their snapshot ids and sequence numbers kept) into one manifest, a `replace`
//! snapshot lists it beside the large manifests, and the new metadata is swapped in with the same conditional
//! `UPDATE` of the catalog row that iceberg-catalog-sql's own commit runs: it fails if any other commit landed first.
//! No data changes: every data file of the current snapshot is in exactly one manifest of the new one.
//!
//! poslake writes no delete files, but another engine may (a row deleted with Spark or PyIceberg). Data and delete
//! manifests are merged apart, as Java Iceberg does, and every entry keeps its data sequence number: a delete applies
//! to the data files whose sequence number is below its own (equality) or not above it (position), so an entry
//! re-stamped with the merge's number would bring deleted rows back.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use iceberg::MetadataLocation;
use iceberg::spec::{
    FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestFile, ManifestListWriter, ManifestWriterBuilder,
    Operation, Snapshot, Summary, TableMetadataBuilder,
};

use super::LakeError;
use super::warehouse::Warehouse;

/// Manifests smaller than this are merged by default. Java Iceberg's default is 8 MiB, but a merge rewrites the
/// growing merged manifest until it passes the target, and iceberg-rust's Avro runs at a few MB/s here: with 8 MiB the
/// maintenance cost climbed to 35 ms per commit by the 5,000th commit, with 1 MiB it stays near 10 ms
/// (`examples/commit_growth`; docs/lake.md). A list of 1 MiB manifests is still short.
pub const DEFAULT_MANIFEST_TARGET_BYTES: i64 = 1 << 20;

/// What one table's merge did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Merged {
    /// Small manifests merged into one.
    pub manifests: u64,
    /// Data files they listed.
    pub data_files: u64,
    /// Delete files they listed (another engine's: poslake writes none).
    pub delete_files: u64,
}

/// The snapshot-summary property of a merge snapshot: how many manifests it merged.
pub const MERGED_PROPERTY: &str = "poslake.merged-manifests";

impl Warehouse {
    /// Merges the table's small manifests into one if it has at least `min` of them. `None` when there was nothing
    /// to merge or another commit landed first (the next merge tries again).
    pub async fn merge_manifests(&self, table: &str, min: usize) -> Result<Option<Merged>, LakeError> {
        let loaded = self.load(table).await?;
        let meta = loaded.metadata();
        let (Some(current), Some(location)) = (meta.current_snapshot(), loaded.metadata_location()) else {
            return Ok(None);
        };
        // The merged manifests are written as format version 2, poslake's own; a table another engine upgraded is
        // left as it is (version 3 manifests carry row lineage this merge would have to keep).
        if meta.format_version() != FormatVersion::V2 {
            tracing::debug!(table, version = ?meta.format_version(), "not merging manifests: not a version 2 table");
            return Ok(None);
        }
        let io = loaded.file_io();
        let list = loaded.manifest_list_reader(current).load().await?;
        let (small, mut kept): (Vec<&ManifestFile>, Vec<&ManifestFile>) =
            list.entries().iter().partition(|m| m.manifest_length < self.manifest_target_bytes());
        // A manifest's entries carry partition values of the spec it was written under: small manifests are merged
        // with those of their own spec and content only, each group under that spec. (One merged manifest under the
        // table's default spec read the partition values of an older spec as the new spec's, once another engine had
        // evolved the table's partitioning: filtered scans then missed rows.)
        let mut by_spec: BTreeMap<(bool, i32), Vec<&ManifestFile>> = BTreeMap::new();
        for m in small {
            by_spec.entry((m.content == ManifestContentType::Deletes, m.partition_spec_id)).or_default().push(m);
        }
        by_spec.retain(|_, group| {
            if group.len() < 2 {
                kept.append(group);
            }
            group.len() >= 2
        });
        let mergeable: usize = by_spec.values().map(Vec::len).sum();
        if mergeable < min.max(2) {
            return Ok(None);
        }

        let snapshot_id = new_snapshot_id(meta);
        let sequence = meta.next_sequence_number();
        let commit = uuid::Uuid::new_v4();
        let mut report = Merged { manifests: mergeable as u64, ..Merged::default() };
        let mut written = Vec::new();
        let mut merged_manifests = Vec::new();
        for (i, ((deletes, spec_id), group)) in by_spec.iter().enumerate() {
            let spec = meta.partition_spec_by_id(*spec_id).ok_or_else(|| LakeError::Schema {
                table: "manifests",
                reason: format!("{table}: a manifest names partition spec {spec_id}, which the table does not have"),
            })?;
            let manifest_path = format!("{}/metadata/{commit}-m{i}.avro", meta.location());
            let builder = ManifestWriterBuilder::new(
                io.new_output(&manifest_path)?,
                Some(snapshot_id),
                meta.current_schema().clone(),
                spec.as_ref().clone(),
            );
            let mut writer = if *deletes { builder.build_v2_deletes() } else { builder.build_v2_data() };
            written.push(manifest_path);
            for manifest in group {
                for entry in manifest.load_manifest(io).await?.entries() {
                    if !entry.is_alive() {
                        continue;
                    }
                    // Loading fills in inherited sequence numbers; an entry without one cannot be carried over
                    // exactly.
                    let (Some(snapshot), Some(seq)) = (entry.snapshot_id(), entry.sequence_number()) else {
                        return Err(LakeError::Schema {
                            table: "manifests",
                            reason: format!(
                                "{table}: an entry of {} has no snapshot or sequence",
                                manifest.manifest_path
                            ),
                        });
                    };
                    writer.add_existing_file(entry.data_file().clone(), snapshot, seq, entry.file_sequence_number)?;
                    if *deletes {
                        report.delete_files += 1;
                    } else {
                        report.data_files += 1;
                    }
                }
            }
            merged_manifests.push(writer.write_manifest_file().await?);
        }

        let list_path = format!("{}/metadata/snap-{snapshot_id}-0-{commit}.avro", meta.location());
        let mut lists = ManifestListWriter::v2(
            io.new_output(&list_path)?.writer().await?,
            snapshot_id,
            Some(current.snapshot_id()),
            sequence,
        );
        lists.add_manifests(kept.into_iter().cloned().chain(merged_manifests))?;
        lists.close().await?;

        // The totals stay those of the current snapshot: no data was added or removed.
        let mut properties: HashMap<String, String> = current
            .summary()
            .additional_properties
            .iter()
            .filter(|(k, _)| k.starts_with("total-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        properties.insert(MERGED_PROPERTY.to_owned(), report.manifests.to_string());
        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(Some(current.snapshot_id()))
            .with_sequence_number(sequence)
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
            .with_manifest_list(list_path.clone())
            .with_summary(Summary { operation: Operation::Replace, additional_properties: properties })
            .with_schema_id(meta.current_schema_id())
            .build();
        let built = TableMetadataBuilder::new_from_metadata(meta.clone(), Some(location.to_owned()))
            .set_branch_snapshot(snapshot, MAIN_BRANCH)?
            .build()?;
        let next = MetadataLocation::from_str(location)?.with_next_version();
        built.metadata.write_to(io, &next).await?;
        // A kill here leaves three files nothing references; the next merge writes its own.
        crate::failpoint::hit("merge");
        if self.swap_metadata(table, location, &next.to_string()).await? {
            Ok(Some(report))
        } else {
            // Another commit landed first: nothing of this merge is referenced.
            for path in [next.to_string(), list_path].into_iter().chain(written) {
                let _ = io.delete(&path).await;
            }
            Ok(None)
        }
    }
}

/// A positive snapshot id the table does not have yet (iceberg-rust draws them the same way).
fn new_snapshot_id(meta: &iceberg::spec::TableMetadata) -> i64 {
    loop {
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) & (i64::MAX as u64)) as i64;
        if id != 0 && meta.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}
