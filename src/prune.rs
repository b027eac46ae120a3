//! Pruning by last use and total size: what `cygvm derived prune` and
//! `cygvm store prune` share.

use std::time::{Duration, SystemTime};

use anyhow::Result;

/// What a prune may remove.
#[derive(Debug, Clone, Default)]
pub struct PrunePolicy {
    /// Remove those not used for longer than this.
    pub older_than: Option<Duration>,
    /// Then remove the least recently used until the rest take at most
    /// this many bytes.
    pub max_bytes: Option<u64>,
}

impl PrunePolicy {
    /// From the command line's `--unused-for DAYS` and `--max-size`; an
    /// error when neither is given.
    pub fn from_args(unused_for_days: Option<u64>, max_bytes: Option<u64>) -> Result<Self> {
        if unused_for_days.is_none() && max_bytes.is_none() {
            anyhow::bail!("say what to prune: --unused-for DAYS, --max-size SIZE, or both");
        }
        Ok(Self {
            older_than: unused_for_days.map(|d| Duration::from_secs(d * 86400)),
            max_bytes,
        })
    }
}

/// One thing a prune may remove.
#[derive(Debug, Clone)]
pub struct Candidate<T> {
    pub item: T,
    pub last_used: SystemTime,
    pub disk_bytes: u64,
}

/// Applies `policy` to `all`, oldest use first: `remove` is called for each
/// one the policy selects and answers whether it went (false: in use, so
/// kept). Returns the removed ones.
pub fn prune<T>(
    mut all: Vec<Candidate<T>>,
    policy: &PrunePolicy,
    mut remove: impl FnMut(&T) -> Result<bool>,
) -> Result<Vec<Candidate<T>>> {
    all.sort_by_key(|c| c.last_used);
    let now = SystemTime::now();
    let mut total: u64 = all.iter().map(|c| c.disk_bytes).sum();
    let mut removed = Vec::new();
    for c in all {
        let too_old = policy
            .older_than
            .is_some_and(|limit| now.duration_since(c.last_used).is_ok_and(|age| age > limit));
        let too_big = policy.max_bytes.is_some_and(|max| total > max);
        if !(too_old || too_big) {
            continue;
        }
        if remove(&c.item)? {
            total -= c.disk_bytes;
            removed.push(c);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aged(name: &'static str, days_ago: u64, bytes: u64) -> Candidate<&'static str> {
        Candidate {
            item: name,
            last_used: SystemTime::now() - Duration::from_secs(days_ago * 86400),
            disk_bytes: bytes,
        }
    }

    #[test]
    fn old_ones_go_then_the_least_recently_used_beyond_the_size_and_held_ones_stay() {
        let all = vec![
            aged("new", 0, 10),
            aged("old", 30, 10),
            aged("held", 40, 10),
            aged("middle", 5, 10),
        ];
        let policy = PrunePolicy {
            older_than: Some(Duration::from_secs(14 * 86400)),
            max_bytes: Some(25),
        };
        let removed = prune(all, &policy, |name| Ok(*name != "held")).unwrap();
        let names: Vec<_> = removed.iter().map(|c| c.item).collect();
        assert_eq!(names, ["old", "middle"]);
    }

    #[test]
    fn a_prune_without_a_limit_is_refused() {
        let e = PrunePolicy::from_args(None, None).unwrap_err().to_string();
        assert!(e.contains("--unused-for DAYS, --max-size SIZE"), "{e}");
    }
}
