//! What a forward pass will do, checked before any backend runs it: the new tokens
//! (rows packed, each token with its row and absolute position), where reads and writes
//! land, and which tokens get logits. Shared by the CPU and CUDA passes so that both
//! accept the same requests and refuse bad ones with the same messages.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::request::{HiddenRow, Input, LogitsAt, Request};
use crate::shape::TokenAt;
use crate::stream::{Positions, Site, WriteOp};
use std::ops::Range;

/// The cache facts a plan depends on.
pub(crate) trait CacheShape {
    fn num_layers(&self) -> usize;
    fn len(&self, layer: usize) -> usize;
}

/// A fork may see at most what its parent holds, block by block.
pub(crate) fn check_fork<C: CacheShape>(parent: &C, lens: &[usize]) -> Result<()> {
    if lens.len() != parent.num_layers() {
        return Err(Error::input(format!(
            "fork: {} lengths given for {} blocks",
            lens.len(),
            parent.num_layers()
        )));
    }
    if let Some(l) = (0..lens.len()).find(|&l| lens[l] > parent.len(l)) {
        return Err(Error::input(format!(
            "fork: block {l} has {} cached positions, {} asked",
            parent.len(l),
            lens[l]
        )));
    }
    Ok(())
}

/// Checks hidden-state rows joining at `joins` (in pass order); returns the joins, the
/// first position and the token count of each row.
fn hidden_rows<'a>(
    c: &Config,
    joins: &[Site],
    rows: impl Iterator<Item = &'a HiddenRow>,
) -> Result<(Vec<Site>, Vec<usize>, Vec<usize>)> {
    let (mut starts, mut lens) = (Vec::new(), Vec::new());
    for (r, row) in rows.enumerate() {
        joins[r].check(c.num_layers)?;
        if r > 0 && joins[r].order(c.num_layers) < joins[r - 1].order(c.num_layers) {
            return Err(Error::input(format!(
                "row {r} joins at {}, before row {} ({}): joining rows must be in pass order",
                joins[r],
                r - 1,
                joins[r - 1]
            )));
        }
        if row.states.is_empty() || row.states.len() % c.hidden_size != 0 {
            return Err(Error::input(format!(
                "row {r}: {} state values is not a positive multiple of hidden size {}",
                row.states.len(),
                c.hidden_size
            )));
        }
        starts.push(row.start_pos);
        lens.push(row.states.len() / c.hidden_size);
    }
    Ok((joins.to_vec(), starts, lens))
}

/// The new tokens of a pass, packed row after row.
pub(crate) struct Plan {
    pub tokens: Vec<TokenAt>,
    /// Per row: index of its first token in `tokens`, and its token count.
    pub rows: Vec<(usize, usize)>,
    /// Per row: the site where it enters the pass (in pass order, so the rows that have
    /// joined at any point are a prefix of the batch).
    pub joins: Vec<Site>,
}

/// What the stream starts from.
pub(crate) enum Init {
    Ids(Vec<u32>),
    States(Vec<f32>),
}

/// Reads and writes resolved to token indices.
pub(crate) struct StreamOps<'a> {
    pub writes: Vec<(Site, usize, &'a WriteOp)>,
    pub reads: Vec<(Site, usize)>,
}

impl Plan {
    /// Checks the input against the caches; returns the start site, the plan and what
    /// the stream starts from.
    pub fn new<C: CacheShape>(
        c: &Config,
        caches: &[C],
        input: &Input,
    ) -> Result<(Site, Plan, Init)> {
        let (joins, starts, lens) = match input {
            Input::Tokens(rows) => (
                vec![Site::Embed; rows.len()],
                caches.iter().map(|kv| kv.len(0)).collect::<Vec<_>>(),
                rows.iter().map(Vec::len).collect::<Vec<_>>(),
            ),
            Input::Hidden { site, rows } => {
                let joins = vec![*site; rows.len()];
                hidden_rows(c, &joins, rows.iter())?
            }
            Input::Joining(rows) => {
                let joins: Vec<Site> = rows.iter().map(|(s, _)| *s).collect();
                hidden_rows(c, &joins, rows.iter().map(|(_, r)| r))?
            }
        };
        if lens.len() != caches.len() {
            return Err(Error::input(format!(
                "{} input rows but {} KV caches",
                lens.len(),
                caches.len()
            )));
        }
        if lens.is_empty() {
            return Err(Error::input("empty batch: no rows to run"));
        }
        let site = *joins
            .first()
            .ok_or_else(|| Error::input("empty batch: no rows to run"))?;
        let mut plan = Plan {
            tokens: Vec::new(),
            rows: Vec::new(),
            joins,
        };
        for (r, ((&p0, &n), kv)) in starts.iter().zip(&lens).zip(caches).enumerate() {
            if n == 0 {
                return Err(Error::input(format!(
                    "row {r} is empty: a prompt needs at least one token"
                )));
            }
            if kv.num_layers() != c.num_layers {
                return Err(Error::input(format!(
                    "row {r}: KV cache is for another model"
                )));
            }
            let first_block = plan.joins[r].next_block(c.num_layers);
            if let Some(l) = (first_block..c.num_layers).find(|&l| kv.len(l) != p0) {
                return Err(Error::input(format!(
                    "row {r}: new positions start at {p0} but block {l} has {} cached positions",
                    kv.len(l)
                )));
            }
            if p0 + n > c.max_position_embeddings {
                return Err(Error::input(format!(
                    "prompt too long: row {r} needs {} positions, the model allows {}",
                    p0 + n,
                    c.max_position_embeddings
                )));
            }
            plan.rows.push((plan.tokens.len(), n));
            plan.tokens
                .extend((p0..p0 + n).map(|pos| TokenAt { row: r, pos }));
        }
        let init = match input {
            Input::Tokens(rows) => {
                let ids: Vec<u32> = rows.concat();
                if let Some(&bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
                    return Err(Error::input(format!(
                        "token id {bad} out of range: the vocabulary has {} tokens",
                        c.vocab_size
                    )));
                }
                Init::Ids(ids)
            }
            Input::Hidden { rows, .. } => {
                Init::States(rows.iter().flat_map(|r| r.states.iter().copied()).collect())
            }
            Input::Joining(rows) => Init::States(
                rows.iter()
                    .flat_map(|(_, r)| r.states.iter().copied())
                    .collect(),
            ),
        };
        Ok((site, plan, init))
    }

