//! The answer cache on disk: one small file per answer, named by the
//! sha256 of model, function, prompt version, arguments and input.

use std::path::{Path, PathBuf};

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
}

impl DiskCache {
    /// The cache in `dir` (created on first write).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self { dir: dir.as_ref().to_path_buf() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(&key[2..])
    }

    /// The cached answer for `key`; unreadable entries count as missing.
    pub fn get(&self, key: &str) -> Option<Answer> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores an answer; failures are logged, never fatal (the cache is an optimisation).
    pub fn put(&self, key: &str, answer: &Answer) {
        let path = self.path(key);
        let write = || -> std::io::Result<()> {
            let parent = path.parent().expect("cache paths have a parent");
            std::fs::create_dir_all(parent)?;
            let tmp = parent.join(format!(".{}.{}", &key[2..], std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec(answer).map_err(std::io::Error::other)?)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!("cannot write the model answer cache in {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_parts_and_answers_round_trip() {
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path());
        let k = key(&["m", "f", "x"]);
        assert_eq!(cache.get(&k), None);
        cache.put(&k, &Answer::Vector(vec![0.5, -1.0]));
        assert_eq!(cache.get(&k), Some(Answer::Vector(vec![0.5, -1.0])));
        cache.put(&k, &Answer::Text(None));
        assert_eq!(cache.get(&k), Some(Answer::Text(None)));
    }
}
