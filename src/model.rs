//! The Qwen2/Qwen3/Llama model, defined once for every backend: the decoder block's recipe and
//! the pass around it (where a pass starts, the segments of rows that join it late, the
//! stream's reads and writes, the final-norm rule and the head). A backend supplies its
//! buffers and ops through [`Ops`]; `backend::cpu::model` and `backend::cuda::model`
//! implement it.
//!
//! Rows are packed (no padding): every new token knows its row and absolute position, so
//! rows of different lengths cost only their own tokens. Writes at a site are applied
//! before reads at the same site, so a read sees what the next block will see.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::plan::{CacheShape, Init, Plan, StreamOps};
use crate::request::{HiddenRow, Input, Logits, LogitsAt, Output, Request};
use crate::stream::{Site, State, WriteOp};

/// The two norms of a block.
#[derive(Clone, Copy)]
pub(crate) enum Norm {
    Input,
    PostAttention,
}

/// The four matrices of a block.
#[derive(Clone, Copy)]
pub(crate) enum Proj {
    /// [q_dim + 2 kv_dim, hidden], with the bias where the model has one.
    Qkv,
    /// [hidden, q_dim], with the bias where the model has one.
    O,
    /// [2 intermediate, hidden]: gate rows, then up rows.
    GateUp,
    /// [hidden, intermediate]
    Down,
}

/// What a backend does for the pass. Buffers are the backend's own; `n` is the number of
/// tokens (from the first) that a step covers, since rows that join late sit at the end.
pub(crate) trait Ops {
    type Cache: CacheShape;
    /// The residual stream, f32 [tokens, hidden].
    type Stream;
    /// A GEMM input, in the weights' dtype.
    type Act;
    /// A GEMM output or attention result, f32.
    type Wide;
    /// The tokens of one segment as attention and RoPE need them, built once per segment.
    type Batch;

    fn config(&self) -> &Config;
    /// Checks the caches belong to this backend's model, beyond what the plan checks.
    fn check_caches(&self, _caches: &[Self::Cache]) -> Result<()> {
        Ok(())
    }
    fn embed(&self, ids: &[u32]) -> Result<Self::Stream>;
    fn stream_from(&self, states: Vec<f32>) -> Result<Self::Stream>;
    fn act(&self, len: usize) -> Result<Self::Act>;
    fn wide(&self, len: usize) -> Result<Self::Wide>;
    fn batch(&self, plan: &Plan) -> Result<Self::Batch>;

    /// `out = rmsnorm(h[..n]) * w` with the block's `norm` weights.
    fn rmsnorm(
        &self,
        h: &Self::Stream,
        n: usize,
        layer: usize,
        norm: Norm,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `out = x · w^T (+ b)` with the block's `proj`.
    fn linear(&self, x: &Self::Act, layer: usize, proj: Proj, out: &mut Self::Wide) -> Result<()>;
    /// RMSNorm, in place, of each head of the q part of the fused `qkv` with the block's
    /// q_norm weights and of each head of the k part with its k_norm weights (models with
    /// `config.qk_norm` only).
    fn qk_norm(&self, qkv: &mut Self::Wide, layer: usize) -> Result<()>;
    /// Rotates the q and k parts of the fused `qkv` in place.
    fn rope(&self, qkv: &mut Self::Wide, batch: &Self::Batch) -> Result<()>;
    /// Appends the k and v parts of `qkv` to each row's cache in block `layer`, then
    /// attends each new token to its row up to its own position: `out` [n, q_dim].
    fn attention(
        &self,
        qkv: &Self::Wide,
        batch: &Self::Batch,
        plan: &Plan,
        caches: &mut [Self::Cache],
        layer: usize,
        out: &mut Self::Wide,
    ) -> Result<()>;
    /// `x` as a GEMM input: `x` itself where the weights are f32, else cast into `tmp`.
    fn gemm_input<'a>(
        &self,
        x: &'a Self::Wide,
        tmp: &'a mut Option<Self::Act>,
    ) -> Result<&'a Self::Act>;
    /// `h[..n] += delta`
    fn add(&self, h: &mut Self::Stream, n: usize, delta: &Self::Wide) -> Result<()>;
    /// `out = silu(gate) * up` from the fused gate/up product.
    fn swiglu(&self, gate_up: &Self::Wide, out: &mut Self::Act) -> Result<()>;
    /// The final norm of `h[..n]`, in place.
    fn final_norm(&self, h: &mut Self::Stream, n: usize) -> Result<()>;
    /// Replaces (or adds to) stream rows, in order.
    fn write_rows(&self, h: &mut Self::Stream, writes: &[(usize, &WriteOp)]) -> Result<()>;
    /// Stream rows `rows`, to the host: [rows, hidden].
    fn read_rows(&self, h: &Self::Stream, rows: &[usize]) -> Result<Vec<f32>>;
    /// The LM head's logits of stream rows `rows`, to the host: [rows, vocab].
    fn logits(&self, h: &Self::Stream, rows: &[usize]) -> Result<Vec<f32>>;
    /// The argmax of the LM head's logits of stream rows `rows`.
    fn head_argmax(&self, h: &Self::Stream, rows: &[usize]) -> Result<Vec<u32>>;
}

