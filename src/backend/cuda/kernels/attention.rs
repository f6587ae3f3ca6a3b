//! Causal grouped-query attention of new tokens against KV caches (shared prefixes and own
//! rows), with the KV table that points at them. CPU twin: `cpu::attention`; kernels:
//! kernels/attention.cu.

use super::*;

/// One batch row's cache as the attention kernels see it (mirrors `struct RowKv` in
/// kernels/attention.cu): device addresses of an optional shared prefix, of which the row
/// sees `prefix_len` positions, and of the row's own K/V buffers (`own_cap` positions).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowKv {
    prefix_k: u64,
    prefix_v: u64,
    own_k: u64,
    own_v: u64,
    prefix_len: u32,
    own_cap: u32,
}

// SAFETY: plain integers, #[repr(C)] like the CUDA struct.
unsafe impl DeviceRepr for RowKv {}

impl RowKv {
    pub fn prefix_len(&self) -> usize {
        self.prefix_len as usize
    }

    /// Positions the row's own buffers hold.
    pub fn own_capacity(&self) -> usize {
        self.own_cap as usize
    }
}

/// The caches of the rows of a batch for one block (layer), in the cache dtype `T`, as a
/// table of device addresses (host copy kept for checks). Build it with
/// [`KvTable::builder`].
///
/// The table borrows every buffer it names for `'a`: the rows' own buffers mutably (the
/// KV append writes them), shared prefixes immutably. So they stay alive, unmoved and
/// unused by anything else while the table exists; with all work ordered on the device's
/// one stream, that is what makes [`kv_append`] and [`attention`] safe.
pub struct KvTable<'a, T: CudaFloat> {
    host: Vec<RowKv>,
    dev: CudaSlice<RowKv>,
    kv_dim: usize,
    _bufs: PhantomData<&'a mut T>,
}

pub struct KvTableBuilder<'a, T: CudaFloat> {
    dev: &'a Device,
    kv_dim: usize,
    rows: Vec<RowKv>,
    _bufs: PhantomData<&'a mut T>,
}

