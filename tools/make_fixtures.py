#!/usr/bin/env python3
"""Generate the tiny random-model test fixtures for qwen-scope.

Usage:
    python tools/make_fixtures.py [--out tests/fixtures] [--only NAME ...]

This script is run BY HAND, never in CI. It needs a Python environment with
torch, transformers (5.x), tokenizers, safetensors and numpy. The files it
writes are committed to the repository; the Rust tests only read them.

It is deterministic (fixed seeds, fixed text, no downloads): rerunning it
produces byte-identical files (given the same library versions).

It writes these folders under --out (--only: just the named ones; the single prompt is
then chosen among those models alone, and reference.json records it):

  tiny-qwen2/          Qwen2ForCausalLM, tied embeddings, float32, single model.safetensors
  tiny-qwen2-untied/   Qwen2ForCausalLM, untied lm_head, float16, sharded (model.safetensors.index.json)
  tiny-llama/          LlamaForCausalLM, tied embeddings, bfloat16, single model.safetensors
  tiny-qwen3/          Qwen3ForCausalLM, tied, float32: 4 heads / 2 KV heads of head_dim 32,
                       so q_dim 128 != hidden 64; no attention biases; rope_theta 1e6
  tiny-qwen3-untied-bias/
                       Qwen3ForCausalLM, untied lm_head, float16, attention_bias true (q/k/v
                       AND o_proj biases): 8 heads / 2 KV heads of head_dim 16; the default
                       rope_theta (10000)

Every norm weight (the Qwen3 q_norm/k_norm included) is perturbed away from 1 and every
attention bias away from 0, so a fixture catches a missing or misplaced norm or bias.

Each folder holds config.json, generation_config.json, model weights,
tokenizer.json (a 512-token byte-level BPE trained here on inline text),
tokenizer_config.json, and the parity references reference.safetensors +
reference.json. References are computed on CPU in float32 with eager
attention from the model RELOADED from the saved folder (so float16/bfloat16
fixtures are referenced against the weights exactly as stored).

Reference tensors (all float32 unless noted; T = single prompt length,
B = 3, Tmax = longest batch prompt, H = hidden size, V = vocab size,
L = number of layers):
  single.input_ids [T] int64, single.logits [T,V], single.embed [T,H],
  single.resid_post.{l} [T,H] (raw output of decoder block l),
  single.final_norm [T,H] (after the final RMSNorm)
  batch.input_ids [B,Tmax] int64 (left padded with pad_id 0),
  batch.attention_mask [B,Tmax] int64, batch.logits [B,Tmax,V],
  batch.embed / batch.resid_post.{l} / batch.final_norm [B,Tmax,H]
  (batch positions are clamp(cumsum(mask)-1, 0); pad positions are garbage)
  patch.vector [H], patch.logits [T,V], patch.resid_post.{l} [T,H]
  (single prompt with block `patch_layer`'s output at `patch_pos` REPLACED by
  patch.vector; resid_post.{patch_layer} shows the replaced value)
  patch_add.logits [T,V] (same, but patch.vector ADDED)
  generate.new_tokens [8] int64 (greedy continuation of the single prompt)
  generate_patched.new_tokens [8] int64 (greedy, replace-patch applied during
  the prompt pass only, so it lives on in the KV cache)
"""

import argparse
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

SEED = 1234
VOCAB_SIZE = 512
EOT = "<|endoftext|>"
PAD_ID = 0
PATCH_LAYER = 1
PATCH_POS = 3
PATCH_SRC_POS = 5  # position in the longest batch prompt that v is taken from
NUM_GENERATE = 8
MIN_GAP = 1e-3
BATCH_TOL = 1e-5

# ---------------------------------------------------------------------------
# Tokenizer training text (our own; no downloaded data).
# ---------------------------------------------------------------------------

