"""TransformersGenerator on tiny random Llama / GPT-2 models (real transformers, no mocks)."""

from __future__ import annotations

import math

import pytest

from ctxkit.errors import ConfigError, InputError
from ctxkit.llm import Message, SamplingSettings, build_generator, get_generator
from ctxkit.llm.transformers import TransformersGenerator

PROMPTS = [
    [{"role": "user", "content": "the quick brown fox"}],
    [
        {"role": "system", "content": "answer with a year"},
        {"role": "user", "content": "penicillin was discovered by alexander fleming in 1928 when"},
    ],
    "who",
    [Message(role="user", content="the eiffel tower was completed in 1889 in paris where is the tower")],
]


@pytest.fixture(scope="module")
def llama(tiny_llm_dir):
    return TransformersGenerator(str(tiny_llm_dir), device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return TransformersGenerator(str(tiny_gpt2_dir), device="cpu", batch_size=4)


class ForceToken:
    """A real LogitsProcessor-compatible callable: forces ``token`` and records calls."""

    def __init__(self, token: int) -> None:
        self.token = token
        self.calls: list[tuple[int, int]] = []

    def __call__(self, input_ids, scores):
        self.calls.append(tuple(input_ids.shape))
        scores[:] = -math.inf
        scores[:, self.token] = 0.0
        return scores


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_batched_greedy_equals_one_by_one(which, request):
    gen = request.getfixturevalue(which)
    batched = gen.generate(PROMPTS, max_new_tokens=8)
    single = [gen.generate([p], max_new_tokens=8)[0] for p in PROMPTS]
    assert all(g.ok for g in batched)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.n_tokens for g in batched] == [g.n_tokens for g in single]
    # prompts of different lengths really were padded together
    assert len({g.n_prompt_tokens for g in batched}) > 1


