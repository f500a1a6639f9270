"""CAD / AdaCAD logits processors on a tiny random Llama (real transformers generate, KV cache)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ctxkit.errors import ConfigError, InputError
from ctxkit.faithfulness.decoding import (
    AdaCADLogitsProcessor,
    CADLogitsProcessor,
    cad_combine,
    js_divergence,
)

QUESTIONS = [
    ("the eiffel tower was completed in 1889 in paris", "when was the tower completed"),
    ("penicillin was discovered by alexander fleming", "who discovered it"),
    ("the quick brown fox jumps over the lazy dog in 1928 yes", "what jumps"),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def render(tok, question, context=None):
    content = f"<context>{context}</context> {question}" if context is not None else f" {question}"
    return tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


def generate(model, tok, texts, procs=(), n=6):
    enc = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=None, logits_processor=transformers.LogitsProcessorList(list(procs)))
    return out[:, enc["input_ids"].shape[1]:].tolist()


def reference_cad(model, tok, with_ctx, without_ctx, alpha, n, adaptive=False):
    """Greedy CAD the slow way: both sequences recomputed in full at every step, no cache."""
    a, b = ids_of(tok, with_ctx), ids_of(tok, without_ctx)
    out = []
    for _ in range(n):
        with torch.inference_mode():
            za = model(torch.tensor([a + out])).logits[:, -1]
            zb = model(torch.tensor([b + out])).logits[:, -1]
        z, _ = cad_combine(za, zb, alpha, adaptive=adaptive)
        out.append(int(z.argmax()))
    return out


def test_alpha_zero_equals_plain_decoding(lm):
    model, tok = lm
    texts = [render(tok, q, c) for c, q in QUESTIONS]
    proc = CADLogitsProcessor(model, tok, alpha=0.0)
    assert generate(model, tok, texts, [proc]) == generate(model, tok, texts)
    assert proc.weights and all(w == 0.0 for step in proc.weights for w in step)


@pytest.mark.parametrize("adaptive", [False, True])
def test_kv_cached_cad_equals_full_recompute(lm, adaptive):
    model, tok = lm
    c, q = QUESTIONS[0]
    proc = (AdaCADLogitsProcessor(model, tok, alpha=1.0) if adaptive
            else CADLogitsProcessor(model, tok, alpha=1.0))
    got = generate(model, tok, [render(tok, q, c)], [proc], n=6)[0]
    want = reference_cad(model, tok, render(tok, q, c), render(tok, q), 1.0, 6, adaptive=adaptive)
    assert got == want
    if adaptive:
        ws = [w for step in proc.weights for w in step]
        assert all(0.0 <= w <= 1.0 for w in ws) and max(ws) > 0.0


def test_cad_changes_decoding_when_context_matters(lm):
    model, tok = lm
    texts = [render(tok, q, c) for c, q in QUESTIONS]
    plain = generate(model, tok, texts)
    shaped = generate(model, tok, texts, [CADLogitsProcessor(model, tok, alpha=4.0)])
    assert shaped != plain


def test_batch_equals_per_row(lm):
    model, tok = lm
    texts = [render(tok, q, c) for c, q in QUESTIONS] + [render(tok, "who")]
    proc = CADLogitsProcessor(model, tok, alpha=1.0)
    batched = generate(model, tok, texts, [proc])
    assert proc.rows_without_context == 1  # the last prompt has no context block
    single = [generate(model, tok, [t], [proc])[0] for t in texts]
    assert batched == single


def test_no_context_block_means_plain_decoding(lm):
    model, tok = lm
    texts = [render(tok, q) for _, q in QUESTIONS]
    assert generate(model, tok, texts, [CADLogitsProcessor(model, tok, alpha=2.0)]) == generate(model, tok, texts)


def test_explicit_unconditional_prompts(lm):
    model, tok = lm
    c, q = QUESTIONS[1]
    proc = CADLogitsProcessor(model, None, alpha=1.0)
    proc.set_unconditional([ids_of(tok, render(tok, q))])
    got = generate(model, tok, [render(tok, q, c)], [proc], n=5)[0]
    assert got == reference_cad(model, tok, render(tok, q, c), render(tok, q), 1.0, 5)
    proc.set_unconditional([[1], [2]])
    with pytest.raises(InputError, match="rows"):
        generate(model, tok, [render(tok, q, c)], [proc], n=2)
    with pytest.raises(ConfigError, match="tokenizer"):
        generate(model, tok, [render(tok, q, c)], [CADLogitsProcessor(model, None)], n=2)
    with pytest.raises(ConfigError, match="alpha"):
        CADLogitsProcessor(model, tok, alpha=-1)


def test_js_divergence_bounds():
    z = torch.randn(3, 50)
    assert torch.allclose(js_divergence(z, z), torch.zeros(3), atol=1e-6)
    far = torch.full((1, 4), -1e4)
    far[0, 0] = 0.0
    other = torch.full((1, 4), -1e4)
    other[0, 3] = 0.0
    assert js_divergence(far, other).item() == pytest.approx(1.0, abs=1e-4)
    out, w = cad_combine(torch.zeros(2, 6), torch.ones(2, 4), 0.5)  # wider scores: extra columns kept
    assert torch.equal(out[:, 4:], torch.zeros(2, 2)) and torch.allclose(out[:, :4], torch.full((2, 4), -0.5))
    assert w.tolist() == [0.5, 0.5]


def test_through_transformers_generator(tiny_llm_dir):
    from ctxkit.llm.transformers import TransformersGenerator

    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", batch_size=2)
    convs = [[{"role": "user", "content": f"<context>{c}</context> {q}"}] for c, q in QUESTIONS]
    plain = gen.generate(convs, max_new_tokens=5)
    zero = gen.generate(convs, max_new_tokens=5, logits_processors=[CADLogitsProcessor.for_generator(gen, alpha=0.0)])
    assert [g.text for g in zero] == [g.text for g in plain]
    proc = AdaCADLogitsProcessor.for_generator(gen, alpha=1.0)
    out = gen.generate(convs, max_new_tokens=5, logits_processors=[proc])
    assert all(g.ok for g in out) and proc.rows_without_context == 0


def _record_chunks(gen):
    """Wrap the generator's per-call method to record the row lengths of each ``generate`` call."""
    calls = []
    inner = gen._generate_chunk

    def recording(rows, cfg, procs, **kw):
        calls.append([len(r) for r in rows])
        return inner(rows, cfg, procs, **kw)

    gen._generate_chunk = recording
    return calls