BASE_LINES = """\
The quick brown fox jumps over the lazy dog.
A small boat drifted slowly across the quiet lake at dawn.
She opened the window and let the cold morning air into the room.
Rain fell on the tin roof all night, and nobody could sleep.
The old library smelled of dust, leather, and forgotten stories.
He counted the coins twice before paying for the bread.
Every Tuesday the market fills the square with fruit, fish, and flowers.
The children built a castle of sand that the tide took back by noon.
Our train was delayed by forty minutes because of snow on the tracks.
Please remember to water the plants while I am away.
The engineer checked the bridge for cracks after the storm.
Birds gathered on the wires, waiting for the wind to change.
My grandmother kept every letter she ever received in a wooden box.
The museum closes at six, so we should hurry.
Light travels faster than sound, which is why we see lightning first.
A good cup of tea needs fresh water and a little patience.
The mountain path was steep, narrow, and covered in loose stones.
They argued about the map until the sun went down.
The recipe calls for two eggs, a cup of flour, and a pinch of salt.
Somewhere in the city a dog barked, and another one answered.
The teacher wrote the question on the board and waited.
I have never seen so many stars as on that night in the desert.
The committee will meet again next Thursday to discuss the budget.
When the power failed, we lit candles and told stories.
The river bends twice before it reaches the sea.
He fixed the bicycle with a spoon, a piece of wire, and some tape.
Winter came early that year, and the harvest was poor.
The lighthouse keeper climbed the stairs one hundred and twelve times a week.
A thin layer of frost covered the windows of the parked cars.
The scientist repeated the experiment to be sure of the result.
Nobody knew who had left the umbrella by the door.
We walked along the beach, collecting shells and smooth glass.
The clock in the hall struck midnight, and the house fell silent.
Her voice was calm, but her hands were shaking.
The factory produces three thousand bottles every hour.
On Sundays the streets are empty and the shops are closed.
The farmer planted corn in the north field and beans in the south.
A strange light appeared above the hills and vanished.
The report must be finished before the end of the month.
He learned to play the violin at the age of forty.
The cat slept in a patch of sunlight on the kitchen floor.
Thunder rolled over the valley like a distant drum.
The soup was too hot, so we waited and talked.
This road leads to the village, and that one leads to the coast.
The pilot announced that we would land in twenty minutes.
Fresh bread, warm butter, and strong coffee make a fine breakfast.
The students asked why the sky is blue and the sunset is red.
A quiet voice can carry further than a loud one.
The garden was full of roses, tulips, and wild mint.
They painted the fence white and the door bright green.
It is easier to start a fire than to put one out.
The ship's captain studied the clouds with a worried face.
We found an old photograph hidden inside the book.
The bakery on the corner opens at five in the morning.
His handwriting was so small that we needed a magnifying glass.
The wind carried the smell of smoke from the far side of the hill.
Learning a new language takes time, practice, and curiosity.
The bus stopped, the doors opened, and nobody got off.
The orchestra tuned their instruments while the audience settled.
She kept a diary for thirty years and never missed a day.
The bridge was built in 1887 and repaired in 1954.
Two plus two is four, and four times four is sixteen.
The meeting starts at 9:30 and should end by 11:00.
Call me at 555-0142 if you need anything.
The price rose from $3.50 to $4.25 in a single year.
About 70% of the surface of the Earth is covered by water.
Chapter 12 begins on page 245.
The temperature dropped to -5 degrees overnight.
"Where are you going?" she asked.
"Home," he said, "before it gets dark."
Wait... did you hear that?
Yes! We won the game!
No, I don't think that's a good idea.
It's not what you said; it's how you said it.
The list had three items: apples, pears, and plums.
Don't forget: the keys are under the mat.
I'd rather walk than take the crowded train.
You're right, and I'm sorry.
They've already left, haven't they?
What time is it? Is it too late to call?
def add(a, b): return a + b
for i in range(10): print(i)
if x > 0 and y < 5: z = x * y
let mut total = 0; for n in items { total += n; }
fn main() { println!("hello, world"); }
The function returns None when the list is empty.
Set the variable to zero before the loop begins.
Open the file, read each line, and close the file.
The server responded with status code 404.
Use the --verbose flag to print more details.
The array has length 16 and stores 32-bit floats.
Matrix multiplication is not commutative.
The model reads the tokens and predicts the next one.
Attention lets each position look at earlier positions.
A neural network is a stack of simple functions.
The hidden state flows through every layer in turn.
Small models are useful for fast and careful tests.
In the beginning there was only darkness and the sound of water.
Once upon a time, a fox lived at the edge of a great forest.
The king asked his three daughters what they loved most.
The dragon slept on a pile of gold for a thousand years.
A young girl found a key that opened every door but one.
The wizard laughed, and the candles flickered.
At the end of the road stood a house with no windows.
The wolf promised to be kind, but nobody believed him.
Far away, beyond the mountains, a bell was ringing.
The boy followed the river until it disappeared underground.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.
January, February, March, April, May, June, July, August.
September, October, November, December.
One, two, three, four, five, six, seven, eight, nine, ten.
Red, orange, yellow, green, blue, indigo, violet.
North, south, east, and west.
Spring, summer, autumn, winter.
Breakfast, lunch, dinner, and a late night snack.
The weather today is sunny with a light breeze.
Tomorrow there is a chance of rain in the afternoon.
Heavy snow is expected in the northern regions.
The forecast says the storm will pass by Friday.
Please send the documents by email before Monday.
Thank you for your help with the project.
We are pleased to announce the opening of our new office.
The package will arrive within three to five business days.
Your order has been shipped and is on its way.
Dear friend, I hope this letter finds you well.
With best wishes for the new year.
See you soon, and take care.
The history of the town goes back more than eight hundred years.
Farmers, merchants, and sailors all passed through its gates.
The cathedral took almost a century to complete.
During the war the bridge was destroyed and rebuilt twice.
Today the old harbour is full of small fishing boats.
Tourists come in summer to walk the narrow streets.
The local cheese is famous for its sharp taste.
A festival is held every August with music and dancing.
The population has grown slowly since the railway arrived.
Many families have lived here for generations.
"""