def test_chat_template_is_applied(llama):
    text = llama.render([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert text == "<|system|>be brief</s><|user|>hi</s><|assistant|>"
    g = llama.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=2)[0]
    expected = llama.tokenizer("<|user|>hi</s><|assistant|>", add_special_tokens=False)["input_ids"]
    assert g.n_prompt_tokens == len(expected)


def test_custom_chat_template_and_no_template(tiny_llm_dir):
    custom = TransformersGenerator(
        str(tiny_llm_dir), device="cpu",
        chat_template="{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}A:",
    )
    assert custom.render("hello") == "[user] hello\nA:"
    plain = TransformersGenerator(str(tiny_llm_dir), device="cpu", chat_template=False)
    assert plain.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == "s\n\nu"


def _n_tokens(gen, conv):
    return len(gen.tokenizer(gen.render(conv), add_special_tokens=False)["input_ids"])


def test_truncation_keeps_question_and_instructions_and_cuts_context_from_the_end(tiny_llm_dir):
    passages = " ".join(f"[{i}] the eiffel tower was completed in 1889 in paris" for i in range(1, 9))

    def conv(ctx):
        return [
            {"role": "system", "content": "INSTRUCTIONS: answer from the context only"},
            {"role": "user", "content": f"<context>{ctx}</context>\nQUESTION: when was the tower completed"},
        ]

    probe = TransformersGenerator(str(tiny_llm_dir), device="cpu")
    budget = _n_tokens(probe, conv("")) + 25
    full = _n_tokens(probe, conv(passages))
    assert full > budget + 20
    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", max_input_tokens=budget)
    prompt = gen.prompt(conv(passages))
    n = len(gen.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert budget - 3 <= n <= budget  # token-accurate: uses (almost) the whole budget
    assert "INSTRUCTIONS: answer from the context only" in prompt
    assert prompt.endswith("QUESTION: when was the tower completed</s><|assistant|>")
    assert "<context>[1] the eiffel" in prompt and "</context>" in prompt
    assert "[8]" not in prompt  # the end of the context went first
    kept = prompt.split("<context>")[1].split("</context>")[0]
    assert passages.startswith(kept) and len(kept) < len(passages)
    out = gen.generate([conv(passages)], max_new_tokens=3)[0]
    assert out.ok and out.n_prompt_tokens <= budget
    assert out.info["truncated_context_tokens"] >= full - budget
    # a prompt that fits is left alone
    assert "truncated_context_tokens" not in gen.generate([conv("[1] short")], max_new_tokens=2)[0].info


def test_truncation_drops_later_blocks_before_earlier_ones(tiny_llm_dir):
    a = "the quick brown fox jumps over the lazy dog"
    b = "penicillin was discovered by alexander fleming " * 4

    def conv(x, y):
        return [{"role": "user", "content": f"<context>{x}</context> and <context>{y}</context> q: who"}]

    probe = TransformersGenerator(str(tiny_llm_dir), device="cpu")
    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", max_input_tokens=_n_tokens(probe, conv(a, "")) + 2)
    prompt = gen.prompt(conv(a, b))
    assert f"<context>{a}</context>" in prompt  # the first block is intact
    assert "alexander" not in prompt and prompt.endswith("q: who</s><|assistant|>")


def test_one_bad_item_does_not_abort_the_batch(tiny_llm_dir):
    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", max_input_tokens=30)
    too_long = "what who when where " * 20  # no context to cut
    out = gen.generate(
        ["the quick brown fox", too_long, [{"role": "user", "content": "<context>open but never closed"}],
         [{"role": "robot", "content": "x"}], "yes", []],
        max_new_tokens=4,
    )
    assert [g.ok for g in out] == [True, False, False, False, True, False]
    assert "empty conversation" in out[5].error
    assert out[1].finish_reason == "error" and "prompt too long" in out[1].error
    assert "never closes" in out[2].error
    assert out[3].error and out[3].text == ""
    assert out[0].text == gen.generate(["the quick brown fox"], max_new_tokens=4)[0].text


def test_score_matches_a_manual_forward_pass(llama):
    import torch

    convs = [[{"role": "user", "content": "the quick brown fox"}], [{"role": "user", "content": "who"}]]
    conts = ["jumps over the lazy dog", "fleming"]
    got = llama.score(convs, conts)
    got_mean = llama.score(convs, conts, reduce="mean")
    tok, model = llama.tokenizer, llama.model
    for conv, cont, s, m in zip(convs, conts, got, got_mean, strict=True):
        p = tok(llama.render(conv), add_special_tokens=False)["input_ids"]
        c = tok(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        manual = sum(float(logp[len(p) + k - 1, t]) for k, t in enumerate(c))
        assert s == pytest.approx(manual, abs=1e-4)
        assert m == pytest.approx(manual / len(c), abs=1e-4)
    assert llama.score(convs, ["", "x"])[0] != llama.score(convs, ["", "x"])[0]  # nan for empty
    with pytest.raises(InputError):
        llama.score(convs, ["one"])
    with pytest.raises(InputError):
        llama.score(convs, conts, reduce="max")


def _manual_scores(gen, convs, conts):
    """Sum of continuation log-probs from one unpadded full forward pass per pair."""
    import torch

    tok, model = gen.tokenizer, gen.model
    out = []
    for conv, cont in zip(convs, conts, strict=True):
        p = tok(gen.render(conv), add_special_tokens=False)["input_ids"]
        c = tok(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
        out.append(sum(float(logp[len(p) + k - 1, t]) for k, t in enumerate(c)))
    return out


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_score_computes_logits_only_at_continuation_positions(which, request):
    """The LM head runs on the last (longest continuation + 1) positions, not the whole padded
    batch x length; scores still equal an unpadded full forward pass (left padding + positions)."""
    gen = request.getfixturevalue(which)
    convs = [[{"role": "user", "content": "the eiffel tower was completed in 1889 in paris " * 3}],
             [{"role": "user", "content": "who"}], PROMPTS[1]]
    conts = ["in paris", "fleming discovered penicillin in 1928", "1928"]
    head = gen.model.get_output_embeddings()
    widths: list[int] = []
    hook = head.register_forward_hook(lambda mod, inp, out: widths.append(out.shape[1]))
    try:
        got = gen.score(convs, conts)
    finally:
        hook.remove()
    n_max = max(len(gen.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts)
    assert widths and max(widths) <= n_max + 1
    assert got == pytest.approx(_manual_scores(gen, convs, conts), abs=1e-4)


def test_score_log_softmax_runs_in_blocks(llama, monkeypatch):
    import ctxkit.llm.transformers as tf_mod

    convs, conts = PROMPTS[:2], ["jumps over the lazy dog", "1928 in paris"]
    whole = llama.score(convs, conts)
    monkeypatch.setattr(tf_mod, "_SCORE_BLOCK_ELEMENTS", 1)  # one position per block
    assert llama.score(convs, conts) == pytest.approx(whole, abs=1e-5)


@pytest.fixture(scope="module")
def tiny_trocr_dir(tmp_path_factory):
    """A tiny random TrOCR decoder: a causal LM whose forward takes no ``position_ids``."""
    import torch
    from conftest import build_tiny_tokenizer
    from transformers import TrOCRConfig, TrOCRForCausalLM

    out = tmp_path_factory.mktemp("tiny_trocr")
    tok = build_tiny_tokenizer(out)
    torch.manual_seed(0)
    cfg = TrOCRConfig(vocab_size=len(tok), d_model=32, decoder_layers=2, decoder_attention_heads=2,
                      decoder_ffn_dim=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.bos_token_id)
    TrOCRForCausalLM(cfg).save_pretrained(out)
    return out


def test_score_right_pads_for_a_model_without_position_ids(tiny_trocr_dir):
    gen = TransformersGenerator(str(tiny_trocr_dir), device="cpu", batch_size=4)
    assert "position_ids" not in gen._forward_params()
    convs, conts = [PROMPTS[0], PROMPTS[1], "who"], ["jumps", "1928 in paris", "fleming"]
    assert gen.score(convs, conts) == pytest.approx(_manual_scores(gen, convs, conts), abs=1e-4)


def test_logits_processors_pass_through_default_and_per_call(tiny_llm_dir):
    forced = ForceToken(token=100)
    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", logits_processors=[forced], batch_size=2)
    out = gen.generate(PROMPTS[:3], max_new_tokens=5)
    ids = [gen.tokenizer(g.text, add_special_tokens=False)["input_ids"] for g in out]
    expected = gen.tokenizer.decode([100] * 5, skip_special_tokens=True).strip()
    assert all(g.text == expected for g in out), ids
    assert forced.calls and forced.calls[0][0] in (1, 2)
    other = ForceToken(token=101)
    out2 = gen.generate(PROMPTS[:1], max_new_tokens=3, logits_processors=[other])
    assert other.calls and out2[0].text == gen.tokenizer.decode([101] * 3, skip_special_tokens=True).strip()
    n_before = len(forced.calls)
    gen.generate(PROMPTS[:1], max_new_tokens=3, logits_processors=[])
    assert len(forced.calls) == n_before


def test_eos_ends_generation_with_stop_reason(llama):
    eos = llama.tokenizer.eos_token_id
    g = llama.generate(PROMPTS[:1], max_new_tokens=8, logits_processors=[ForceToken(eos)])[0]
    assert g.ok and g.text == "" and g.finish_reason == "stop" and g.n_tokens == 1
    g2 = llama.generate(PROMPTS[:1], max_new_tokens=4, logits_processors=[ForceToken(100)])[0]
    assert g2.finish_reason == "length" and g2.n_tokens == 4


def test_stop_strings_cut_the_text(llama):
    base = llama.generate(PROMPTS[:1], max_new_tokens=12)[0].text
    assert len(base) > 3
    stop = base[2:4]
    g = llama.generate(PROMPTS[:1], max_new_tokens=12, stop=[stop])[0]
    assert g.finish_reason == "stop"
    assert stop not in g.text and base.startswith(g.text)


def test_sampling_with_a_seed_is_reproducible(llama):
    s = SamplingSettings(max_new_tokens=6, temperature=1.5, top_k=50, seed=7)
    a = llama.generate(PROMPTS, s)
    b = llama.generate(PROMPTS, s)
    greedy = llama.generate(PROMPTS, max_new_tokens=6)
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.text for g in a] != [g.text for g in greedy]


def test_max_batch_tokens_caps_padded_tokens_and_keeps_outputs(tiny_llm_dir, llama):
    capped = TransformersGenerator(str(tiny_llm_dir), device="cpu", batch_size=8, max_batch_tokens=60)
    shapes = []
    inner = capped._generate_chunk

    def recording(rows, cfg, procs):
        shapes.append((len(rows), max(len(r) for r in rows)))
        return inner(rows, cfg, procs)

    capped._generate_chunk = recording
    prompts = PROMPTS * 3
    got = [g.text for g in capped.generate(prompts, max_new_tokens=6)]
    assert sum(n for n, _ in shapes) == len(prompts) and len(shapes) > 1 and max(n for n, _ in shapes) > 1
    assert all(n == 1 or n * width <= 60 for n, width in shapes)
    assert got == [g.text for g in llama.generate(prompts, max_new_tokens=6)]
    convs, conts = PROMPTS[:2] * 2, [" 1928", " paris", " fox", " year"]
    assert capped.score(convs, conts) == pytest.approx(llama.score(convs, conts), abs=1e-4)
    assert capped.to_spec()["max_batch_tokens"] == 60
    with pytest.raises(ConfigError, match="max_batch_tokens"):
        TransformersGenerator(str(tiny_llm_dir), max_batch_tokens=0)


def test_repetition_penalty_reaches_generate(llama):
    plain = [g.text for g in llama.generate(PROMPTS, max_new_tokens=16)]
    penalised = [g.text for g in llama.generate(PROMPTS, max_new_tokens=16, repetition_penalty=2.0)]
    assert penalised != plain  # greedy and deterministic: only the penalty can change the text
    assert [g.text for g in llama.generate(PROMPTS, max_new_tokens=16, repetition_penalty=1.0)] == plain
    with pytest.raises(InputError, match="repetition_penalty"):
        llama.generate(PROMPTS[:1], repetition_penalty=0.5)


def test_settings_validation_errors(tiny_llm_dir, llama):
    with pytest.raises(ConfigError, match="batch_size"):
        TransformersGenerator(str(tiny_llm_dir), batch_size=0)
    with pytest.raises(ConfigError, match="dtype"):
        TransformersGenerator(str(tiny_llm_dir), dtype="float8")
    with pytest.raises(ConfigError, match="max_input_tokens"):
        TransformersGenerator(str(tiny_llm_dir), max_input_tokens=0)
    with pytest.raises(ConfigError, match="context_markers"):
        TransformersGenerator(str(tiny_llm_dir), context_markers=("<c>", "<c>"))
    with pytest.raises(ConfigError, match="sampling"):
        TransformersGenerator(str(tiny_llm_dir), settings={"temperature": -1})
    with pytest.raises(InputError, match="temperature"):
        llama.generate(PROMPTS[:1], temperature=-0.5)
    with pytest.raises(InputError, match="max_new_tokens"):
        llama.generate(PROMPTS[:1], max_new_tokens=0)
    with pytest.raises(InputError):
        llama.generate("not a list")
    assert llama.generate([]) == []


def test_build_generator_from_spec_shares_the_model(tiny_llm_dir):
    spec = {"backend": "transformers", "model": str(tiny_llm_dir), "device": "cpu", "batch_size": 2}
    a, b = build_generator(spec), build_generator(dict(spec))
    assert a is b and a is get_generator(str(tiny_llm_dir), device="cpu", batch_size=2)
    assert build_generator(a.to_spec()) is a
    assert a.to_spec() == {"backend": "transformers", "model": str(tiny_llm_dir), "device": "cpu", "batch_size": 2}
    with pytest.raises(ConfigError, match="backend"):
        build_generator({"backend": "nope"})
    with pytest.raises(ConfigError):
        build_generator({"backend": "transformers", "model": "x", "bogus": 1})


def test_model_and_tokenizer_are_exposed_and_left_padded(llama):
    assert llama.tokenizer.padding_side == "left"
    assert llama.model.config.model_type == "llama"
    assert str(llama.device) == "cpu"


@pytest.mark.slow
def test_default_smollm2_gguf_loads_through_the_cache_and_answers(tmp_path, monkeypatch):
    """The offline SmolLM2 GGUF: converted once into $CTXKIT_CACHE, then loaded from there."""
    import os
    from pathlib import Path

    from ctxkit.llm.transformers import model_cache_dir

    shared = model_cache_dir()  # reuse a conversion made earlier on this machine, if any
    monkeypatch.setenv("CTXKIT_CACHE", str(tmp_path))
    cached = sorted(shared.glob("SmolLM2-135M-Instruct-*")) if shared.is_dir() else []
    if cached and (cached[0] / "config.json").is_file():
        (tmp_path / "models").mkdir()
        os.symlink(cached[0], tmp_path / "models" / cached[0].name)
    gen = TransformersGenerator("default", device="cpu")
    out = gen.generate(
        [[{"role": "user", "content": "What is the capital of France? Answer with one word."}]],
        max_new_tokens=8,
    )[0]
    assert out.ok, out.error
    assert "paris" in out.text.lower()
    assert Path(gen.loaded_from).parent == tmp_path / "models"
    assert (Path(gen.loaded_from) / "config.json").is_file()


def test_gguf_cache_key_follows_size_and_mtime(tmp_path, monkeypatch):
    import os

    from ctxkit.llm.transformers import _gguf_cache_path, model_cache_dir

    monkeypatch.setenv("CTXKIT_CACHE", str(tmp_path / "c"))
    assert model_cache_dir() == tmp_path / "c" / "models"
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 10)
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    a = _gguf_cache_path("org/My Model", f)
    assert a.parent == tmp_path / "c" / "models" and a.name.startswith("org_My_Model-")
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    b = _gguf_cache_path("org/My Model", f)
    f.write_bytes(b"x" * 11)
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    c = _gguf_cache_path("org/My Model", f)
    assert len({a, b, c}) == 3


def test_dtype_setting_is_applied(tiny_llm_dir):
    import torch

    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", dtype="bfloat16")
    assert gen.model.dtype == torch.bfloat16
    out = gen.generate(PROMPTS[:2], max_new_tokens=3)
    assert all(g.ok and g.n_tokens == 3 or g.finish_reason == "stop" for g in out)
    assert not math.isnan(gen.score(PROMPTS[:1], ["fox"])[0])


def test_strip_context_markers_still_truncates_only_context(tiny_llm_dir):
    conv = [{"role": "user", "content": "<context>" + "the lazy dog " * 30 + "</context> q: who"}]
    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", strip_context_markers=True, max_input_tokens=40)
    assert gen.render("<context>x</context> y") == "<|user|>x y</s><|assistant|>"
    prompt = gen.prompt(conv)
    assert "<context>" not in prompt and prompt.endswith("q: who</s><|assistant|>")
    assert "the lazy dog" in prompt and len(gen.tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= 40
    assert gen.to_spec()["strip_context_markers"] is True


@pytest.mark.parametrize("which", ["tiny_llm_dir", "tiny_gpt2_dir"])
def test_row_prefill_keeps_outputs_and_really_prefills_rows(which, request):
    path = str(request.getfixturevalue(which))
    batch = TransformersGenerator(path, device="cpu", batch_size=4, prefill="batch")
    rows = TransformersGenerator(path, device="cpu", batch_size=4, prefill="rows")
    built = []
    inner = rows._rows_cache

    def spy(r, width, dev):
        cache = inner(r, width, dev)
        built.append((len(r), cache is not None))
        return cache

    rows._rows_cache = spy
    want = batch.generate(PROMPTS, max_new_tokens=8)
    got = rows.generate(PROMPTS, max_new_tokens=8)
    assert built and all(ok for _, ok in built) and max(n for n, _ in built) > 1
    assert [g.text for g in got] == [g.text for g in want]
    assert [g.n_tokens for g in got] == [g.n_tokens for g in want]
    single = [batch.generate([p], max_new_tokens=8)[0].text for p in PROMPTS]
    assert [g.text for g in got] == single
    # seeded sampling and logits processors behave as with a padded prefill
    s = SamplingSettings(max_new_tokens=6, temperature=1.5, top_k=50, seed=3)
    assert [g.text for g in rows.generate(PROMPTS, s)] == [g.text for g in batch.generate(PROMPTS, s)]
    force = ForceToken(5)
    forced = rows.generate(PROMPTS[:2], max_new_tokens=3, logits_processors=[force])
    assert len(force.calls) == 3 and force.calls[0][0] == 2
    assert all(g.n_tokens >= 1 for g in forced)
    assert rows.to_spec()["prefill"] == "rows" and batch.to_spec()["prefill"] == "batch"
    assert build_generator(rows.to_spec()).prefill == "rows"
    assert "prefill" not in TransformersGenerator(path).to_spec()
    with pytest.raises(ConfigError, match="prefill"):
        TransformersGenerator(path, prefill="pipelined")


def test_auto_prefill_picks_rows_only_for_long_prompts_on_cpu(tiny_llm_dir):
    from ctxkit.llm.transformers import ROW_PREFILL_MIN_TOKENS

    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu")
    gen.warm_up()
    cpu = gen.model.device
    long_rows = [[1] * ROW_PREFILL_MIN_TOKENS, [1] * 10]
    assert gen._row_prefill(long_rows, cpu)
    assert not gen._row_prefill([[1] * (ROW_PREFILL_MIN_TOKENS - 1), [1] * 10], cpu)
    assert not gen._row_prefill(long_rows[:1], cpu)  # one row: nothing to pad
    assert not gen._row_prefill(long_rows, "cuda")