def test_explicit_unconditional_rows_stay_aligned_when_the_generator_sorts_and_chunks(tiny_llm_dir):
    """Input order short, long, medium: the generator runs long first and splits the batch under
    max_batch_tokens; every row must still be contrasted with ITS context-free prompt."""
    from ctxkit.llm.transformers import TransformersGenerator

    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", batch_size=8, max_batch_tokens=70)
    contexts = ["yes", "the eiffel tower was completed in 1889 in paris " * 2, "penicillin was discovered by fleming"]
    questions = ["what jumps", "when was the tower completed", "who discovered it"]
    convs = [[{"role": "user", "content": f"<context>{c}</context> {q}"}] for c, q in zip(contexts, questions, strict=True)]
    # context-free prompts that are NOT the marker-stripped prompts (e.g. another instruction)
    uncond = [[{"role": "user", "content": f"answer the question: {q}"}] for q in questions]

    def cad(rows, prompts):
        proc = CADLogitsProcessor.for_generator(gen, alpha=3.0)
        proc.set_unconditional(rows, prompts=prompts)
        return proc

    single = [gen.generate([c], max_new_tokens=6, logits_processors=[cad([u], [c])])[0].text
              for c, u in zip(convs, uncond, strict=True)]
    calls = _record_chunks(gen)
    proc = cad(uncond, convs)
    batched = gen.generate(convs, max_new_tokens=6, logits_processors=[proc])
    lengths = [len(gen._encode(gen.render(c))) for c in convs]
    assert len(calls) > 1 and calls[0][0] == max(lengths) != lengths[0]  # sorted and split
    assert [g.text for g in batched] == single
    assert not proc._by_prompt  # every pair was used
    # the test can see a misalignment: rotated context-free prompts change some answer
    rotated = gen.generate(convs, max_new_tokens=6, logits_processors=[cad(uncond[1:] + uncond[:1], convs)])
    assert [g.text for g in rotated] != single


def test_positional_rows_are_refused_for_a_generator_and_unknown_prompts_fail_clearly(tiny_llm_dir):
    from ctxkit.llm.transformers import TransformersGenerator

    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu")
    proc = CADLogitsProcessor.for_generator(gen)
    with pytest.raises(ConfigError, match="prompts="):
        proc.set_unconditional([[{"role": "user", "content": "who"}]])
    proc.set_unconditional(["who"], prompts=["<context>x</context> who"])
    [out] = gen.generate(["<context>y</context> what"], max_new_tokens=2, logits_processors=[proc])
    assert not out.ok and "set_unconditional" in out.error  # recorded on the item, not misaligned
    with pytest.raises(InputError, match="prompts"):
        proc.set_unconditional(["a", "b"], prompts=["a"])


class PreLogitsToKeepLlama(transformers.LlamaForCausalLM):
    """A Llama whose forward predates ``logits_to_keep`` and takes no ``**kwargs`` (as remote-code
    models written for older transformers versions)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, cache_position=None, return_dict=None):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache)


@pytest.mark.parametrize("adaptive", [False, True])
def test_logits_to_keep_only_where_the_forward_takes_it(lm, adaptive):
    model, tok = lm
    old = PreLogitsToKeepLlama(model.config).eval()
    old.load_state_dict(model.state_dict())
    texts = [render(tok, q, c) for c, q in QUESTIONS]
    make = AdaCADLogitsProcessor if adaptive else CADLogitsProcessor
    assert generate(old, tok, texts, [make(old, tok, alpha=1.0)]) == generate(model, tok, texts, [make(model, tok, alpha=1.0)])
