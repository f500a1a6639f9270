"""CAAD grounding space + logits processor on a tiny random Llama and the real MiniLM embedder."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ctxkit.errors import ConfigError, InputError
from ctxkit.faithfulness.decoding import (
    CAADLogitsProcessor,
    GroundingSpace,
    GroundingSpaceMismatchError,
    WindowEncoder,
    score_continuations,
    tokenizer_fingerprint,
    window_texts,
)

EXAMPLES = [
    ("who discovered penicillin", "fleming"),
    ("when was the eiffel tower completed", "in 1889"),
    ("what does the fox do", "jumps"),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


@pytest.fixture(scope="module")
def encoder(minilm):
    return WindowEncoder(minilm)


@pytest.fixture(scope="module")
def space(lm, encoder):
    model, tok = lm
    return GroundingSpace.build(EXAMPLES, model, tok, embedder=encoder, model_name="tiny")


@pytest.fixture(scope="module")
def label_space(lm, encoder):
    model, tok = lm
    # the tiny byte-level tokenizer has ~1 token per character: a longer window keeps keys unique
    return GroundingSpace.build(EXAMPLES, model, tok, embedder=encoder, label_weight=100.0, window=16)


def prompt_ids(tok, question):
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def generate(model, tok, questions, procs=(), n=12, **kw):
    enc = tok([tok.decode(prompt_ids(tok, q)) for q in questions], add_special_tokens=False,
              return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(
            **enc, max_new_tokens=n, do_sample=kw.pop("do_sample", False), pad_token_id=tok.pad_token_id,
            eos_token_id=None, logits_processor=transformers.LogitsProcessorList(list(procs)), **kw,
        )
    return out[:, enc["input_ids"].shape[1]:].tolist()


def answer_ids(tok, answer):
    return tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_build_stores_one_normalised_entry_per_answer_token(space, lm):
    _, tok = lm
    n = sum(len(answer_ids(tok, a)) for _, a in EXAMPLES)
    assert len(space) == n == space.manifest["n_entries"]
    assert space.keys.shape == (n, 384)
    assert torch.allclose(space.keys.norm(dim=1), torch.ones(n), atol=1e-4)
    assert space.logits.dtype == torch.float16 and space.logits.shape == (n, space.vocab_size)
    assert space.token_ids.tolist() == [t for _, a in EXAMPLES for t in answer_ids(tok, a)]
    assert space.manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(tok)
    assert space.manifest["model"] == "tiny" and space.window == 8


def test_keys_are_the_embedding_of_the_exact_window_text(space, lm, encoder):
    model, tok = lm
    q, a = EXAMPLES[1]
    seq = prompt_ids(tok, q) + answer_ids(tok, a)
    t = len(prompt_ids(tok, q)) + 2  # the third answer token
    key = encoder.encode(window_texts(tok, [seq[t - 8 : t]]))[0]
    offset = len(answer_ids(tok, EXAMPLES[0][1])) + 2
    assert torch.allclose(space.keys[offset], key, atol=1e-5)
    with torch.inference_mode():
        logits = model(torch.tensor([seq])).logits[0, t - 1]
    assert torch.allclose(space.logits[offset].float(), logits, atol=1e-2)


def test_window_encoder_matches_the_embedder(encoder, minilm):
    texts = ["the quick brown fox", "<|assistant|>alexander fleming in", ""]
    ours = encoder.encode(texts).cpu().numpy()
    ref = minilm.encode(texts)
    assert ours.shape == ref.shape
    assert abs(ours - ref).max() < 1e-4


def test_large_alpha_reproduces_the_stored_continuation(lm, label_space):
    model, tok = lm
    proc = CAADLogitsProcessor(label_space, tok, alpha=10.0, tau=0.99)
    for q, a in EXAMPLES:
        want = answer_ids(tok, a)
        got = generate(model, tok, [q], [proc], n=len(want))[0]
        assert got == want
        assert proc.stats.steps == len(want) and proc.stats.steps_with_match == len(want)
    plain = generate(model, tok, [EXAMPLES[0][0]], n=len(answer_ids(tok, EXAMPLES[0][1])))[0]
    assert plain != answer_ids(tok, EXAMPLES[0][1])  # the random model alone does not say it


def test_paper_mode_exact_window_reinforces_the_models_own_choice(lm, space):
    # The stored value at an exact window match is the model's own logits there: z + a*z keeps the argmax.
    model, tok = lm
    proc = CAADLogitsProcessor(space, tok, alpha=5.0, tau=0.999)
    got = generate(model, tok, [EXAMPLES[2][0]], [proc], n=4)
    assert got == generate(model, tok, [EXAMPLES[2][0]], n=4)
    st = proc.stats
    assert st.matches_per_row[0][0] >= 1 and st.mean_similarity[0][0] > 0.999


@pytest.mark.parametrize("do_sample", [False, True])
def test_alpha_zero_is_token_identical_to_plain_generation(lm, space, do_sample):
    model, tok = lm
    qs = [q for q, _ in EXAMPLES] + ["the lazy dog"]
    proc = CAADLogitsProcessor(space, tok, alpha=0.0, tau=0.0)
    torch.manual_seed(3)
    plain = generate(model, tok, qs, n=6, do_sample=do_sample)
    torch.manual_seed(3)
    shaped = generate(model, tok, qs, [proc], n=6, do_sample=do_sample)
    assert shaped == plain
    assert proc.stats.steps == 6 and proc.stats.steps_with_match == 6  # tau=0 matched, alpha=0 ignored


def test_batch_equals_per_row_with_left_padding(lm, label_space):
    model, tok = lm
    qs = [EXAMPLES[0][0], "the lazy dog", EXAMPLES[1][0] + " in paris where is the tower"]
    proc = CAADLogitsProcessor(label_space, tok, alpha=3.0, tau=0.6)
    batched = generate(model, tok, qs, [proc], n=6)
    single = [generate(model, tok, [q], [proc], n=6)[0] for q in qs]
    assert batched == single
    lens = {len(prompt_ids(tok, q)) for q in qs}
    assert len(lens) == 3  # really left-padded together


def test_windows_ignore_left_padding(lm, space):
    _, tok = lm
    qs = ["who", EXAMPLES[1][0]]
    enc = tok([tok.decode(prompt_ids(tok, q)) for q in qs], add_special_tokens=False, return_tensors="pt", padding=True)
    proc = CAADLogitsProcessor(space, tok)
    proc._tracker.update(enc["input_ids"])
    wins = proc._tracker.windows(enc["input_ids"], 64)
    assert wins == [prompt_ids(tok, q) for q in qs]
    assert tok.pad_token_id not in wins[0]


def test_repeated_fp32_runs_agree(lm, space):
    model, tok = lm
    proc = CAADLogitsProcessor(space, tok, alpha=0.7, tau=0.3)
    q = EXAMPLES[1][0]
    ids = prompt_ids(tok, q)
    scores = torch.randn(2, space.vocab_size)
    a = proc.shift_windows([ids[-8:], ids[-5:]], scores)
    b = proc.shift_windows([ids[-8:], ids[-5:]], scores)
    assert torch.allclose(a, b, atol=1e-5) and not torch.equal(a, scores)
    assert generate(model, tok, [q], [proc], n=5) == generate(model, tok, [q], [proc], n=5)


def test_rows_without_match_are_untouched_and_wider_scores_are_aligned(lm, space):
    _, tok = lm
    proc = CAADLogitsProcessor(space, tok, alpha=1.0, tau=0.999)
    ids = prompt_ids(tok, EXAMPLES[0][0])
    wide = torch.randn(2, space.vocab_size + 13)  # padded embedding matrix
    out = proc.shift_windows([ids[-8:], tok("zzz qqq", add_special_tokens=False)["input_ids"]], wide)
    assert torch.equal(out[1], wide[1])  # no match: untouched
    assert torch.equal(out[0, space.vocab_size:], wide[0, space.vocab_size:])  # padding columns untouched
    assert not torch.equal(out[0, : space.vocab_size], wide[0, : space.vocab_size])
    with pytest.raises(GroundingSpaceMismatchError, match="columns"):
        proc.shift_windows([ids[-8:]], torch.randn(1, 10))


def test_top_n_caps_the_matches(lm, space):
    _, tok = lm
    ids = prompt_ids(tok, EXAMPLES[0][0])
    proc = CAADLogitsProcessor(space, tok, tau=-1.0, top_n=2)
    proc.shift_windows([ids[-8:]], torch.zeros(1, space.vocab_size))
    assert proc.stats.matches_per_row == [[2]]


def test_sparse_and_dense_storage_agree_on_top_k(lm, space, encoder):
    model, tok = lm
    sparse = GroundingSpace.build(EXAMPLES, model, tok, embedder=encoder, storage="topk", top_k=5)
    assert sparse.topk_indices.shape == (len(space), 5)
    converted = space.to_storage("topk", top_k=5)
    assert torch.equal(converted.topk_indices, sparse.topk_indices)
    # one exact match: the shift's 5 largest tokens and their gaps agree with the dense row
    ids = prompt_ids(tok, EXAMPLES[1][0])
    q = encoder.encode(window_texts(tok, [ids[-8:]]))
    zd, md, _ = space.shift(q, tau=0.999)
    zs, ms, _ = sparse.shift(q, tau=0.999)
    assert md.tolist() == ms.tolist() == [1]
    top_d, top_s = zd[0].topk(5), zs[0].topk(5)
    assert top_d.indices[:3].tolist() == top_s.indices[:3].tolist()  # (5th may tie in fp16)
    assert set(zs[0].nonzero().squeeze(1).tolist()) <= set(top_s.indices.tolist())
    gaps_d = zd[0, top_s.indices] - top_d.values[-1]
    assert torch.allclose(gaps_d, top_s.values, atol=2e-2)


def test_save_load_roundtrip_and_tokenizer_mismatch(lm, space, tmp_path, tiny_llm_dir):
    _, tok = lm
    space.save(tmp_path / "s")
    back = GroundingSpace.load(tmp_path / "s", tokenizer=tok)
    assert torch.equal(back.keys, space.keys) and torch.equal(back.logits, space.logits)
    assert back.manifest == space.manifest
    sparse = space.to_storage("topk", top_k=4)
    sparse.save(tmp_path / "sp")
    sb = GroundingSpace.load(tmp_path / "sp")
    assert torch.equal(sb.topk_indices, sparse.topk_indices) and sb.storage == "topk"

    other = transformers.AutoTokenizer.from_pretrained(tiny_llm_dir)
    other.add_tokens(["zebra-token"])
    with pytest.raises(GroundingSpaceMismatchError, match="Rebuild"):
        GroundingSpace.load(tmp_path / "s", tokenizer=other)
    with pytest.raises(GroundingSpaceMismatchError):
        CAADLogitsProcessor(back, other)
    with pytest.raises(GroundingSpaceMismatchError, match="window"):
        GroundingSpace.load(tmp_path / "s", window=4)
    with pytest.raises(InputError, match="not a CAAD grounding space"):
        GroundingSpace.load(tmp_path / "missing")
    # loaded without a tokenizer: the processor loads the recorded one on first use
    proc = CAADLogitsProcessor.load(tmp_path / "s", alpha=1.0)
    proc.shift_windows([[1, 2, 3]], torch.zeros(1, space.vocab_size))
    assert proc.tokenizer is not None


def test_bad_settings_and_examples_raise_typed_errors(lm, space):
    model, tok = lm
    with pytest.raises(InputError, match="question"):
        GroundingSpace.build([("q", "")], model, tok)
    with pytest.raises(InputError):
        GroundingSpace.build([], model, tok)
    with pytest.raises(ConfigError, match="storage"):
        GroundingSpace.build(EXAMPLES, model, tok, storage="int4")
    with pytest.raises(ConfigError, match="alpha"):
        CAADLogitsProcessor(space, tok, alpha=math.nan)
    with pytest.raises(ConfigError, match="tau"):
        CAADLogitsProcessor(space, tok, tau=2.0)
    with pytest.raises(ConfigError, match="top_n"):
        CAADLogitsProcessor(space, tok, top_n=0)


def test_scoring_applies_the_same_shift_as_generation(lm, label_space):
    model, tok = lm
    q, a = EXAMPLES[0]
    p, c = prompt_ids(tok, q), answer_ids(tok, a)
    plain = score_continuations(model, [p, p], [c, c[:2]])
    zero = score_continuations(model, [p, p], [c, c[:2]],
                               processor=CAADLogitsProcessor(label_space, tok, alpha=0.0))
    assert zero == pytest.approx(plain, abs=1e-4)
    with torch.inference_mode():
        lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
    manual = sum(float(lp[len(p) + i - 1, t]) for i, t in enumerate(c))
    assert plain[0] == pytest.approx(manual, abs=1e-3)
    proc = CAADLogitsProcessor(label_space, tok, alpha=10.0, tau=0.99)
    shaped = score_continuations(model, [p], [c], processor=proc)
    assert shaped[0] > plain[0] + 10 and shaped[0] > -0.1 * len(c)  # answer now near-certain
    # the same shift as a generation step: first continuation token
    s0 = proc.shift_windows([p[-proc.window:]], model(torch.tensor([p])).logits[:, -1].detach())
    assert int(s0.argmax()) == c[0]


def test_synthetic_space_for_speed_tests(space):
    big = GroundingSpace.synthetic(500, vocab_size=space.vocab_size, base=space, top_k=8)
    assert len(big) == 500 and big.storage == "topk"
    assert torch.equal(big.keys[: len(space)], space.keys)
    dense = GroundingSpace.synthetic(50, vocab_size=space.vocab_size, storage="fp16")
    z, m, _ = dense.shift(dense.keys[:3], tau=0.99)
    assert m.tolist() == [1, 1, 1] and z.shape == (3, space.vocab_size)


def test_through_transformers_generator_and_quickstart(tiny_llm_dir, encoder):
    from ctxkit.cli.demos import quickstart_space
    from ctxkit.llm.transformers import TransformersGenerator

    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", batch_size=2)
    space = GroundingSpace.from_generator(gen, EXAMPLES, embedder=encoder, label_weight=100.0, window=16)
    assert space.manifest["model"] == str(tiny_llm_dir)
    proc = CAADLogitsProcessor.for_generator(space, gen, alpha=10.0, tau=0.99)
    qs = [[{"role": "user", "content": q}] for q, _ in EXAMPLES]
    out = gen.generate(qs, max_new_tokens=12, logits_processors=[proc])
    assert [g.text for g in out] == [a for _, a in EXAMPLES]
    assert all(g.finish_reason == "stop" for g in out)  # the stored end-of-answer step too
    plain = gen.generate(qs, max_new_tokens=12)
    assert [g.text for g in plain] != [a for _, a in EXAMPLES]

    qspace, qproc = quickstart_space(gen)
    assert qspace.manifest["n_examples"] == 10 and qproc.tokenizer is gen.tokenizer
    res = gen.generate([[{"role": "user", "content": "What is ctxkit?"}]], max_new_tokens=4, logits_processors=[qproc])
    assert res[0].ok and qproc.stats.steps == 4 and qproc.stats.steps_with_match >= 1


def test_prefetching_is_token_identical_and_overlaps_every_step(lm, label_space):
    model, tok = lm
    qs = [EXAMPLES[0][0], "the lazy dog", EXAMPLES[1][0] + " in paris where is the tower"]
    serial = CAADLogitsProcessor(label_space, tok, alpha=3.0, tau=0.6, prefetch=False)
    want = generate(model, tok, qs, [serial], n=6)
    for use_cache in (True, False):  # decode steps with one new token, and full sequences
        proc = CAADLogitsProcessor(label_space, tok, alpha=3.0, tau=0.6, prefetch=True)
        with proc.prefetching(model):
            got = generate(model, tok, qs, [proc], n=6, use_cache=use_cache)
        assert got == want
        st = proc.stats
        assert (st.prefetch_hits, st.prefetch_misses) == (6, 0)
        assert st.matches_per_row == serial.stats.matches_per_row
    assert serial.stats.prefetch_hits == 0
    # the hook is removed on exit: later generations embed serially
    generate(model, tok, qs[:1], [proc], n=2)
    assert proc.stats.prefetch_hits == 0


def test_prefetched_windows_that_do_not_match_are_recomputed(lm, space):
    model, tok = lm
    a = tok([tok.decode(prompt_ids(tok, EXAMPLES[0][0]))], add_special_tokens=False, return_tensors="pt")
    b = tok([tok.decode(prompt_ids(tok, EXAMPLES[2][0]))], add_special_tokens=False, return_tensors="pt")
    proc = CAADLogitsProcessor(space, tok, alpha=1.0, tau=0.0, prefetch=True)
    ref = CAADLogitsProcessor(space, tok, alpha=1.0, tau=0.0, prefetch=False)
    scores = torch.randn(1, len(tok))
    with torch.inference_mode(), proc.prefetching(model):
        model(**a)  # prefetches the windows of a ...
        out = proc(b["input_ids"], scores)  # ... but the step is about b
    assert (proc.stats.prefetch_hits, proc.stats.prefetch_misses) == (0, 1)
    assert torch.equal(out, ref(b["input_ids"], scores))


def test_prefetch_auto_needs_a_spare_core(lm, space, monkeypatch):
    _, tok = lm
    proc = CAADLogitsProcessor(space, tok)
    monkeypatch.setattr("os.cpu_count", lambda: torch.get_num_threads())
    assert not proc._prefetch_enabled()
    monkeypatch.setattr("os.cpu_count", lambda: torch.get_num_threads() + 1)
    assert proc._prefetch_enabled()
    assert not CAADLogitsProcessor(space, tok, prefetch=False)._prefetch_enabled()


def test_dense_space_is_searched_as_top_k_rows_on_a_gpu(lm, space, encoder):
    """``device_storage="auto"``: a full-logit space keeps top-k rows on an accelerator, never the
    dense table (checked on the ``meta`` device: real placement and shapes, no GPU needed), and
    searching it that way equals searching the top-k copy of the space."""
    import copy

    model, tok = lm
    assert space.storage == "fp16" and space.device_storage == "auto"
    assert space.storage_on(torch.device("cpu")) == "fp16"
    assert space.storage_on(torch.device("cuda:0")) == space.storage_on("mps") == "topk"
    on_meta = copy.copy(space)
    on_meta._device_cache = {}
    t = on_meta.on(torch.device("meta"))
    assert t["storage"] == "topk" and t["logits"] is None
    assert t["idx"].device.type == "meta" and tuple(t["idx"].shape) == (len(space), min(64, space.vocab_size))
    dense_on_gpu = copy.copy(space)
    dense_on_gpu._device_cache, dense_on_gpu.device_storage = {}, "fp16"
    assert dense_on_gpu.storage_on("cuda") == "fp16"

    forced = copy.copy(space)
    forced._device_cache, forced.device_storage, forced.device_top_k = {}, "topk", 5
    reference = space.to_storage("topk", top_k=5)
    ids = prompt_ids(tok, EXAMPLES[1][0])
    q = encoder.encode(window_texts(tok, [ids[-8:], ids[-5:]]))
    for got, want in zip(forced.shift(q, tau=0.5), reference.shift(q, tau=0.5), strict=True):
        assert torch.equal(got, want)
    assert forced.on("cpu")["logits"] is None and forced.storage == "fp16"  # stored rows unchanged
    texts = generate(model, tok, [q for q, _ in EXAMPLES], [CAADLogitsProcessor(forced, tok, alpha=4.0, tau=0.5)])
    assert texts == generate(model, tok, [q for q, _ in EXAMPLES], [CAADLogitsProcessor(reference, tok, alpha=4.0, tau=0.5)])
    with pytest.raises(ConfigError, match="device_storage"):
        bad = copy.copy(space)
        bad.device_storage = "int4"
        bad.storage_on("cuda")
