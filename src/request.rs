//! The request API, the same for every backend: what a forward pass starts from (tokens,
//! or states at a site), the residual-stream reads and writes it carries out, where it
//! computes logits, and what it hands back.

use crate::stream::{Positions, Read, Site, State, Write, WriteOp};

/// What the pass starts from.
#[derive(Debug, Clone)]
pub enum Input {
    /// New tokens per row; their positions continue the row's cache.
    Tokens(Vec<Vec<u32>>),
    /// States at `site` per row: the pass runs the blocks after `site` only.
    Hidden { site: Site, rows: Vec<HiddenRow> },
    /// Rows that join the pass at their own sites, listed in pass order (earliest site
    /// first): row r runs only the blocks after its site. One pass then serves patches at
    /// every layer, and each block's weights are read once for all of them.
    Joining(Vec<(Site, HiddenRow)>),
}

/// Consecutive states of one row, the first at position `start_pos`.
#[derive(Debug, Clone)]
pub struct HiddenRow {
    pub start_pos: usize,
    /// [positions, hidden]
    pub states: Vec<f32>,
}

/// Where to compute logits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogitsAt {
    None,
    /// The last new position of every row.
    Last,
    /// Every new position of every row.
    All,
    /// Chosen (row, position) pairs.
    At(Vec<(usize, usize)>),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub input: Input,
    pub reads: Vec<Read>,
    pub writes: Vec<Write>,
    pub logits: LogitsAt,
}

impl Request {
    pub fn new(input: Input) -> Self {
        Request {
            input,
            reads: Vec::new(),
            writes: Vec::new(),
            logits: LogitsAt::Last,
        }
    }

    pub fn tokens(rows: Vec<Vec<u32>>) -> Self {
        Self::new(Input::Tokens(rows))
    }

    pub fn logits(mut self, at: LogitsAt) -> Self {
        self.logits = at;
        self
    }

    pub fn read(mut self, site: Site, row: usize, positions: Positions) -> Self {
        self.reads.push(Read {
            site,
            row,
            positions,
        });
        self
    }

    pub fn write(mut self, site: Site, row: usize, pos: usize, op: WriteOp) -> Self {
        self.writes.push(Write { site, row, pos, op });
        self
    }
}

/// Logits at one (row, position).
#[derive(Debug, Clone)]
pub struct Logits {
    pub row: usize,
    pub pos: usize,
    pub values: Vec<f32>,
}

#[derive(Debug, Clone, Default)]
pub struct Output {
    pub logits: Vec<Logits>,
    /// Read states, in pass order (by site, then in request order).
    pub states: Vec<State>,
}

impl Output {
    pub fn logits_at(&self, row: usize, pos: usize) -> Option<&[f32]> {
        self.logits
            .iter()
            .find(|l| l.row == row && l.pos == pos)
            .map(|l| l.values.as_slice())
    }

    /// The last logits computed for `row`.
    pub fn last_logits(&self, row: usize) -> Option<&[f32]> {
        self.logits
            .iter()
            .filter(|l| l.row == row)
            .max_by_key(|l| l.pos)
            .map(|l| l.values.as_slice())
    }

    pub fn state(&self, site: Site, row: usize, pos: usize) -> Option<&[f32]> {
        self.states
            .iter()
            .find(|s| s.site == site && s.row == row && s.pos == pos)
            .map(|s| s.values.as_slice())
    }
}
