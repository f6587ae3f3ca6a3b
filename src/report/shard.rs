//! One part of a run split across processes or machines (`--shard K/N`), and which of the
//! run's batches it owns.
//!
//! The split is by whole batches (the `--batch` prompts or rows the unsharded run evaluates
//! together), never inside one: a batch's results depend, in their last bits, on which
//! prompts share it (padding changes the shapes of the matrix products), so only a shard
//! that evaluates the unsharded run's very batches gives its bytes. Shard K of N owns the
//! batches `K*B/N .. (K+1)*B/N` of B: contiguous, in order, sizes differing by at most one;
//! with more shards than batches some own none, and their folders say so.

use crate::error::{Error, Result};
use std::ops::Range;
use std::str::FromStr;

/// Shard `index` of `count`, counted from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("--shard {s:?}: give K/N, shard K of N counted from 0 (0/4 .. 3/4)");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 {
            return Err(format!("--shard {s}: a run splits into at least 1 shard"));
        }
        if index >= count {
            return Err(format!(
                "--shard {s}: K counts from 0, so shard {index} of {count} does not exist (0/{count} .. {}/{count})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The units (prompts, rows) this shard owns out of `units` evaluated `batch` at a time.
    pub fn units(&self, units: usize, batch: usize) -> Range<usize> {
        let batches = units.div_ceil(batch);
        let first = |k: usize| (k * batches / self.count * batch).min(units);
        first(self.index)..first(self.index + 1)
    }

    /// The run.json entry of a shard: which shard, and which units it owns.
    pub fn record(&self, units: usize, batch: usize) -> serde_json::Value {
        let r = self.units(units, batch);
        serde_json::json!({
            "index": self.index,
            "count": self.count,
            "units": [r.start, r.end],
            "of": units,
        })
    }

    /// Reads a run.json `shard` entry back, checking that it is the split this version makes.
    pub fn from_record(v: &serde_json::Value, batch: usize) -> Result<(Shard, Range<usize>)> {
        let field = |k: &str| v[k].as_u64().map(|x| x as usize);
        let (Some(index), Some(count), Some(of)) = (field("index"), field("count"), field("of"))
        else {
            return Err(Error::input(format!("not a shard record: {v}")));
        };
        if count == 0 || index >= count || batch == 0 {
            return Err(Error::input(format!("not a shard record: {v}")));
        }
        let shard = Shard { index, count };
        let units = shard.units(of, batch);
        if v["units"] != serde_json::json!([units.start, units.end]) {
            return Err(Error::input(format!(
                "shard {shard} records the units {} where this version gives {units:?}: it was \
                 split by another version",
                v["units"]
            )));
        }
        Ok((shard, units))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(units: usize, batch: usize, count: usize) -> Vec<Range<usize>> {
        (0..count)
            .map(|index| Shard { index, count }.units(units, batch))
            .collect()
    }

    #[test]
    fn shards_cover_the_batches_once_in_order() {
        // 30 units in 8 batches of 4 (the last holds 2), 3 shards: 2, 3 and 3 batches
        assert_eq!(parts(30, 4, 3), [0..8, 8..20, 20..30]);
        // more shards than batches: some own nothing
        assert_eq!(parts(5, 4, 3), [0..0, 0..4, 4..5]);
        for (units, batch, count) in [(1, 1, 1), (100, 7, 6), (17, 16, 4), (64, 8, 8)] {
            let p = parts(units, batch, count);
            assert_eq!(p[0].start, 0);
            assert_eq!(p[count - 1].end, units);
            for w in p.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(
                    w[0].end % batch == 0 || w[0].end == units,
                    "cut inside a batch"
                );
            }
            let sizes: Vec<usize> = p.iter().map(|r| r.len().div_ceil(batch)).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "{sizes:?}");
        }
    }

    #[test]
    fn parses_k_of_n_from_zero() {
        assert_eq!("2/4".parse(), Ok(Shard { index: 2, count: 4 }));
        let err = |s: &str| s.parse::<Shard>().unwrap_err();
        assert!(err("4/4").contains("0/4 .. 3/4"), "{}", err("4/4"));
        assert!(err("0/0").contains("at least 1"));
        assert!(err("two/4").contains("give K/N"));
        assert!(err("3").contains("give K/N"));
    }

    #[test]
    fn records_read_back() {
        let s = Shard { index: 1, count: 3 };
        let rec = s.record(30, 4);
        assert_eq!(Shard::from_record(&rec, 4).unwrap(), (s, 8..20));
        assert!(
            Shard::from_record(&rec, 5).is_err(),
            "another batch splits otherwise"
        );
    }
}