    /// The blocks a pass from `start` runs, cut where a row joins: each segment with the
    /// plan of the rows that run it (those joined before its first block, a prefix of the
    /// batch). One segment unless rows join at several sites.
    pub fn segments(&self, start: Site, num_layers: usize) -> Vec<(Range<usize>, Plan)> {
        let mut out = Vec::new();
        let mut layer = start.next_block(num_layers);
        while layer < num_layers {
            let input_site = layer.checked_sub(1).map_or(Site::Embed, Site::BlockOut);
            let end = self
                .joins
                .iter()
                .map(|s| s.next_block(num_layers))
                .filter(|&b| b > layer)
                .min()
                .unwrap_or(num_layers);
            out.push((layer..end, self.joined(input_site, num_layers)));
            layer = end;
        }
        out
    }

    /// The plan of the rows that joined the pass at `site` or before it.
    pub fn joined(&self, site: Site, num_layers: usize) -> Plan {
        let order = site.order(num_layers);
        let k = self.joins.partition_point(|s| s.order(num_layers) <= order);
        let tokens = self
            .rows
            .get(k)
            .map_or(self.tokens.len(), |&(first, _)| first);
        Plan {
            tokens: self.tokens[..tokens].to_vec(),
            rows: self.rows[..k].to_vec(),
            joins: self.joins[..k].to_vec(),
        }
    }

    /// Row `row`'s first token index, token count and first position.
    fn span(&self, row: usize) -> Result<(usize, usize, usize)> {
        let &(first, n) = self.rows.get(row).ok_or_else(|| {
            Error::input(format!(
                "row {row} out of range: the batch has {} rows",
                self.rows.len()
            ))
        })?;
        Ok((first, n, self.tokens[first].pos))
    }

    pub fn index(&self, row: usize, pos: usize) -> Result<usize> {
        let (first, n, p0) = self.span(row)?;
        if pos < p0 || pos >= p0 + n {
            return Err(Error::input(format!(
                "position {pos} of row {row} is not computed in this pass (positions {p0}..{})",
                p0 + n - 1
            )));
        }
        Ok(first + pos - p0)
    }

    fn positions(&self, row: usize, sel: &Positions) -> Result<Vec<usize>> {
        let (_, n, p0) = self.span(row)?;
        let all = match sel {
            Positions::All => (p0..p0 + n).collect(),
            Positions::Last => vec![p0 + n - 1],
            Positions::At(ps) => ps.clone(),
        };
        all.into_iter().map(|p| self.index(row, p)).collect()
    }

    /// The request's reads and writes as token indices, checked against the pass.
    pub fn stream_ops<'a>(
        &self,
        c: &Config,
        req: &'a Request,
        start: Site,
    ) -> Result<StreamOps<'a>> {
        let l = c.num_layers;
        debug_assert_eq!(self.joins.first(), Some(&start));
        let check_site = |site: Site, row: usize| -> Result<()> {
            site.check(l)?;
            let join = self.joins.get(row).copied().unwrap_or(start);
            if site.order(l) < join.order(l) {
                return Err(Error::input(format!(
                    "site {site} comes before {join}, where row {row} starts in this pass"
                )));
            }
            Ok(())
        };
        let mut ops = StreamOps {
            writes: Vec::new(),
            reads: Vec::new(),
        };
        for w in &req.writes {
            check_site(w.site, w.row)?;
            let (WriteOp::Replace(v) | WriteOp::Add(v)) = &w.op;
            if v.len() != c.hidden_size {
                return Err(Error::input(format!(
                    "write at {}: vector has {} values, hidden size is {}",
                    w.site,
                    v.len(),
                    c.hidden_size
                )));
            }
            ops.writes.push((w.site, self.index(w.row, w.pos)?, &w.op));
        }
        for r in &req.reads {
            check_site(r.site, r.row)?;
            for t in self.positions(r.row, &r.positions)? {
                ops.reads.push((r.site, t));
            }
        }
        Ok(ops)
    }

    /// The tokens that get logits.
    pub fn logit_rows(&self, at: &LogitsAt) -> Result<Vec<usize>> {
        Ok(match at {
            LogitsAt::None => Vec::new(),
            LogitsAt::All => (0..self.tokens.len()).collect(),
            LogitsAt::Last => self.rows.iter().map(|&(first, n)| first + n - 1).collect(),
            LogitsAt::At(pairs) => pairs
                .iter()
                .map(|&(row, pos)| self.index(row, pos))
                .collect::<Result<_>>()?,
        })
    }
}