/// One decoder block over the segment's `plan.tokens`, appending their keys and values to
/// the caches: pre-norm attention, then a pre-norm SwiGLU MLP, each added to the stream.
/// Qwen3 (`qk_norm`) norms each q and k head after the projection, before RoPE.
fn block<B: Ops>(
    b: &B,
    layer: usize,
    h: &mut B::Stream,
    seg: &mut Segment<B>,
    caches: &mut [B::Cache],
) -> Result<()> {
    let n = seg.plan.tokens.len();
    b.rmsnorm(h, n, layer, Norm::Input, &mut seg.x)?;
    b.linear(&seg.x, layer, Proj::Qkv, &mut seg.qkv)?;
    if b.config().qk_norm {
        b.qk_norm(&mut seg.qkv, layer)?;
    }
    b.rope(&mut seg.qkv, &seg.batch)?;
    b.attention(
        &seg.qkv,
        &seg.batch,
        &seg.plan,
        caches,
        layer,
        &mut seg.attn,
    )?;
    let attn = b.gemm_input(&seg.attn, &mut seg.attn_in)?;
    b.linear(attn, layer, Proj::O, &mut seg.o)?;
    b.add(h, n, &seg.o)?;

    b.rmsnorm(h, n, layer, Norm::PostAttention, &mut seg.x)?;
    b.linear(&seg.x, layer, Proj::GateUp, &mut seg.gate_up)?;
    b.swiglu(&seg.gate_up, &mut seg.act)?;
    b.linear(&seg.act, layer, Proj::Down, &mut seg.o)?;
    b.add(h, n, &seg.o)
}

/// The rows that run a run of blocks, and the block buffers sized for their tokens.
struct Segment<B: Ops> {
    plan: Plan,
    batch: B::Batch,
    /// Normed stream [n, hidden], a GEMM input.
    x: B::Act,
    /// [n, q_dim + 2 kv_dim]
    qkv: B::Wide,
    /// [n, q_dim]
    attn: B::Wide,
    attn_in: Option<B::Act>,
    /// [n, hidden]
    o: B::Wide,
    /// [n, 2 intermediate]
    gate_up: B::Wide,
    /// [n, intermediate]
    act: B::Act,
}

impl<B: Ops> Segment<B> {
    fn new(b: &B, plan: Plan) -> Result<Self> {
        let c = b.config();
        let n = plan.tokens.len();
        Ok(Segment {
            batch: b.batch(&plan)?,
            x: b.act(n * c.hidden_size)?,
            qkv: b.wide(n * (c.q_dim() + 2 * c.kv_dim()))?,
            attn: b.wide(n * c.q_dim())?,
            attn_in: None,
            o: b.wide(n * c.hidden_size)?,
            gate_up: b.wide(n * 2 * c.intermediate_size)?,
            act: b.act(n * c.intermediate_size)?,
            plan,
        })
    }
}

/// What the pass ends with.
#[derive(Clone, Copy, PartialEq)]
enum Head {
    /// The logits the request asks for.
    Logits,
    /// Only the argmax at each row's last position (greedy steps, lens predictions).
    Argmax,
}

/// A pass's results.
struct Ran {
    out: Output,
    argmax: Vec<u32>,
}

/// Runs one pass over `caches.len()` rows (row r continues `caches[r]`).
pub(crate) fn forward<B: Ops>(b: &B, caches: &mut [B::Cache], req: &Request) -> Result<Output> {
    Ok(run(b, caches, req, Head::Logits)?.out)
}

/// Runs `first`, then feeds each row's argmax back until `max_new` tokens per row exist.
/// Returns the new tokens per row. The first pass may carry writes (or start from patched
/// states): its keys and values, patch included, stay in the caches every later token
/// attends to.
pub(crate) fn greedy<B: Ops>(
    b: &B,
    caches: &mut [B::Cache],
    first: Request,
    max_new: usize,
) -> Result<Vec<Vec<u32>>> {
    let rows = caches.len();
    let mut generated = vec![Vec::with_capacity(max_new); rows];
    let mut req = first;
    while generated.first().is_some_and(|g| g.len() < max_new) {
        let next = run(b, caches, &req, Head::Argmax)?.argmax;
        for (g, &t) in generated.iter_mut().zip(&next) {
            g.push(t);
        }
        req = Request::tokens(next.iter().map(|&t| vec![t]).collect());
    }
    Ok(generated)
}