SUBJECTS = [
    "the teacher", "my brother", "a tired traveler", "the old sailor", "our neighbor",
    "the young doctor", "a curious child", "the baker", "the quiet student", "her uncle",
    "the gardener", "a stranger", "the mayor", "the musician", "the little dog",
]
VERBS = [
    "found", "painted", "carried", "forgot", "repaired", "opened", "described",
    "noticed", "borrowed", "cleaned", "measured", "sold", "watched", "wrote about",
]
OBJECTS = [
    "a broken chair", "the green bottle", "an empty box", "the letter", "a silver ring",
    "the long ladder", "a heavy stone", "the red kite", "an old clock", "the window",
    "a paper boat", "the garden gate", "a warm blanket",
]
PLACES = [
    "near the station", "in the attic", "by the river", "after dinner", "before sunrise",
    "in the kitchen", "at the market", "on the hill", "during the storm", "in the park",
    "behind the school", "at the harbour",
]


def training_lines():
    lines = [l for l in BASE_LINES.splitlines() if l.strip()]
    # Deterministic templated sentences for variety (no randomness involved).
    k = 0
    for i, s in enumerate(SUBJECTS):
        for j in range(10):
            v = VERBS[(i * 3 + j) % len(VERBS)]
            o = OBJECTS[(i * 5 + j * 2) % len(OBJECTS)]
            p = PLACES[(i + j * 7) % len(PLACES)]
            sent = f"{s} {v} {o} {p}."
            lines.append(sent[0].upper() + sent[1:])
            k += 1
    for n in range(0, 60, 3):
        lines.append(f"Item {n}: {n * 7} units at {n * 1.5:.2f} each, total {n * n * 10.5:.1f}.")
    return lines


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = training_lines()
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    assert tok.token_to_id(EOT) == PAD_ID
    return tok, len(lines)


TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "eos_token": EOT,
    "pad_token": EOT,
    "bos_token": None,
    "unk_token": None,
    "add_bos_token": False,
    "add_eos_token": False,
    "clean_up_tokenization_spaces": False,
    "model_max_length": 128,
}

# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------

# Candidate "single" prompts, tried in order; the first one that fits
# (12..20 tokens, no greedy near-ties, no EOS generated, and the patched
# continuation differs from the plain one) for ALL models wins.
SINGLE_CANDIDATES = [
    "The young doctor cleaned the window in the kitchen after dinner.",
    "A stranger noticed the letter behind the school, and smiled.",
    "The musician wrote about a silver ring on the hill.",
    "The baker sold a warm blanket by the river before sunrise.",
    "A curious child found a paper boat by the river.",
    "Our neighbor borrowed the green bottle at the harbour.",
    "The old sailor carried a heavy stone during the storm.",
    "def add(a, b): return a + b",
]

# Token lengths 5, 11, 18 with the fixture tokenizer (asserted distinct).
BATCH_TEXTS = [
    "Hi there.",
    "Thank you, friend.",
    "The bridge was built in 1887.",
]

# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

COMMON = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    initializer_range=0.1,
    hidden_act="silu",
    bos_token_id=None,
    eos_token_id=PAD_ID,
    # pad_token_id deliberately left unset in config.json (as in the real
    # Qwen2 checkpoints): setting it makes nn.Embedding zero that row at init.
)

FIXTURES = [
    # name, model class, config class, extra config, dtype, save kwargs, seed offset
    ("tiny-qwen2", Qwen2ForCausalLM, Qwen2Config,
     dict(rope_theta=1e6, tie_word_embeddings=True), torch.float32, {}, 0),
    ("tiny-qwen2-untied", Qwen2ForCausalLM, Qwen2Config,
     dict(rope_theta=1e6, tie_word_embeddings=False), torch.float16,
     dict(max_shard_size="200KB"), 1),
    ("tiny-llama", LlamaForCausalLM, LlamaConfig,
     dict(rope_theta=10000.0, tie_word_embeddings=True, attention_bias=False, mlp_bias=False),
     torch.bfloat16, {}, 2),
    ("tiny-qwen3", Qwen3ForCausalLM, Qwen3Config,
     dict(rope_theta=1e6, tie_word_embeddings=True, head_dim=32, attention_bias=False),
     torch.float32, {}, 3),
    ("tiny-qwen3-untied-bias", Qwen3ForCausalLM, Qwen3Config,
     dict(tie_word_embeddings=False, num_attention_heads=8, head_dim=16, attention_bias=True),
     torch.float16, {}, 4),
]

NORM_SUFFIXES = ("layernorm.weight", "q_norm.weight", "k_norm.weight")
BIAS_SUFFIXES = ("q_proj.bias", "k_proj.bias", "v_proj.bias", "o_proj.bias")


