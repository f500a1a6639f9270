"""CUDA checks (skipped without a GPU; CI has none). Run on a GPU machine with
``python -m pytest -q tests/test_gpu.py``.

They use the DEFAULT dtype path (``dtype="auto"``: bf16, or fp16 where bf16 is unsupported), the
one users get: results are compared with the float32 CPU run within half-precision tolerances, and
the memory-saving paths (continuation-only scoring, top-k grounding rows on the GPU) are checked
where they matter.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = ["who discovered penicillin", "the eiffel tower was completed in", "what is 1 2 3"]
CONTINUATIONS = ["alexander fleming in 1928", "1889 in paris", "4 5 6"]
EXAMPLES = [("who discovered penicillin", "alexander fleming in 1928"),
            ("when was the eiffel tower completed", "it was completed in 1889 in paris")]


def test_auto_device_and_half_precision():
    from ctxkit.models import resolve_device, resolve_dtype

    assert resolve_device("auto") == "cuda"
    assert resolve_dtype("cuda") in (torch.bfloat16, torch.float16)


def test_embedder_on_cuda_matches_cpu():
    from ctxkit.models import Embedder

    texts = ["penicillin was discovered by Alexander Fleming", "the Eiffel Tower is in Paris"] * 8
    gpu = Embedder("default", device="cuda").encode(texts)  # default dtype: half precision
    cpu = Embedder("default", device="cpu").encode(texts)
    cos = (gpu * cpu).sum(1)
    assert cos.min() > 0.995


def test_generator_default_dtype_batch_and_scores_on_cuda(tiny_llm_dir):
    from ctxkit.llm import TransformersGenerator
    from ctxkit.llm.base import as_messages

    gen = TransformersGenerator(str(tiny_llm_dir), device="cuda", batch_size=4)  # dtype="auto"
    assert gen.model.dtype in (torch.bfloat16, torch.float16)
    convs = [as_messages(p) for p in PROMPTS]
    batch = gen.generate(convs, max_new_tokens=8)
    assert all(g.ok and g.n_tokens for g in batch)
    # padded batch vs one at a time, in half precision: same log-likelihoods within tolerance
    batched = gen.score(convs, CONTINUATIONS)
    single = [gen.score([c], [t])[0] for c, t in zip(convs, CONTINUATIONS, strict=True)]
    assert batched == pytest.approx(single, abs=0.05 * max(abs(x) for x in single))
    cpu = TransformersGenerator(str(tiny_llm_dir), device="cpu", dtype="float32").score(convs, CONTINUATIONS)
    assert batched == pytest.approx(cpu, rel=0.05, abs=0.1)


def test_score_peak_memory_is_below_a_full_vocabulary_log_softmax(tiny_llm_dir):
    """Long prompts, short continuations: scoring's peak GPU memory stays below what one forward
    with all logits plus a float32 log-softmax over them (the former way) needs on the same batch."""
    from ctxkit.llm import TransformersGenerator
    from ctxkit.llm.base import as_messages

    gen = TransformersGenerator(str(tiny_llm_dir), device="cuda", batch_size=8)
    convs = [as_messages("the quick brown fox " * 20 + str(i)) for i in range(8)]
    conts = ["jumps"] * 8
    gen.score(convs[:1], conts[:1])  # warm up (weights, kernels)
    rows = [gen._encode(gen.render(c)) + gen.tokenizer("jumps", add_special_tokens=False)["input_ids"] for c in convs]
    width = max(len(r) for r in rows)
    ids = torch.full((8, width), gen.tokenizer.pad_token_id, dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r)
    ids, mask = ids.cuda(), (ids != gen.tokenizer.pad_token_id).long().cuda()

    def peak(fn) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode():
            fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    full = peak(lambda: torch.log_softmax(gen.model(input_ids=ids, attention_mask=mask).logits.float(), -1))
    scored = peak(lambda: gen.score(convs, conts))
    assert scored < full, (scored, full)


def test_caad_on_cuda_default_dtype_keeps_top_k_rows_and_matches_cpu(tiny_llm_dir):
    from ctxkit.faithfulness.decoding import CAADLogitsProcessor, GroundingSpace
    from ctxkit.llm import TransformersGenerator
    from ctxkit.llm.base import as_messages

    cpu_gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", dtype="float32")
    space = GroundingSpace.from_generator(cpu_gen, EXAMPLES)  # dense fp16 rows
    gen = TransformersGenerator(str(tiny_llm_dir), device="cuda")  # dtype="auto"
    proc = CAADLogitsProcessor.for_generator(space, gen, alpha=5.0, tau=0.0)
    res = gen.generate([as_messages(q) for q, _ in EXAMPLES], max_new_tokens=10, logits_processors=[proc])
    assert all(g.ok for g in res) and proc.stats.steps_with_match > 0
    on_gpu = space.on(torch.device("cuda", torch.cuda.current_device()))
    assert on_gpu["storage"] == "topk" and on_gpu["logits"] is None  # no dense table on the GPU
    # the GPU search equals the CPU search of the same top-k rows
    sparse = space.to_storage("topk", top_k=space.device_top_k)
    q = torch.nn.functional.normalize(torch.randn(3, space.keys.shape[1]), dim=-1)
    z_gpu, m_gpu, _ = space.shift(q.cuda(), tau=-1.0)  # every entry (no threshold flips by rounding)
    z_cpu, m_cpu, _ = sparse.shift(q, tau=-1.0)
    assert m_gpu.cpu().tolist() == m_cpu.tolist() == [len(space)] * 3
    assert torch.allclose(z_gpu.cpu(), z_cpu, atol=1e-3)
