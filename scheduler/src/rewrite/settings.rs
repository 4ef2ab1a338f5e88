//! The planner settings LakeLink changes from DataFusion's and Ballista's
//! defaults (join strategies, string types), with the operator's `--set`.

use ballista_core::extension::SessionConfigExt;
use datafusion::prelude::SessionConfig;

use crate::SchedulerError;
use crate::catalog;
use crate::query::{CATALOG, SCHEMA};

/// Settings LakeLink plans with instead of DataFusion's or Ballista's
/// defaults; an operator's `--set` of the same key wins, except that
/// [`catalog::FORCE_VIEW_TYPES`] cannot be turned on (see [`planning_config`]).
///
/// * [`catalog::FORCE_VIEW_TYPES`] off: Parquet strings are read as plain
///   `Utf8`, not views whose shared page buffers would travel with every
///   shuffled batch and Flight message (see `catalog::without_view_types`).
/// * `ballista.optimizer.broadcast_join_threshold_rows` (Ballista: 1M): a join
///   side estimated under 20M rows, and still under the 128 MiB byte threshold,
///   is broadcast to every task instead of shuffling both sides. At TPC-H SF 10
///   this changes the plans of Q3, Q12 and Q18 only; in Q3 the 32M `lineitem`
///   rows on the other side no longer go through a shuffle (3.85 s to 1.96 s,
///   measured interleaved with Ballista's value by `benches/ab_settings.sh`,
///   results in `benches/results/broadcast-rows-sf10.txt`).
/// * `ballista.optimizer.hash_join_max_build_partition_bytes` (Ballista: 64
///   MiB): a shuffled join whose build side holds more than this in one
///   partition runs as a sort-merge join (sorting both sides) instead of a
///   hash join. At 64 MiB, TPC-H SF 10 Q7, Q9 (twice) and Q18 sorted `orders`
///   or `lineitem` partitions of 90-435 MiB; at 1 GiB they hash, as
///   single-process DataFusion does (Q9 9.78 s to 7.21 s, Q7 5.19 s to 5.00 s,
///   Q18 17.0 s to 16.7 s, interleaved by `benches/ab_settings.sh`,
///   `benches/results/hash-join-build-sf10.txt`). A hash join's build side
///   cannot spill, so an executor needs memory for its largest one: the limit
///   keeps that bounded.
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    (catalog::FORCE_VIEW_TYPES, "false"),
    (ballista_core::config::BALLISTA_BROADCAST_JOIN_THRESHOLD_ROWS, "20000000"),
    (ballista_core::config::BALLISTA_HASH_JOIN_MAX_BUILD_PARTITION_BYTES, "1073741824"),
];

/// The configuration every query is planned with: LakeLink's
/// [`DEFAULT_SETTINGS`], then the operator's `settings` (`--set`) in order.
/// Turning [`catalog::FORCE_VIEW_TYPES`] back on is refused: the lake catalog
/// fixes every table's string columns as plain `Utf8` when it opens them, so
/// the setting could not take effect.
pub(crate) fn planning_config(settings: &[(String, String)]) -> Result<SessionConfig, SchedulerError> {
    let mut config = SessionConfig::new_with_ballista()
        .with_information_schema(true)
        .with_default_catalog_and_schema(CATALOG, SCHEMA);
    for (key, value) in DEFAULT_SETTINGS {
        config.options_mut().set(key, value).map_err(|e| SchedulerError::Config(format!("{key}={value}: {e}")))?;
    }
    for (key, value) in settings {
        if !(key.starts_with("datafusion.") || key.starts_with("ballista.")) {
            return Err(SchedulerError::Config(format!(
                "--set {key}={value}: only datafusion.* and ballista.* settings can be set this way"
            )));
        }
        config
            .options_mut()
            .set(key, value)
            .map_err(|e| SchedulerError::Config(format!("--set {key}={value}: {e}")))?;
    }
    if config.options().execution.parquet.schema_force_view_types {
        return Err(SchedulerError::Config(format!(
            "--set {}=true: lake tables are always read with plain Utf8 strings (view-typed strings would carry \
             their shared Parquet page buffers into every shuffle file and Flight message), so this setting cannot \
             be turned on",
            catalog::FORCE_VIEW_TYPES
        )));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use ballista_core::config::{BALLISTA_BROADCAST_JOIN_THRESHOLD_ROWS, BallistaConfig};

    use super::planning_config;

    fn broadcast_rows(settings: &[(String, String)]) -> usize {
        let config = planning_config(settings).unwrap();
        config.options().extensions.get::<BallistaConfig>().unwrap().broadcast_join_threshold_rows()
    }

    #[test]
    fn lakelink_defaults_apply_and_the_operator_overrides_them() {
        assert!(!planning_config(&[]).unwrap().options().execution.parquet.schema_force_view_types);
        assert_eq!(broadcast_rows(&[]), 20_000_000);
        let config = planning_config(&[]).unwrap();
        let ballista = config.options().extensions.get::<BallistaConfig>().unwrap();
        assert_eq!(ballista.hash_join_max_build_partition_bytes(), 1 << 30);
        let operator = [(BALLISTA_BROADCAST_JOIN_THRESHOLD_ROWS.to_string(), "1000000".to_string())];
        assert_eq!(broadcast_rows(&operator), 1_000_000);
    }

    #[test]
    fn view_typed_strings_cannot_be_turned_on() {
        let operator = [(crate::catalog::FORCE_VIEW_TYPES.to_string(), "true".to_string())];
        let err = planning_config(&operator).unwrap_err().to_string();
        assert!(err.contains("schema_force_view_types=true") && err.contains("plain Utf8"), "{err}");
        let off = [(crate::catalog::FORCE_VIEW_TYPES.to_string(), "false".to_string())];
        assert!(planning_config(&off).is_ok());
    }
}