def build_model(model_cls, config_cls, extra, seed):
    cfg = config_cls(**{**COMMON, **extra})
    torch.manual_seed(SEED + 100 * seed)
    model = model_cls(cfg).float().eval()
    g = torch.Generator().manual_seed(SEED + 100 * seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(NORM_SUFFIXES) or name == "model.norm.weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(BIAS_SUFFIXES):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    L = cfg.num_hidden_layers
    qwen3 = model_cls is Qwen3ForCausalLM
    n_norm = sum(1 for n, _ in model.named_parameters()
                 if n.endswith(NORM_SUFFIXES) or n == "model.norm.weight")
    assert n_norm == (4 if qwen3 else 2) * L + 1, n_norm
    n_bias = sum(1 for n, _ in model.named_parameters() if n.endswith("bias"))
    if model_cls is Qwen2ForCausalLM:
        assert n_bias == 3 * L, n_bias
    elif qwen3 and cfg.attention_bias:
        assert n_bias == 4 * L, n_bias
    else:
        assert n_bias == 0, n_bias
    if qwen3:
        assert model.model.layers[0].self_attn.q_norm.weight.shape == (cfg.head_dim,)
    return model


def save_model(model, dtype, folder, save_kwargs):
    model = model.to(dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=PAD_ID, pad_token_id=PAD_ID, do_sample=False)
    model.save_pretrained(folder, **save_kwargs)
    return model


def reload(folder):
    m = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    assert next(m.parameters()).dtype == torch.float32
    return m


# ---------------------------------------------------------------------------
# Reference computation
# ---------------------------------------------------------------------------


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class Recorder:
    """Forward hooks on every decoder layer: record the raw block output and
    optionally patch it (replace / add) at one position of one layer."""

    def __init__(self, model):
        self.layers = model.model.layers
        self.outs = {}
        self.patch = None  # (layer, pos, vec, mode, only_seq_len)
        self.handles = [l.register_forward_hook(self._hook(i), with_kwargs=True)
                        for i, l in enumerate(self.layers)]

    def _hook(self, idx):
        def hook(module, args, kwargs, output):
            hs_in = args[0] if args else kwargs["hidden_states"]
            out = _first(output)
            if self.patch is not None and self.patch[0] == idx:
                _, pos, vec, mode, only_len = self.patch
                if only_len is None or hs_in.shape[1] == only_len:
                    out = out.clone()
                    if mode == "replace":
                        out[:, pos, :] = vec
                    else:
                        out[:, pos, :] = out[:, pos, :] + vec
                    if isinstance(output, tuple):
                        output = (out,) + tuple(output[1:])
                    else:
                        output = out
            self.outs[idx] = out.detach().clone()
            return output
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def forward_all(model, rec, input_ids, attention_mask=None, position_ids=None):
    rec.outs = {}
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids, output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    L = model.config.num_hidden_layers
    assert len(hs) == L + 1, len(hs)
    resid = [rec.outs[l] for l in range(L)]
    return out.logits.float(), hs, resid


@torch.no_grad()
def manual_greedy(model, rec, ids, n, patch=None):
    """Greedy decoding by full recompute (no KV cache). With a patch at a
    fixed prompt position this equals patching the prompt pass only."""
    rec.patch = patch
    seq = ids.clone()
    new, gaps = [], []
    for _ in range(n):
        logits = model(input_ids=seq[None], use_cache=False).logits[0, -1].float()
        top = torch.topk(logits, 2)
        gaps.append(float(top.values[0] - top.values[1]))
        nxt = int(top.indices[0])
        new.append(nxt)
        seq = torch.cat([seq, torch.tensor([nxt])])
    rec.patch = None
    return torch.tensor(new, dtype=torch.int64), gaps


@torch.no_grad()
def hf_generate(model, rec, ids, n, patch=None):
    rec.patch = patch
    out = model.generate(
        input_ids=ids[None], attention_mask=torch.ones_like(ids)[None],
        max_new_tokens=n, min_new_tokens=0, do_sample=False, num_beams=1,
        eos_token_id=PAD_ID, pad_token_id=PAD_ID,
        return_dict_in_generate=True, output_logits=True,
    )
    rec.patch = None
    new = out.sequences[0, ids.shape[0]:].clone()
    gaps = []
    for lg in out.logits:
        top = torch.topk(lg[0].float(), 2)
        gaps.append(float(top.values[0] - top.values[1]))
    return new, gaps


def encode(tok, text):
    return torch.tensor(tok.encode(text, add_special_tokens=False).ids, dtype=torch.int64)


def patch_vector(model, rec, tok):
    longest = max(BATCH_TEXTS, key=lambda t: len(encode(tok, t)))
    ids = encode(tok, longest)
    assert len(ids) > PATCH_SRC_POS
    _, _, resid = forward_all(model, rec, ids[None])
    return resid[PATCH_LAYER][0, PATCH_SRC_POS].clone()


def generation_refs(model, rec, ids, vec):
    """Greedy generation (plain and patched), cross-checked against a manual
    no-cache loop. Returns tensors, gap lists, or a rejection reason."""
    T = ids.shape[0]
    patch_gen = (PATCH_LAYER, PATCH_POS, vec, "replace", T)
    patch_manual = (PATCH_LAYER, PATCH_POS, vec, "replace", None)
    gen, gaps = hf_generate(model, rec, ids, NUM_GENERATE)
    genp, gapsp = hf_generate(model, rec, ids, NUM_GENERATE, patch=patch_gen)
    man, mgaps = manual_greedy(model, rec, ids, NUM_GENERATE)
    manp, mgapsp = manual_greedy(model, rec, ids, NUM_GENERATE, patch=patch_manual)
    problems = []
    if gen.shape[0] != NUM_GENERATE or genp.shape[0] != NUM_GENERATE:
        problems.append("generation stopped early")
    elif PAD_ID in gen.tolist() or PAD_ID in genp.tolist():
        problems.append("EOS generated")
    elif not torch.equal(gen, man) or not torch.equal(genp, manp):
        problems.append(f"generate != manual greedy ({gen.tolist()} vs {man.tolist()}, "
                        f"{genp.tolist()} vs {manp.tolist()})")
    if torch.equal(gen, genp):
        problems.append("patch does not change the greedy continuation")
    if min(gaps + gapsp + mgaps + mgapsp) < MIN_GAP:
        problems.append(f"near tie (min gap {min(gaps + gapsp + mgaps + mgapsp):.2e})")
    return gen, genp, gaps, gapsp, problems


def batch_inputs(tok):
    seqs = [encode(tok, t) for t in BATCH_TEXTS]
    lens = [len(s) for s in seqs]
    tmax = max(lens)
    ids = torch.full((len(seqs), tmax), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(seqs), tmax), dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, tmax - len(s):] = s
        mask[i, tmax - len(s):] = 1
    pos = torch.clamp(torch.cumsum(mask, dim=1) - 1, min=0)
    return seqs, ids, mask, pos