/// The LM head's argmax for each final-normed state: what `argmax` of its logits gives.
pub(crate) fn head_argmax<B: Ops>(
    b: &B,
    final_normed: Vec<Vec<f32>>,
    new_cache: impl Fn() -> B::Cache,
) -> Result<Vec<u32>> {
    let hidden = b.config().hidden_size;
    if let Some(bad) = final_normed.iter().find(|s| s.len() != hidden) {
        return Err(Error::input(format!(
            "a state of {} values for hidden size {hidden}",
            bad.len()
        )));
    }
    if final_normed.is_empty() {
        return Ok(Vec::new());
    }
    let mut caches: Vec<_> = final_normed.iter().map(|_| new_cache()).collect();
    let rows = final_normed
        .into_iter()
        .map(|states| HiddenRow {
            start_pos: 0,
            states,
        })
        .collect();
    let req = Request::new(Input::Hidden {
        site: Site::FinalNorm,
        rows,
    });
    Ok(run(b, &mut caches, &req, Head::Argmax)?.argmax)
}

fn run<B: Ops>(b: &B, caches: &mut [B::Cache], req: &Request, head: Head) -> Result<Ran> {
    let c = b.config();
    let num_layers = c.num_layers;
    b.check_caches(caches)?;
    let (start, plan, init) = Plan::new(c, caches, &req.input)?;
    let ops = plan.stream_ops(c, req, start)?;
    // every check before the first block, so a refused request leaves the caches as
    // they were
    let head_rows = match head {
        Head::Logits => plan.logit_rows(&req.logits)?,
        Head::Argmax => plan.logit_rows(&LogitsAt::Last)?,
    };
    let mut h = match init {
        Init::Ids(ids) => b.embed(&ids)?,
        Init::States(states) => b.stream_from(states)?,
    };
    let mut out = Output::default();

    apply_site(b, start, &mut h, &plan, &ops, &mut out.states)?;
    for (blocks, active) in plan.segments(start, num_layers) {
        let rows = active.rows.len();
        let mut seg = Segment::new(b, active)?;
        for layer in blocks {
            block(b, layer, &mut h, &mut seg, &mut caches[..rows])?;
            apply_site(
                b,
                Site::BlockOut(layer),
                &mut h,
                &plan,
                &ops,
                &mut out.states,
            )?;
        }
    }
    let needs_norm = !head_rows.is_empty()
        || ops.reads.iter().any(|r| r.0 == Site::FinalNorm)
        || ops.writes.iter().any(|w| w.0 == Site::FinalNorm);
    if start != Site::FinalNorm && needs_norm {
        // rows that join at the final norm come normed already
        let normed = plan
            .joined(Site::BlockOut(num_layers - 1), num_layers)
            .tokens
            .len();
        b.final_norm(&mut h, normed)?;
        apply_site(b, Site::FinalNorm, &mut h, &plan, &ops, &mut out.states)?;
    }
    let mut argmax = Vec::new();
    if !head_rows.is_empty() {
        match head {
            Head::Argmax => argmax = b.head_argmax(&h, &head_rows)?,
            Head::Logits => {
                let vocab = c.vocab_size;
                let values = b.logits(&h, &head_rows)?;
                out.logits = head_rows
                    .iter()
                    .zip(values.chunks_exact(vocab))
                    .map(|(&t, v)| Logits {
                        row: plan.tokens[t].row,
                        pos: plan.tokens[t].pos,
                        values: v.to_vec(),
                    })
                    .collect();
            }
        }
    }
    Ok(Ran { out, argmax })
}

/// Applies the writes, then the reads, of `site`.
fn apply_site<B: Ops>(
    b: &B,
    site: Site,
    h: &mut B::Stream,
    plan: &Plan,
    ops: &StreamOps,
    states: &mut Vec<State>,
) -> Result<()> {
    let writes: Vec<(usize, &WriteOp)> = ops
        .writes
        .iter()
        .filter(|w| w.0 == site)
        .map(|&(_, t, op)| (t, op))
        .collect();
    if !writes.is_empty() {
        b.write_rows(h, &writes)?;
    }
    let reads: Vec<usize> = ops
        .reads
        .iter()
        .filter(|r| r.0 == site)
        .map(|r| r.1)
        .collect();
    if reads.is_empty() {
        return Ok(());
    }
    let d = b.config().hidden_size;
    let values = b.read_rows(h, &reads)?;
    for (&t, v) in reads.iter().zip(values.chunks_exact(d)) {
        states.push(State {
            site,
            row: plan.tokens[t].row,
            pos: plan.tokens[t].pos,
            values: v.to_vec(),
        });
    }
    Ok(())
}
