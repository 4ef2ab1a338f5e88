//! The answer cache on disk: one small file per answer, named by the
//! sha256 of model, function, prompt version, arguments and input. A read
//! marks its file used (its modification time); once the folder holds more
//! than `cache_max_bytes`, the files used least recently are removed until
//! it holds 90% of that. Each process looks after every tenth of the cap it
//! writes, in a thread of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One cached answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// A generative answer, already parsed; `None` is a valid "no value".
    Text(Option<String>),
    /// An embedding.
    Vector(Vec<f32>),
}

/// The cache key of one input: a hex sha256 over its parts.
pub fn key(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// A folder of cached answers.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// How stale a file's use mark may grow before a read renews it.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Bytes each process wrote to each cache folder since it last looked at
/// the folder's size, and whether a sweep of it runs now.
fn written() -> &'static Mutex<HashMap<PathBuf, (u64, bool)>> {
    static WRITTEN: OnceLock<Mutex<HashMap<PathBuf, (u64, bool)>>> = OnceLock::new();
    WRITTEN.get_or_init(Default::default)
}

impl DiskCache {
    /// The cache in `dir` (created on first write), holding at most
    /// `max_bytes` (0: no cap).
    pub fn new(dir: impl AsRef<Path>, max_bytes: u64) -> Self {
        Self { dir: dir.as_ref().to_path_buf(), max_bytes }
    }

    /// The cache the settings `options` name.
    pub fn for_options(options: &crate::LlmOptions) -> Self {
        Self::new(&options.cache_dir, options.cache_max_bytes)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(&key[2..])
    }

    /// The cached answer for `key`; unreadable entries count as missing.
    pub fn get(&self, key: &str) -> Option<Answer> {
        use std::io::Read;
        let path = self.path(key);
        let mut file = std::fs::File::open(&path).ok()?;
        let mut bytes = vec![];
        file.read_to_end(&mut bytes).ok()?;
        let answer = serde_json::from_slice(&bytes).ok()?;
        // Used now: the last to be removed. Marked at most every
        // TOUCH_EVERY, so a hot answer costs no write on every read.
        let stale = |f: &std::fs::File| {
            f.metadata().and_then(|m| m.modified()).map_or(true, |at| at.elapsed().unwrap_or_default() > TOUCH_EVERY)
        };
        if self.max_bytes > 0 && stale(&file) {
            let _ = std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        }
        Some(answer)
    }

    /// Stores an answer; failures are logged, never fatal (the cache is an optimisation).
    pub fn put(&self, key: &str, answer: &Answer) {
        let path = self.path(key);
        let write = || -> std::io::Result<u64> {
            let parent = path.parent().expect("cache paths have a parent");
            std::fs::create_dir_all(parent)?;
            let tmp = parent.join(format!(".{}.{}", &key[2..], std::process::id()));
            let bytes = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &path)?;
            Ok(bytes.len() as u64)
        };
        match write() {
            Ok(bytes) => self.account(bytes),
            Err(e) => tracing::warn!("cannot write the model answer cache in {}: {e}", self.dir.display()),
        }
    }

    /// Counts `bytes` written; every tenth of the cap (and at a process's
    /// first write), sweeps the folder in a thread of its own.
    fn account(&self, bytes: u64) {
        if self.max_bytes == 0 {
            return;
        }
        {
            let mut written = written().lock().unwrap_or_else(|e| e.into_inner());
            // A process's first write looks at the folder at once.
            let (count, sweeping) = written.entry(self.dir.clone()).or_insert((self.max_bytes / 10, false));
            *count = count.saturating_add(bytes);
            if *sweeping || *count < self.max_bytes / 10 {
                return;
            }
            *count = 0;
            *sweeping = true;
        }
        let (dir, max) = (self.dir.clone(), self.max_bytes);
        let spawned = std::thread::Builder::new().name("lakelink-cache-sweep".into()).spawn(move || {
            let removed = sweep(&dir, max);
            if removed > 0 {
                tracing::info!(
                    "the answer cache in {} passed its cap: {removed} least recently used answers removed",
                    dir.display()
                );
            }
            if let Some(entry) = written().lock().unwrap_or_else(|e| e.into_inner()).get_mut(&dir) {
                entry.1 = false;
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot sweep the answer cache: {e}");
        }
    }
}

/// Removes the files of `dir` used least recently until it holds at most
/// 90% of `max_bytes`, if it holds more than `max_bytes`; how many.
pub fn sweep(dir: &Path, max_bytes: u64) -> usize {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = vec![];
    let Ok(shards) = std::fs::read_dir(dir) else { return 0 };
    for shard in shards.flatten() {
        let Ok(entries) = std::fs::read_dir(shard.path()) else { continue };
        for entry in entries.flatten() {
            if let Ok(meta) = entry.metadata()
                && meta.is_file()
            {
                files.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), entry.path()));
            }
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    if total <= max_bytes {
        return 0;
    }
    files.sort();
    let target = max_bytes / 10 * 9;
    let mut removed = 0;
    for (_, len, path) in files {
        if total <= target {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_parts_and_answers_round_trip() {
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), 0);
        let k = key(&["m", "f", "x"]);
        assert_eq!(cache.get(&k), None);
        cache.put(&k, &Answer::Vector(vec![0.5, -1.0]));
        assert_eq!(cache.get(&k), Some(Answer::Vector(vec![0.5, -1.0])));
        cache.put(&k, &Answer::Text(None));
        assert_eq!(cache.get(&k), Some(Answer::Text(None)));
    }

    #[test]
    fn past_its_cap_the_least_recently_used_answers_go() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), 0);
        let keys: Vec<String> = (0..20).map(|i| key(&["m", &i.to_string()])).collect();
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        for (i, k) in keys.iter().enumerate() {
            cache.put(k, &Answer::Text(Some("x".repeat(90))));
            // Written in order, an hour ago, a second apart.
            let at = old + std::time::Duration::from_secs(i as u64);
            std::fs::File::options().write(true).open(cache.path(k)).unwrap().set_modified(at).unwrap();
        }
        let each = std::fs::metadata(cache.path(&keys[0])).unwrap().len();
        // The oldest answer is read now: it is kept.
        let capped = DiskCache::new(dir.path(), 10 * each);
        assert!(capped.get(&keys[0]).is_some());
        assert_eq!(sweep(dir.path(), 10 * each), 11, "down to 90% of the cap");
        assert!(capped.get(&keys[0]).is_some(), "used recently");
        assert!(capped.get(&keys[1]).is_none(), "used least recently");
        assert!(capped.get(&keys[19]).is_some(), "written last");
        assert_eq!(sweep(dir.path(), 10 * each), 0, "under the cap: nothing to do");
    }
}