def compute_references(model, tok, single_text):
    L = model.config.num_hidden_layers
    rec = Recorder(model)
    t = {}
    info = {}
    try:
        # --- single ---
        ids = encode(tok, single_text)
        T = ids.shape[0]
        logits, hs, resid = forward_all(model, rec, ids[None])
        for l in range(L - 1):
            assert torch.equal(hs[l + 1], resid[l]), f"hidden_states[{l + 1}] != resid_post.{l}"
        t["single.input_ids"] = ids
        t["single.logits"] = logits[0]
        t["single.embed"] = hs[0][0]
        for l in range(L):
            t[f"single.resid_post.{l}"] = resid[l][0]
        t["single.final_norm"] = hs[-1][0]
        # The last hidden state must be the final-norm output of the last block.
        fn = model.model.norm(resid[L - 1])
        assert torch.allclose(fn, hs[-1], atol=1e-6), "hidden_states[-1] is not norm(last block)"
        assert not torch.equal(hs[-1], resid[L - 1])

        # --- batch ---
        seqs, bids, mask, pos = batch_inputs(tok)
        blogits, bhs, bresid = forward_all(model, rec, bids, attention_mask=mask, position_ids=pos)
        t["batch.input_ids"] = bids
        t["batch.attention_mask"] = mask
        t["batch.logits"] = blogits
        t["batch.embed"] = bhs[0]
        for l in range(L):
            t[f"batch.resid_post.{l}"] = bresid[l]
        t["batch.final_norm"] = bhs[-1]
        max_row_diff = 0.0
        tmax = bids.shape[1]
        for i, s in enumerate(seqs):
            alone, _, _ = forward_all(model, rec, s[None])
            d = (blogits[i, tmax - len(s):] - alone[0]).abs().max().item()
            max_row_diff = max(max_row_diff, d)
            assert d <= BATCH_TOL, f"batch row {i} differs from solo run by {d}"
        info["batch_row_vs_solo_max_abs_diff"] = max_row_diff

        # --- patch ---
        vec = patch_vector(model, rec, tok)
        assert T > PATCH_POS
        rec.patch = (PATCH_LAYER, PATCH_POS, vec, "replace", None)
        plogits, _, presid = forward_all(model, rec, ids[None])
        rec.patch = None
        assert torch.equal(presid[PATCH_LAYER][0, PATCH_POS], vec)
        for l in range(PATCH_LAYER):
            assert torch.equal(presid[l], resid[l])
        # positions before patch_pos are unaffected
        assert torch.equal(plogits[0, :PATCH_POS], logits[0, :PATCH_POS])
        assert (plogits[0, PATCH_POS:] - logits[0, PATCH_POS:]).abs().max() > 1e-2
        t["patch.vector"] = vec
        t["patch.logits"] = plogits[0]
        for l in range(L):
            t[f"patch.resid_post.{l}"] = presid[l][0]
        rec.patch = (PATCH_LAYER, PATCH_POS, vec, "add", None)
        alogits, _, aresid = forward_all(model, rec, ids[None])
        rec.patch = None
        assert torch.allclose(aresid[PATCH_LAYER][0, PATCH_POS],
                              resid[PATCH_LAYER][0, PATCH_POS] + vec)
        t["patch_add.logits"] = alogits[0]

        # --- generation ---
        gen, genp, gaps, gapsp, problems = generation_refs(model, rec, ids, vec)
        t["generate.new_tokens"] = gen
        t["generate_patched.new_tokens"] = genp
        info["gaps"] = gaps
        info["gaps_patched"] = gapsp
        info["problems"] = problems
    finally:
        rec.remove()
    t = {k: (v.detach().contiguous().clone() if v.dtype == torch.int64
             else v.detach().float().contiguous().clone()) for k, v in t.items()}
    return t, info


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def folder_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=[f[0] for f in FIXTURES],
                    help="write only these fixtures (the others stay as they are)")
    args = ap.parse_args()
    fixtures = [f for f in FIXTURES if args.only is None or f[0] in args.only]

    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    np.random.seed(SEED)

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    tok, n_lines = train_tokenizer()
    print(f"tokenizer: vocab {tok.get_vocab_size()}, trained on {n_lines} lines")

    with tempfile.TemporaryDirectory() as tmp:
        tok_path = os.path.join(tmp, "tokenizer.json")
        tok.save(tok_path)
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump(TOKENIZER_CONFIG, f, indent=2)
            f.write("\n")
        # Reload through transformers to check it agrees with the raw tokenizer.
        hf_tok = AutoTokenizer.from_pretrained(tmp)
        for text in SINGLE_CANDIDATES + BATCH_TEXTS:
            a = hf_tok(text, add_special_tokens=False)["input_ids"]
            b = hf_tok(text)["input_ids"]
            c = tok.encode(text, add_special_tokens=False).ids
            assert a == b == c, (text, a, b, c)
            assert tok.decode(c) == text
        assert hf_tok.eos_token_id == PAD_ID and hf_tok.pad_token_id == PAD_ID
        tok = Tokenizer.from_file(tok_path)  # use exactly what is on disk

        blens = [len(encode(tok, t)) for t in BATCH_TEXTS]
        print(f"batch token lengths: {blens}")
        assert len(set(blens)) == len(blens) and max(blens) > PATCH_SRC_POS

        # Build + save all models (into the temp dir first), reload in f32.
        built = []
        for name, mcls, ccls, extra, dtype, skw, seed in fixtures:
            folder = os.path.join(tmp, name)
            m = build_model(mcls, ccls, extra, seed)
            m = save_model(m, dtype, folder, skw)
            shutil.copy(tok_path, os.path.join(folder, "tokenizer.json"))
            shutil.copy(os.path.join(tmp, "tokenizer_config.json"),
                        os.path.join(folder, "tokenizer_config.json"))
            r = reload(folder)
            # Reloaded f32 weights are exactly the stored (rounded) ones.
            sd_saved = m.state_dict()
            for k, v in r.state_dict().items():
                if k in sd_saved:
                    assert torch.equal(v, sd_saved[k].float()), k
            if extra["tie_word_embeddings"]:
                assert r.lm_head.weight.data_ptr() == r.model.embed_tokens.weight.data_ptr()
            else:
                assert not torch.equal(r.lm_head.weight, r.model.embed_tokens.weight)
            built.append((name, folder, r))

        # Choose the single prompt: first candidate good for all models.
        chosen, results = None, None
        for cand in SINGLE_CANDIDATES:
            T = len(encode(tok, cand))
            if not (12 <= T <= 20):
                print(f"  skip prompt ({T} tokens): {cand!r}")
                continue
            res, bad = {}, []
            for name, folder, r in built:
                tensors, info = compute_references(r, tok, cand)
                res[name] = (tensors, info)
                if info["problems"]:
                    bad.append(f"{name}: {'; '.join(info['problems'])}")
            if bad:
                print(f"  reject prompt {cand!r}: {bad}")
                continue
            chosen, results = cand, res
            break
        assert chosen is not None, "no single prompt candidate works"
        print(f"single prompt ({len(encode(tok, chosen))} tokens): {chosen!r}")

        os.makedirs(args.out, exist_ok=True)
        summary = []
        for name, folder, r in built:
            tensors, info = results[name]
            save_file(tensors, os.path.join(folder, "reference.safetensors"),
                      metadata={"format": "pt"})
            meta = {
                "single": chosen,
                "batch": BATCH_TEXTS,
                "pad_id": PAD_ID,
                "patch_layer": PATCH_LAYER,
                "patch_pos": PATCH_POS,
                "num_generate": NUM_GENERATE,
                "transformers_version": transformers.__version__,
                "torch_version": torch.__version__,
            }
            with open(os.path.join(folder, "reference.json"), "w") as f:
                json.dump(meta, f, indent=2)
                f.write("\n")
            dest = os.path.join(args.out, name)
            if os.path.exists(dest):
                shutil.rmtree(dest)
            shutil.copytree(folder, dest)
            summary.append((name, dest, tensors, info))

    # ---- summary ----
    total = 0
    for name, dest, tensors, info in summary:
        size = folder_size(dest)
        total += size
        with open(os.path.join(dest, "config.json")) as f:
            cfg = json.load(f)
        print(f"\n== {name}: {size / 1024:.1f} KiB")
        for fn in sorted(os.listdir(dest)):
            p = os.path.join(dest, fn)
            h = hashlib.sha256(open(p, "rb").read()).hexdigest()[:12]
            print(f"   {fn:36s} {os.path.getsize(p):8d}  sha256:{h}")
        print(f"   config keys: {sorted(cfg.keys())}")
        print(f"   dtype={cfg.get('dtype')!r} torch_dtype={cfg.get('torch_dtype')!r} "
              f"rope_theta={cfg.get('rope_theta')!r} rope_parameters={cfg.get('rope_parameters')!r} "
              f"tie={cfg.get('tie_word_embeddings')} sliding_window={cfg.get('sliding_window')!r}")
        print(f"   max|single.logits|={tensors['single.logits'].abs().max():.4f} "
              f"max|batch.logits|={tensors['batch.logits'].abs().max():.4f} "
              f"max|patch.logits - single.logits|="
              f"{(tensors['patch.logits'] - tensors['single.logits']).abs().max():.4f}")
        print(f"   std resid_post: " + ", ".join(
            f"{tensors[f'single.resid_post.{l}'].std():.3f}" for l in range(4)))
        print(f"   batch row vs solo max diff: {info['batch_row_vs_solo_max_abs_diff']:.2e}")
        print(f"   generate: {tensors['generate.new_tokens'].tolist()}  "
              f"gaps: {[round(g, 4) for g in info['gaps']]}")
        print(f"   patched : {tensors['generate_patched.new_tokens'].tolist()}  "
              f"gaps: {[round(g, 4) for g in info['gaps_patched']]}")
    print(f"\nreference tensors: " + ", ".join(
        f"{k}{list(v.shape)}:{str(v.dtype).replace('torch.', '')}"
        for k, v in sorted(summary[0][2].items())))
    print(f"\nTOTAL size of fixtures: {total / 1024:.1f} KiB ({total} bytes)")
    assert total < 1.2 * 1024 * 1024 * len(summary), "fixtures too large"


if __name__ == "__main__":
    main()