impl<'a, T: CudaFloat> KvTable<'a, T> {
    /// Rows of `kv_dim` = num_kv_heads * head_dim values.
    pub fn builder(dev: &'a Device, kv_dim: usize) -> KvTableBuilder<'a, T> {
        KvTableBuilder {
            dev,
            kv_dim,
            rows: Vec::new(),
            _bufs: PhantomData,
        }
    }

    pub fn rows(&self) -> &[RowKv] {
        &self.host
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
}

impl<'a, T: CudaFloat> KvTableBuilder<'a, T> {
    fn own(
        &self,
        k: &'a mut impl DevicePtrMut<T>,
        v: &'a mut impl DevicePtrMut<T>,
    ) -> Result<(u64, u64, u32)> {
        let kv = self.kv_dim;
        check(kv > 0 && k.len() == v.len() && k.len() % kv == 0, || {
            format!(
                "KV table row {}: own K/V buffers of {} and {} values are not [positions, {kv}]",
                self.rows.len(),
                k.len(),
                v.len()
            )
        })?;
        let cap = u32::try_from(k.len() / kv)
            .map_err(|_| Error::internal("KV table: own buffer too long"))?;
        let s = self.dev.stream();
        Ok((k.device_ptr_mut(s).0, v.device_ptr_mut(s).0, cap))
    }

    /// A row with no prefix: its positions live in `own_k`/`own_v` ([capacity, kv_dim]).
    pub fn row(
        &mut self,
        own_k: &'a mut impl DevicePtrMut<T>,
        own_v: &'a mut impl DevicePtrMut<T>,
    ) -> Result<&mut Self> {
        let (own_k, own_v, own_cap) = self.own(own_k, own_v)?;
        self.rows.push(RowKv {
            own_k,
            own_v,
            own_cap,
            ..Default::default()
        });
        Ok(self)
    }

    /// A row that sees the first `prefix_len` positions of the shared `prefix_k`/`prefix_v`
    /// (read only) and then its own buffers.
    pub fn row_with_prefix(
        &mut self,
        prefix_k: &'a impl DevicePtr<T>,
        prefix_v: &'a impl DevicePtr<T>,
        prefix_len: usize,
        own_k: &'a mut impl DevicePtrMut<T>,
        own_v: &'a mut impl DevicePtrMut<T>,
    ) -> Result<&mut Self> {
        let need = prefix_len * self.kv_dim;
        check(prefix_k.len() >= need && prefix_v.len() >= need, || {
            format!(
                "KV table row {}: prefix of {prefix_len} positions needs {need} values, the \
                 buffers have {} and {}",
                self.rows.len(),
                prefix_k.len(),
                prefix_v.len()
            )
        })?;
        let prefix_len_u =
            u32::try_from(prefix_len).map_err(|_| Error::internal("KV table: prefix too long"))?;
        let (own_k, own_v, own_cap) = self.own(own_k, own_v)?;
        let s = self.dev.stream();
        self.rows.push(RowKv {
            prefix_k: prefix_k.device_ptr(s).0,
            prefix_v: prefix_v.device_ptr(s).0,
            own_k,
            own_v,
            prefix_len: prefix_len_u,
            own_cap,
        });
        Ok(self)
    }

    pub fn build(&self) -> Result<KvTable<'a, T>> {
        check(!self.rows.is_empty(), || "KV table: no rows".into())?;
        Ok(KvTable {
            dev: self.dev.upload(&self.rows)?,
            host: self.rows.clone(),
            kv_dim: self.kv_dim,
            _bufs: PhantomData,
        })
    }
}

/// Query rows per attention block (kernels/attention.cu QS_ATT_QROWS).
const ATT_QROWS: usize = 16;
const ATT_BK: usize = 32;

/// Dynamic shared memory of an attention launch for `head_dim`.
pub(crate) fn attention_smem_bytes(head_dim: usize, kv_ld: usize) -> u32 {
    ((ATT_QROWS * head_dim + ATT_BK * kv_ld) * 4) as u32
}

/// The K/V tile's row stride in shared memory: head_dim + 1 (no bank conflicts) where that
/// fits the `limit` bytes a block may have, else head_dim.
pub(crate) fn attention_kv_ld(head_dim: usize, limit: u32) -> usize {
    if attention_smem_bytes(head_dim, head_dim + 1) <= limit {
        head_dim + 1
    } else {
        head_dim
    }
}

/// The largest head_dim an attention kernel variant handles, from its name.
pub(crate) fn head_dim_max(name: &str) -> usize {
    if name.ends_with("_d64") {
        64
    } else if name.ends_with("_d128") {
        128
    } else {
        256
    }
}

/// The largest head_dim the attention kernels support.
pub const HEAD_DIM_MAX: usize = 256;

/// The new tokens of one pass, for attention, RoPE and the KV append: token i belongs to
/// row `tokens[i].row` at `tokens[i].pos`. Built once per pass and reused by every layer.
pub struct AttnBatch {
    tokens: Vec<TokenAt>,
    tok: CudaSlice<u32>,
    pos: CudaSlice<u32>,
    tiles: CudaSlice<u32>,
    n_tiles: usize,
    tile_tokens: usize,
    head_chunk: usize,
    group: usize,
    max_len: usize,
}

impl AttnBatch {
    pub fn new(dev: &Device, tokens: &[TokenAt], shape: &AttnShape) -> Result<AttnBatch> {
        check_shape(shape)?;
        check(!tokens.is_empty(), || "attention: no tokens".into())?;
        check(tokens.len() <= i32::MAX as usize, || {
            "attention: too many tokens".into()
        })?;
        let group = shape.num_heads / shape.num_kv_heads;
        let head_chunk = group.min(ATT_QROWS);
        let tile_tokens = (ATT_QROWS / head_chunk).max(1);
        let mut tok = Vec::with_capacity(2 * tokens.len());
        let mut pos = Vec::with_capacity(tokens.len());
        let mut max_len = 0;
        for t in tokens {
            let (row, p) = (
                u32::try_from(t.row).map_err(|_| Error::internal("attention: row out of range"))?,
                u32::try_from(t.pos)
                    .ok()
                    .filter(|&p| p < i32::MAX as u32)
                    .ok_or_else(|| Error::internal("attention: position out of range"))?,
            );
            tok.extend([row, p]);
            pos.push(p);
            max_len = max_len.max(t.pos + 1);
        }
        let tiles = build_tiles(tokens, tile_tokens);
        let n_tiles = tiles.len() / 2;
        check(n_tiles < (1 << 31), || "attention: too many tiles".into())?;
        Ok(AttnBatch {
            tokens: tokens.to_vec(),
            tok: dev.upload(&tok)?,
            pos: dev.upload(&pos)?,
            tiles: dev.upload(&tiles)?,
            n_tiles,
            tile_tokens,
            head_chunk,
            group,
            max_len,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> &[TokenAt] {
        &self.tokens
    }

    /// The tokens' positions on the device ([tokens] u32), e.g. for [`rope`].
    pub fn positions(&self) -> &CudaSlice<u32> {
        &self.pos
    }

    /// Number of (row, up to 16 / group tokens) tiles the attention grid runs over.
    pub fn tiles(&self) -> usize {
        self.n_tiles
    }
}

/// (first token, count) runs of consecutive tokens of one row, at most `tile_tokens` each,
/// flattened.
pub(super) fn build_tiles(tokens: &[TokenAt], tile_tokens: usize) -> Vec<u32> {
    let mut tiles: Vec<u32> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let n = tiles.len();
        let extend = n > 0
            && tokens[tiles[n - 2] as usize].row == t.row
            && (tiles[n - 1] as usize) < tile_tokens;
        if extend {
            tiles[n - 1] += 1;
        } else {
            tiles.extend([i as u32, 1]);
        }
    }
    tiles
}

fn check_shape(s: &AttnShape) -> Result<()> {
    check(
        s.num_kv_heads > 0 && s.num_heads > 0 && s.num_heads.is_multiple_of(s.num_kv_heads),
        || {
            format!(
                "attention: {} heads is not a multiple of {} KV heads",
                s.num_heads, s.num_kv_heads
            )
        },
    )?;
    check(s.head_dim >= 1 && s.head_dim <= HEAD_DIM_MAX, || {
        format!(
            "attention: head_dim {} is not in 1..={HEAD_DIM_MAX}",
            s.head_dim
        )
    })
}

fn check_rows<T: CudaFloat>(
    op: &str,
    batch: &AttnBatch,
    kv: &KvTable<'_, T>,
    append: bool,
) -> Result<()> {
    for (i, t) in batch.tokens.iter().enumerate() {
        let r = kv.host.get(t.row).ok_or_else(|| {
            Error::internal(format!(
                "{op}: token {i} is in row {}, the KV table has {} rows",
                t.row,
                kv.host.len()
            ))
        })?;
        let (plen, cap) = (r.prefix_len as usize, r.own_cap as usize);
        if append {
            check(t.pos >= plen, || {
                format!(
                    "{op}: row {} position {} lies in its read-only prefix ({plen} positions)",
                    t.row, t.pos
                )
            })?;
        }
        check(t.pos < plen + cap, || {
            format!(
                "{op}: row {} position {} is beyond its cache ({plen} prefix + {cap} own positions)",
                t.row, t.pos
            )
        })?;
    }
    Ok(())
}

/// Writes the new keys and values of `batch`'s tokens into their rows' own buffers: token
/// t's K is `src[t * layout.stride + k_offset ..][..kv_dim]`, its V at `v_offset`, stored
/// at own slot `pos - prefix_len` in the cache dtype. Twin: `KvCache::append` (src/kv.rs).
pub fn kv_append<T: CudaFloat>(
    dev: &Device,
    src: &impl DevicePtr<f32>,
    src_stride: usize,
    k_offset: usize,
    v_offset: usize,
    batch: &AttnBatch,
    kv: &KvTable<'_, T>,
) -> Result<()> {
    let kv_dim = kv.kv_dim;
    let n = batch.len();
    RowLayout {
        stride: src_stride,
        offset: k_offset,
    }
    .check("kv_append (K)", n, kv_dim, src.len())?;
    RowLayout {
        stride: src_stride,
        offset: v_offset,
    }
    .check("kv_append (V)", n, kv_dim, src.len())?;
    check_rows("kv_append", batch, kv, true)?;
    let (stride, k_off, v_off) = (src_stride as i64, k_offset as i64, v_offset as i64);
    let (n_i, kv_dim_i) = (n as i32, int(kv_dim, "kv_dim")?);
    let s = dev.stream();
    let (sp, _g1) = src.device_ptr(s);
    let (tp, _g2) = batch.tok.device_ptr(s);
    let (rp, _g3) = kv.dev.device_ptr(s);
    let mut a = args![sp, stride, k_off, v_off, tp, rp, n_i, kv_dim_i];
    let name = match T::DTYPE {
        DType::F32 => "kv_append_f32",
        DType::F16 => "kv_append_f16",
        DType::BF16 => "kv_append_bf16",
    };
    // SAFETY: sizes and slots checked above; the table borrows its buffers (see KvTable).
    unsafe {
        dev.launch(
            name,
            (n as u32, 1, 1),
            (row_block(kv_dim, BLOCK), 1, 1),
            0,
            &mut a,
        )
    }
}

/// How the KV range is split across blocks (flash-decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Splits {
    /// Split long caches when the batch alone would not fill the GPU.
    #[default]
    Auto,
    /// Exactly this many parts (1 = no split), at most 1024.
    Fixed(usize),
}

/// Causal GQA: each token of `batch` attends to positions 0..=pos of its row in `kv`
/// (prefix, then own buffers, which must already hold this pass's keys: [`kv_append`]).
/// `q` holds [tokens, num_heads * head_dim] at `q_layout` (RoPE applied); `out` is
/// [tokens, num_heads, head_dim] f32. Twin: `cpu::attention::attention`.
#[allow(clippy::too_many_arguments)]
pub fn attention<T: CudaFloat>(
    dev: &Device,
    q: &impl DevicePtr<f32>,
    q_layout: RowLayout,
    batch: &AttnBatch,
    kv: &KvTable<'_, T>,
    shape: &AttnShape,
    out: &mut impl DevicePtrMut<f32>,
    splits: Splits,
) -> Result<()> {
    check_shape(shape)?;
    let (nh, nkv, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    check(nh / nkv == batch.group, || {
        "attention: the batch was built for another head grouping".into()
    })?;
    check(kv.kv_dim == nkv * hd, || {
        format!(
            "attention: KV table rows have {} values, {nkv} KV heads x {hd} need {}",
            kv.kv_dim,
            nkv * hd
        )
    })?;
    let n = batch.len();
    q_layout.check("attention (q)", n, nh * hd, q.len())?;
    eq_len("attention", "out", out.len(), n * nh * hd)?;
    check_rows("attention", batch, kv, false)?;

    let chunks = batch.group.div_ceil(batch.head_chunk);
    let grid_y = nkv * chunks;
    check(grid_y <= 65535, || "attention: too many heads".into())?;
    let base_blocks = batch.n_tiles * grid_y;
    let splits = match splits {
        Splits::Fixed(s) => {
            check((1..=1024).contains(&s), || {
                format!("attention: {s} splits, must be in 1..=1024")
            })?;
            s
        }
        Splits::Auto => {
            let fill = (2 * dev.sm_count() as usize).div_ceil(base_blocks.max(1));
            batch.max_len.div_ceil(256).min(fill).clamp(1, 64)
        }
    };
    let (name, hd) = {
        let class = if hd <= 64 {
            "d64"
        } else if hd <= 128 {
            "d128"
        } else {
            "d256"
        };
        let name: &'static str = match (T::DTYPE, class) {
            (DType::F32, "d64") => "attention_f32_d64",
            (DType::F32, "d128") => "attention_f32_d128",
            (DType::F32, _) => "attention_f32_d256",
            (DType::F16, "d64") => "attention_f16_d64",
            (DType::F16, "d128") => "attention_f16_d128",
            (DType::F16, _) => "attention_f16_d256",
            (DType::BF16, "d64") => "attention_bf16_d64",
            (DType::BF16, "d128") => "attention_bf16_d128",
            (DType::BF16, _) => "attention_bf16_d256",
        };
        (name, hd)
    };
    let ld = attention_kv_ld(hd, dev.max_dynamic_smem());
    let smem = attention_smem_bytes(hd, ld);
    check(smem <= dev.max_dynamic_smem(), || {
        format!(
            "attention: head_dim {hd} needs {smem} bytes of shared memory per block, {} allows {}",
            dev.name(),
            dev.max_dynamic_smem()
        )
    })?;
    let partial: Option<CudaSlice<f32>> = if splits > 1 {
        // SAFETY: every element the combine step reads is written by the attention launch.
        Some(unsafe { dev.alloc(splits * n * nh * (hd + 2))? })
    } else {
        None
    };

    let (stride, offset) = (q_layout.stride as i64, q_layout.offset as i64);
    let (n_i, nh_i, nkv_i, hd_i) = (n as i32, nh as i32, nkv as i32, hd as i32);
    let scale = 1.0f32 / (hd as f32).sqrt();
    let (tt_i, hc_i, sp_i) = (
        batch.tile_tokens as i32,
        batch.head_chunk as i32,
        splits as i32,
    );
    let s = dev.stream();
    let (qp, _g1) = q.device_ptr(s);
    let (tp, _g2) = batch.tok.device_ptr(s);
    let (tl, _g3) = batch.tiles.device_ptr(s);
    let (rp, _g4) = kv.dev.device_ptr(s);
    let (op, _g5) = out.device_ptr_mut(s);
    let (pp, _g6) = match &partial {
        Some(p) => {
            let (ptr, g) = p.device_ptr(s);
            (ptr, Some(g))
        }
        None => (0, None),
    };
    let ld_i = ld as i32;
    let mut a = args![
        qp, stride, offset, tp, tl, rp, op, pp, n_i, nh_i, nkv_i, hd_i, scale, tt_i, hc_i, sp_i,
        ld_i
    ];
    // SAFETY: sizes and cache ranges checked above; the table borrows its buffers (see
    // KvTable). The argument list is kept in step with the kernel's C signature by hand.
    unsafe {
        dev.launch(
            name,
            (batch.n_tiles as u32, grid_y as u32, splits as u32),
            (128, 1, 1),
            smem,
            &mut a,
        )?;
    }
    if splits > 1 {
        let mut b = args![pp, op, n_i, nh_i, hd_i, sp_i];
        let block = row_block(hd, BLOCK);
        // SAFETY: partial holds splits x tokens x heads x (hd + 2) values, out tokens x
        // heads x hd.
        unsafe {
            dev.launch(
                "attention_combine",
                ((n * nh) as u32, 1, 1),
                (block, 1, 1),
                0,
                &mut b,
            )?;
        }
    }
    Ok(())
}
